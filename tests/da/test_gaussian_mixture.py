"""The diffused Gaussian-mixture score and its exponential-integrator flow against
closed forms: autograd of the log density, the mixture score of Eq. (8) in the
narrow-kernel limit, the Gaussian score for one component, and the flow's
push-forward of the mixture at t = 1 (which must be N(0, I) when alpha_1 = 0)."""

import math

import pytest
import torch

from tfda.da.gaussian_mixture import gaussian_mixture_score, mixture_flow, mixture_log_density
from tfda.da.schedule import Schedule
from tfda.da.score import mixture_score

F64 = torch.float64


def _problem(seed=0, b=3, n=5, m=6, k=4):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, n, k, generator=g, dtype=F64)
    means = 2 * torch.randn(b, m, k, generator=g, dtype=F64)
    var = torch.rand(b, k, generator=g, dtype=F64) + 0.1
    log_w = torch.randn(b, m, generator=g, dtype=F64)
    return z, means, var, log_w


def test_score_is_the_gradient_of_the_log_density():
    z, means, var, log_w = _problem()
    for t in (0.0, 0.3, 0.9):
        zz = z.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(
            mixture_log_density(zz, t, means, var, Schedule(0.05), log_w).sum(), zz)
        score = gaussian_mixture_score(z, t, means, var, Schedule(0.05), log_w)
        torch.testing.assert_close(score, grad, rtol=1e-10, atol=1e-10)


def test_narrow_kernels_give_the_training_free_mixture_score():
    # var -> 0 with equal weights is the empirical mixture of Eq. (8).
    z, means, _, _ = _problem(1, b=1)
    schedule = Schedule(0.05, 0.01)
    for t in (0.01, 0.5):
        ours = gaussian_mixture_score(z, t, means, 1e-14, schedule)
        eq8 = mixture_score(z[0], means[0], t, schedule)
        torch.testing.assert_close(ours[0], eq8, rtol=1e-8, atol=1e-8)


def test_one_component_is_the_gaussian_score():
    z, means, var, _ = _problem(2, m=1)
    schedule = Schedule(0.05)
    t = 0.4
    s_t = schedule.alpha(t) ** 2 * var + schedule.beta2(t)
    expected = -(z - schedule.alpha(t) * means) / s_t.unsqueeze(1)
    torch.testing.assert_close(gaussian_mixture_score(z, t, means, var, schedule), expected)


def test_flow_is_exact_for_one_gaussian_at_any_step_count():
    # N(m, c) pushed to t = 1 with alpha_1 = 0 is (u - m) / sqrt(c): exact for 1 step.
    g = torch.Generator().manual_seed(3)
    u = torch.randn(1, 50, 2, generator=g, dtype=F64)
    m, c = torch.tensor([[[1.0, -2.0]]], dtype=F64), torch.tensor([[0.25, 4.0]], dtype=F64)
    for steps in (1, 3, 40):
        times = [k / steps for k in range(steps + 1)]
        out = mixture_flow(u, times, m, c, Schedule(), second_order=False)
        torch.testing.assert_close(out, (u - m) / c.sqrt(), rtol=1e-12, atol=1e-12)
        back = mixture_flow(out, times[::-1], m, c, Schedule())
        torch.testing.assert_close(back, u, rtol=1e-12, atol=1e-12)


def test_flow_carries_a_bimodal_mixture_to_standard_normal():
    # The probability-flow ODE of p_t maps p_0 onto p_1 = N(0, 1) (alpha_1 = 0); a wrong
    # responsibility or step would leave the two modes visible at t = 1.
    g = torch.Generator().manual_seed(4)
    n = 20000
    means = torch.tensor([[[-2.0], [1.0]]], dtype=F64)
    var = torch.tensor([[0.09]], dtype=F64)
    pick = torch.rand(n, generator=g) < 1 / 3
    x0 = torch.where(pick, -2.0, 1.0).to(F64) + 0.3 * torch.randn(n, generator=g, dtype=F64)
    log_w = torch.log(torch.tensor([[1 / 3, 2 / 3]], dtype=F64))
    times = [(k / 50) ** 2 for k in range(51)]
    z1 = mixture_flow(x0.reshape(1, n, 1), times, means, var, Schedule(), log_w).flatten()
    se = 1 / math.sqrt(n)
    assert abs(float(z1.mean())) < 5 * se
    assert abs(float(z1.var()) - 1) < 5 * math.sqrt(2) * se
    assert abs(float((z1**3).mean())) < 5 * math.sqrt(15) * se  # no skew left
    assert abs(float((z1**4).mean()) - 3) < 5 * math.sqrt(96) * se  # Gaussian kurtosis


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_flow_equals_a_step_by_step_reference_and_broadcasts(dtype):
    # An independent, allocation-heavy transcription of the exponential-integrator Heun
    # step (softmax responsibilities, no column layout, no ones row): the optimised flow
    # must agree to round-off, for shared points (batch 1) against per-problem mixtures.
    g = torch.Generator().manual_seed(5)
    b, n, m, k = 3, 6, 5, 4
    z = torch.randn(1, n, k, generator=g, dtype=F64)
    means = torch.randn(b, m, k, generator=g, dtype=F64)
    var = torch.rand(b, k, generator=g, dtype=F64) + 0.05
    log_w = torch.randn(b, m, generator=g, dtype=F64)
    sched, times = Schedule(0.05), [1.0, 0.6, 0.3, 0.1, 0.0]

    def centre(x, t):
        s = sched.alpha(t) ** 2 * var + sched.beta2(t)
        quad = ((x[:, :, None] - sched.alpha(t) * means[:, None]) ** 2 / s[:, None, None]).sum(-1)
        r = torch.softmax(log_w[:, None] - 0.5 * quad, -1)
        return r @ means

    x = z.expand(b, n, k)
    for t0, t1 in zip(times[:-1], times[1:], strict=True):
        ratio = ((sched.alpha(t1) ** 2 * var + sched.beta2(t1))
                 / (sched.alpha(t0) ** 2 * var + sched.beta2(t0))).sqrt()[:, None]
        gain = sched.alpha(t1) - sched.alpha(t0) * ratio
        pred = ratio * x + gain * centre(x, t0)
        x = ratio * x + gain * 0.5 * (centre(x, t0) + centre(pred, t1))
    ours = mixture_flow(z.to(dtype), times, means.to(dtype), var.to(dtype), sched,
                        log_w.to(dtype))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(ours, x.to(dtype), rtol=tol, atol=tol)
