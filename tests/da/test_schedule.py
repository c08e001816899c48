import math

import pytest
import torch

from tfda.da.schedule import Schedule


@pytest.mark.parametrize("eps_a,eps_b", [(0.0, 0.0), (0.025, 0.0), (0.05, 1e-3)])
def test_coefficients_match_their_definitions(eps_a, eps_b):
    """b = d log(alpha)/dt and sigma^2 = d beta^2/dt - 2 b beta^2 (Eq. 4), by finite differences."""
    s = Schedule(eps_a=eps_a, eps_b=eps_b)
    h = 1e-6
    for t in [0.01, 0.3, 0.7, 0.95]:
        dlog_alpha = (math.log(s.alpha(t + h)) - math.log(s.alpha(t - h))) / (2 * h)
        dbeta2 = (s.beta2(t + h) - s.beta2(t - h)) / (2 * h)
        assert s.drift(t) == pytest.approx(dlog_alpha, rel=1e-7)
        assert s.diffusion2(t) == pytest.approx(dbeta2 - 2 * s.drift(t) * s.beta2(t), rel=1e-7)


def test_paper_schedule_endpoints():
    s = Schedule()
    assert s.alpha(0.0) == 1.0 and s.beta2(0.0) == 0.0
    assert s.alpha(1.0) == 0.0 and s.beta2(1.0) == 1.0
    assert s.drift(1.0) == float("-inf")  # why the EnSF code uses eps_a > 0
    assert math.isfinite(Schedule(eps_a=0.05).drift(1.0))


def test_vectorised_over_tensors_matches_floats():
    s = Schedule(eps_a=0.05, eps_b=0.01)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    for name in ("alpha", "beta2", "drift", "diffusion2"):
        vec = getattr(s, name)(t)
        assert isinstance(vec, torch.Tensor) and vec.shape == t.shape
        ref = torch.tensor([getattr(s, name)(float(v)) for v in t], dtype=torch.float64)
        torch.testing.assert_close(vec, ref, rtol=1e-14, atol=0)


def test_forward_marginal_variance_follows_beta2():
    """Z_t = alpha_t X + beta_t xi: simulate the forward SDE (Eq. 3) from X = 0 and
    compare the variance with beta_t^2 (Monte Carlo, 20000 paths: 3% tolerance
    is > 4 standard errors of a variance estimate, sqrt(2/20000) = 1%)."""
    s = Schedule(eps_a=0.05)
    g = torch.Generator().manual_seed(0)
    z = torch.zeros(20000, dtype=torch.float64)
    ts = torch.linspace(0.0, 0.9, 901, dtype=torch.float64)
    for t0, t1 in zip(ts[:-1].tolist(), ts[1:].tolist(), strict=True):
        dt = t1 - t0
        xi = torch.randn(z.shape, generator=g, dtype=torch.float64)
        z = z + s.drift(t0) * z * dt + math.sqrt(s.diffusion2(t0) * dt) * xi
    assert z.var().item() == pytest.approx(s.beta2(0.9), rel=0.03)


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan")])
def test_bad_offsets_rejected(bad):
    with pytest.raises(ValueError, match="eps_a"):
        Schedule(eps_a=bad)
