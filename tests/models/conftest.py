import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The model tests use tiny grids: one thread avoids OpenMP spin-waiting, which made
    them many times slower on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
