"""The device policy of da.devices, pinned on a CPU-only machine.

A second accelerator does not exist here, so the tests use the 'meta' device as
the "other" device: a CPU generator driving a meta target is the mirror image
of the CUDA generator driving a CPU target that crashed the GPU cycle (issue 12).
"""

from types import SimpleNamespace

import pytest
import torch

from tfda.da import devices
from tfda.da.cycle import _restore_generator
from tfda.da.score import mixture_score
from tfda.observations.errors import DiagonalError
from tfda.observations.synthetic import CorrelatedGridError

META = torch.device("meta")


def test_a_draw_is_made_on_the_generator_and_moved_to_the_target():
    g = torch.Generator().manual_seed(11)
    out = devices.randn((3, 4), generator=g, dtype=torch.float64, device="meta")
    assert out.device == META and out.shape == (3, 4) and out.dtype == torch.float64
    # the generator advanced exactly as for the same draw on the CPU
    ref = torch.Generator().manual_seed(11)
    torch.randn((3, 4), generator=ref, dtype=torch.float64)
    assert torch.equal(g.get_state(), ref.get_state())


def test_without_target_the_draw_stays_on_the_generator_and_repeats_torch():
    a = devices.randn((5,), generator=torch.Generator().manual_seed(3))
    b = torch.randn(5, generator=torch.Generator().manual_seed(3))
    assert a.device.type == "cpu" and torch.equal(a, b)
    p = devices.randperm(9, generator=torch.Generator().manual_seed(3), device="meta")
    assert p.device == META and p.shape == (9,)
    u = devices.rand((2, 2), generator=torch.Generator().manual_seed(3), device="meta")
    assert u.device == META


def test_without_generator_the_draw_is_made_on_the_target():
    assert devices.randn((2, 3), device="meta").device == META
    assert devices.randn_like(torch.empty(4, device="meta")).device == META


def test_placement_rule_for_a_generator_on_another_device():
    """The CUDA case, through the rule itself: draw on the generator's device,
    return on the target (default: the generator's device)."""
    fake = SimpleNamespace(device=torch.device("cuda", 0))
    assert devices._where(fake, "cpu") == (torch.device("cuda", 0), torch.device("cpu"))
    assert devices._where(fake, None) == (torch.device("cuda", 0),) * 2
    assert devices._where(None, "meta") == (META, META)
    assert devices._where(None, None) == (None, None)


def test_diagonal_error_samples_on_the_generator_and_returns_on_the_target():
    std = torch.tensor([[1.0, 2.0, 3.0]])
    err = DiagonalError(std)
    g = torch.Generator().manual_seed(5)
    on_meta = err.sample((4, 1, 3), generator=g, device="meta")
    assert on_meta.device == META and on_meta.shape == (4, 1, 3)
    here = err.sample((4, 1, 3), generator=torch.Generator().manual_seed(5))
    expected = torch.randn(4, 1, 3, generator=torch.Generator().manual_seed(5)) * std
    torch.testing.assert_close(here, expected, rtol=0, atol=0)


def test_correlated_error_samples_where_asked():
    lat = torch.linspace(10.0, 20.0, 4)
    lon = torch.linspace(280.0, 290.0, 5)
    err = CorrelatedGridError([1.0, 2.0], 500.0, lat, lon)
    g = torch.Generator().manual_seed(1)
    out = err.sample((3, 2, 4, 5), generator=g, dtype=torch.float64, device="meta")
    assert out.device == META and out.shape == (3, 2, 4, 5)


def test_minibatch_permutation_follows_the_generator():
    x0 = torch.randn(12, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = mixture_score(z, x0, 0.5, minibatch=5, generator=torch.Generator().manual_seed(2))
    idx = torch.randperm(12, generator=torch.Generator().manual_seed(2))[:5]
    torch.testing.assert_close(out, mixture_score(z, x0[idx], 0.5))


def test_a_checkpoint_from_another_device_type_is_refused_by_name():
    g = torch.Generator().manual_seed(0)
    state = {"generator": g.get_state(), "generator_device": "cuda"}
    with pytest.raises(ValueError, match="saved by a cuda run"):
        _restore_generator(g, state)
    other = torch.Generator().manual_seed(1)
    _restore_generator(other, {"generator": g.get_state()})  # older checkpoints: no key
    assert torch.equal(other.get_state(), g.get_state())


# ----------------------------------------------------------------------------- CUDA only
# Skipped on CPU-only machines; a session with a GPU runs them with
#     python -m pytest tests/da/test_devices.py

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("kind", ["ensf", "letkf"])
def test_a_twin_cycle_runs_on_cuda_and_resumes(tmp_path, kind):
    """The issue-12 crash: the cycle's CUDA generator met a CPU draw in DiagonalError."""
    from tfda.da.cycle import run_cycle
    from tfda.da.filters import LETKF, EnSF, periodic_distance
    from tfda.experiments.checkpoint import FileCheckpointer
    from tfda.models.lorenz96 import Lorenz96
    from tfda.observations.operators import Arctan

    model = Lorenz96(nx=40, dt=0.05, device="cuda")
    g = torch.Generator().manual_seed(0)
    truth = model.spin_up(100, generator=g, dtype=torch.float32)[0]
    ens = truth + devices.randn((10, 40), generator=g, device="cuda")
    op = Arctan(0.05, indices=list(range(40)))
    filt = (EnSF(steps=10, score="mixture", minibatch=8) if kind == "ensf"
            else LETKF(radius=4.0, distance=periodic_distance(40), inflation=1.05))
    full = run_cycle(model, filt, op, ens, n_cycles=4, truth=truth, seed=1, progress=False)
    assert full["ensemble"].shape == (10, 40)
    ckpt = FileCheckpointer(tmp_path / "state.pt")
    run_cycle(model, filt, op, ens, n_cycles=2, truth=truth, seed=1, progress=False,
              checkpointer=ckpt)
    resumed = run_cycle(model, filt, op, ens, n_cycles=4, truth=truth, seed=1,
                        progress=False, checkpointer=ckpt)
    torch.testing.assert_close(torch.tensor(resumed["ensemble"].values),
                               torch.tensor(full["ensemble"].values), rtol=0, atol=0)


@cuda
def test_cpu_generator_drives_cuda_draws_and_matches_the_cpu_numbers():
    out = devices.randn((3, 5), generator=torch.Generator().manual_seed(2), device="cuda")
    ref = torch.randn(3, 5, generator=torch.Generator().manual_seed(2))
    assert out.device.type == "cuda" and torch.equal(out.cpu(), ref)
    err = DiagonalError(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    gen = torch.Generator(device="cuda").manual_seed(0)
    assert err.sample((2, 5), generator=gen).device.type == "cuda"
    assert err.sample((2, 5), generator=gen, device="cpu").device.type == "cpu"


@cuda
def test_the_score_on_cuda_agrees_with_the_cpu():
    from tfda.da.score import prepare_prior

    g = torch.Generator().manual_seed(3)
    x0 = 10 + torch.randn(20, 50_000, generator=g, dtype=torch.float64)
    z = torch.randn(20, 50_000, generator=g, dtype=torch.float64)
    ref = mixture_score(z, x0, 0.3)
    prior = prepare_prior(x0.cuda(), keep_centred=True)
    torch.testing.assert_close(mixture_score(z.cuda(), prior, 0.3).cpu(), ref,
                               rtol=1e-10, atol=1e-10)
