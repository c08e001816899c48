"""Batched small products and row maxima: equal to torch's, on every path."""

import pytest
import torch

from tfda.da.batched import column_max, matmul


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matmul_equals_torch_with_broadcasting_and_views(dtype):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(7, 5, 4, generator=g, dtype=dtype)
    b = torch.randn(7, 6, 4, generator=g, dtype=dtype).transpose(1, 2)  # a strided view
    shared = torch.randn(1, 3, 5, generator=g, dtype=dtype)  # broadcast over the batch
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {}
    torch.testing.assert_close(matmul(a, b), a @ b, **tol)
    torch.testing.assert_close(matmul(shared, a), shared @ a, **tol)
    torch.testing.assert_close(matmul(a[0].T, a), a[0].T @ a, **tol)
    assert matmul(a, b).dtype == dtype


def test_matmul_keeps_autograd_and_other_dtypes_on_torch():
    a = torch.randn(3, 2, 2, requires_grad=True)
    out = matmul(a, torch.ones(3, 2, 2))
    out.sum().backward()
    torch.testing.assert_close(a.grad, torch.full((3, 2, 2), 2.0))
    ints = torch.arange(8).reshape(2, 2, 2)
    assert torch.equal(matmul(ints, ints), ints @ ints)


@pytest.mark.parametrize("height", [1, 2, 5, 20, 21])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_column_max_is_amax(height, dtype):
    x = torch.randn(4, height, 3, generator=torch.Generator().manual_seed(height), dtype=dtype)
    x[0, -1, 1] = 50.0  # the maximum in the last row, which odd halvings overlap
    assert torch.equal(column_max(x), x.amax(-2, keepdim=True))


@pytest.mark.parametrize("height", [1, 5, 20, 21])
def test_column_max_into_scratch_of_a_view(height):
    x = torch.randn(3, height, 4, generator=torch.Generator().manual_seed(1))
    scratch = torch.full((3, (height + 1) // 2, 6), float("nan"))
    view = x[..., :1]  # a strided column, as at t = 1 in the flow
    assert torch.equal(column_max(view, scratch=scratch[..., :1]), view.amax(-2, keepdim=True))


def test_matmul_writes_into_out():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(5, 3, 4, generator=g), torch.randn(5, 4, 2, generator=g)
    out = torch.empty(5, 3, 3)
    got = matmul(a, b, out=out[..., 1:])  # a strided destination
    torch.testing.assert_close(got, a @ b)
    torch.testing.assert_close(out[..., 1:], a @ b)
