"""The explicit EnSF samplers stay finite at any step count (da.stability)."""

import pytest
import torch

from tfda.da.filters import EnSF
from tfda.da.schedule import Schedule
from tfda.da.stability import curvature_bound, stable_time_grid
from tfda.observations.operators import Arctan, Identity

F64 = torch.float64


def _likelihood_gradient(operator, y):
    def grad(z):
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            r = y - operator(zz)
            (g,) = torch.autograd.grad(-0.5 * (r * operator.error.precision_matvec(r)).sum(), zz)
        return g
    return grad


def test_curvature_is_the_largest_eigenvalue_of_jt_rinv_j():
    z = torch.tensor([[0.0, 2.0], [1.0, 3.0]], dtype=F64)
    std = torch.tensor([0.05, 0.5], dtype=F64)
    lam = curvature_bound(_likelihood_gradient(Identity(std), torch.zeros(2, dtype=F64)), z)
    assert abs(lam - 400.0) < 1e-4
    # arctan: J = diag(1 / (1 + z^2)); y = H(z) so the residual term vanishes
    op = Arctan(0.1)
    lam = curvature_bound(_likelihood_gradient(op, op(z)), z)
    assert abs(lam - 100.0) < 1e-3  # member 0, component 0: (1 / 1)^2 / 0.01


def test_grid_keeps_stable_uniform_steps_and_shortens_the_rest():
    schedule = Schedule(0.5, 0.025)
    kw = {"schedule": schedule, "damping": lambda t: 1 - t, "prior_stiffness": True}
    easy = stable_time_grid(50, 1e-3, curvature=1.0, ode=False, **kw)
    torch.testing.assert_close(easy, torch.linspace(1.0, 1e-3, 51, dtype=F64))
    stiff = stable_time_grid(50, 1e-3, curvature=400.0, ode=False, **kw)
    assert stiff[0] == 1.0 and stiff[-1] == 1e-3 and bool((stiff.diff() < 0).all())
    dt = -stiff.diff()
    t = stiff[:-1]
    rate = torch.tensor([(400 * (1 - float(s)) + 1 / schedule.beta2(float(s)))
                         * schedule.diffusion2(float(s)) for s in t], dtype=F64)
    assert bool((rate * dt <= 1.0 + 1e-9).all()) and len(stiff) > 51


@pytest.mark.parametrize("score", ["paired", "mixture"])
@pytest.mark.parametrize("sampler", ["sde", "ode"])
def test_obs_std_005_is_finite_at_every_step_count(score, sampler):
    # 1-D prior N(0, 1), y = 0.5 observed with std 0.05: the Kalman mean is 0.4988.
    g = torch.Generator().manual_seed(0)
    prior = torch.randn(64, 1, generator=g, dtype=F64)
    prior = (prior - prior.mean()) / prior.std()
    y = torch.tensor([0.5], dtype=F64)
    for steps in (1, 10, 100):
        post = EnSF(score=score, sampler=sampler, eps_a=0.5, eps_b=0.025, steps=steps,
                    seed=1).analysis(prior, y, Identity(0.05))
        assert bool(torch.isfinite(post).all())
        assert abs(float(post.mean()) - 0.5) < 0.1, (steps, float(post.mean()))


def test_the_uniform_grid_is_what_diverges():
    g = torch.Generator().manual_seed(0)
    prior = torch.randn(200, 1, generator=g, dtype=F64)
    filt = EnSF(score="paired", sampler="sde", eps_a=0.5, eps_b=0.025, steps=100, seed=1,
                stable_grid=False)
    try:
        post = filt.analysis(prior, torch.tensor([0.5], dtype=F64), Identity(0.05))
        assert float(post.abs().max()) > 1e6
    except FloatingPointError:
        pass
