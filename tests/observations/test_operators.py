"""Observation operators: shapes, masks, error models and autograd gradients."""

import pytest
import torch

from tfda.observations.errors import DiagonalError, log_likelihood
from tfda.observations.operators import (
    Arctan,
    FromCallable,
    Identity,
    ObservationOperator,
    Subset,
)


def test_identity_and_protocol():
    op = Identity(0.5)
    x = torch.randn(3, 2, 4)
    assert torch.equal(op(x), x)
    assert isinstance(op, ObservationOperator)
    assert float(op.error.std) == 0.5


def test_subset_indices_and_mask_agree():
    x = torch.arange(24.0).reshape(2, 3, 4)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[0, 1] = mask[2, 3] = True
    by_mask = Subset(1.0, mask=mask)(x)
    by_idx = Subset(1.0, indices=[1, 11])(x)
    assert torch.equal(by_mask, by_idx)
    assert torch.equal(by_idx[1], torch.tensor([13.0, 23.0]))
    assert torch.equal(Subset(1.0, indices=[1, 11]).locations, torch.tensor([1.0, 11.0],
                                                                             dtype=torch.float64))
    with pytest.raises(ValueError, match="mask shape"):
        Subset(1.0, mask=mask)(torch.zeros(2, 12))
    with pytest.raises(ValueError, match="out of range"):
        Subset(1.0, indices=[30])(x)
    with pytest.raises(ValueError, match="exactly one"):
        Subset(1.0)


def test_negative_or_zero_std_rejected():
    with pytest.raises(ValueError, match="error"):
        Identity(-1.0)
    with pytest.raises(ValueError, match="error"):
        Arctan(torch.tensor([0.1, 0.0]))


def test_arctan_gradient_matches_finite_differences():
    op = Arctan(torch.tensor([0.05, 0.1, 0.2], dtype=torch.float64))
    y = torch.tensor([0.3, -1.0, 1.2], dtype=torch.float64)
    x = torch.tensor([[0.5, -2.0, 3.0], [-0.1, 0.7, 8.0]], dtype=torch.float64,
                     requires_grad=True)

    def loglik(z):
        return log_likelihood(op.error, y - op(z))

    assert torch.autograd.gradcheck(lambda z: op(z), (x,))
    assert torch.autograd.gradcheck(loglik, (x,))
    # And the analytic J^T R^-1 (y - H(x)) = (y - atan x) / (std^2 (1 + x^2)).
    (grad,) = torch.autograd.grad(loglik(x).sum(), x)
    xd = x.detach()
    expected = (y - torch.arctan(xd)) / (op.error.std**2 * (1 + xd**2))
    torch.testing.assert_close(grad, expected)
    # Central finite differences on one component, independent of autograd.
    h = 1e-6
    e = torch.zeros_like(xd)
    e[1, 2] = h
    fd = (loglik(xd + e) - loglik(xd - e))[1] / (2 * h)
    assert abs(float(fd) - float(expected[1, 2])) < 1e-6 * max(1.0, abs(float(fd)))


def test_arctan_on_indices_and_from_callable():
    x = torch.randn(4, 6, dtype=torch.float64)
    op = Arctan(0.1, indices=[0, 5])
    torch.testing.assert_close(op(x), torch.arctan(x[:, [0, 5]]))
    sq = FromCallable(lambda z: z[:, :2] ** 2, DiagonalError(1.0), locations=[0, 1])
    torch.testing.assert_close(sq(x), x[:, :2] ** 2)
    with pytest.raises(ValueError, match="member dimension"):
        FromCallable(lambda z: z.sum(), 1.0)(x)
    with pytest.raises(TypeError):
        Identity("big")


def test_absolute_on_every_second_component_with_locations_and_gradient():
    from tfda.experiments.factories import make_operator
    from tfda.observations.operators import Absolute

    op = make_operator("abs", 0.5, state_size=6, stride=2)
    assert isinstance(op, Absolute)
    x = torch.tensor([[-1.5, 2.0, 0.3, -4.0, -0.2, 1.0]], dtype=torch.float64, requires_grad=True)
    out = op(x)
    assert torch.equal(out.detach(), torch.tensor([[1.5, 0.3, 0.2]], dtype=torch.float64))
    assert op.locations.tolist() == [0.0, 2.0, 4.0]  # for localisation
    out.sum().backward()  # d|x|/dx = sign(x) on the observed components, 0 elsewhere
    assert x.grad.tolist() == [[-1.0, 0.0, 1.0, 0.0, -1.0, 0.0]]
    assert float(op.error.std) == 0.5
    full = make_operator("abs", 1.0, locations=[0.0, 1.0])
    assert torch.equal(full(torch.tensor([[-1.0, 2.0]])), torch.tensor([[1.0, 2.0]]))
