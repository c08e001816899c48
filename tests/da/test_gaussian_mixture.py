"""The diffused Gaussian-mixture score and its exponential-integrator flow against
closed forms: autograd of the log density, the mixture score of Eq. (8) in the
narrow-kernel limit, the Gaussian score for one component, and the flow's
push-forward of the mixture at t = 1 (which must be N(0, I) when alpha_1 = 0)."""

import math
import shutil

import pytest
import torch

from tfda.da.gaussian_mixture import (
    compiled_flow_available,
    flow_backend,
    gaussian_mixture_score,
    mixture_flow,
    mixture_log_density,
)
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


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_flow_equals_a_step_by_step_reference_and_broadcasts(dtype, backend):
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
    with flow_backend(backend):  # "auto": the compiled flow where it was built
        ours = mixture_flow(z.to(dtype), times, means.to(dtype), var.to(dtype), sched,
                            log_w.to(dtype))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(ours, x.to(dtype), rtol=tol, atol=tol)


needs_compiled = pytest.mark.skipif(not compiled_flow_available(),
                                    reason="the compiled flow (da/_flow.c) was not built")


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="no C compiler: tfda installs without its compiled flow")
def test_the_compiled_flow_is_built_where_a_compiler_is():
    # the extension is optional in setup.py, so a broken build would only show as a slow
    # flow: with a compiler present it must be there
    assert compiled_flow_available()


def _flow_problem(seed, b, n, m, k, dtype):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, n, k, generator=g, dtype=F64).to(dtype)
    means = torch.randn(b, m, k, generator=g, dtype=F64).to(dtype)
    var = (torch.rand(b, k, generator=g, dtype=F64) + 0.02).to(dtype)
    log_w = (3.0 * torch.randn(b, m, generator=g, dtype=F64)).to(dtype)
    return z, means, var, log_w


@needs_compiled
@pytest.mark.parametrize("second_order", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("shape", [(4, 20, 20, 19), (3, 13, 5, 4), (2, 1, 9, 1), (5, 33, 3, 7)])
def test_compiled_flow_equals_the_torch_flow(shape, dtype, second_order):
    # point counts that are not whole vectors (13, 1, 33), one coordinate, more points
    # than components, and both directions of time through t = 1 (alpha = 0 exactly)
    b, n, m, k = shape
    z, means, var, log_w = _flow_problem(7, b, n, m, k, dtype)
    sched, tol = Schedule(), (2e-4 if dtype == torch.float32 else 1e-11)
    for times in ([(j / 8) ** 2 for j in range(9)][::-1], [0.0, 0.3, 0.7, 1.0]):
        with flow_backend("torch"):
            ref = mixture_flow(z, times, means, var, sched, log_w, second_order=second_order)
        with flow_backend("compiled"):
            ours = mixture_flow(z, times, means, var, sched, log_w, second_order=second_order)
        torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)


@needs_compiled
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_compiled_flow_broadcasts_like_the_torch_flow(dtype):
    # shared points against per-domain mixtures (the analysis), and one shared mixture
    # with a scalar variance and equal weights (the prior's encoding flow)
    z, means, var, log_w = _flow_problem(8, 6, 20, 20, 19, dtype)
    sched, times = Schedule(0.05), [1.0, 0.5, 0.2, 0.05, 0.0]
    tol = 2e-4 if dtype == torch.float32 else 1e-11
    cases = [(z[:1], means, var, log_w), (z, means[:1], 0.3, None),
             (z[:1], means[:1], var[:1], None)]
    for args in cases:
        with flow_backend("torch"):
            ref = mixture_flow(args[0], times, args[1], args[2], sched, args[3])
        with flow_backend("compiled"):
            ours = mixture_flow(args[0], times, args[1], args[2], sched, args[3])
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)


@needs_compiled
def test_compiled_flow_on_several_threads_equals_one_thread():
    # the batch is split over torch's threads: each domain's arithmetic is its own, so
    # the split must not change a single bit
    z, means, var, log_w = _flow_problem(9, 300, 20, 20, 19, F64)
    times = [(j / 10) ** 2 for j in range(11)][::-1]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = mixture_flow(z, times, means, var, Schedule(), log_w)
        torch.set_num_threads(3)
        three = mixture_flow(z, times, means, var, Schedule(), log_w)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, three)


def test_flow_backend_rejects_what_it_cannot_do():
    with pytest.raises(ValueError, match="flow backend"), flow_backend("fortran"):
        pass
    z, means, var, log_w = _flow_problem(10, 2, 3, 4, 2, F64)
    with pytest.raises(RuntimeError, match="compiled flow cannot run"), flow_backend("compiled"):
        mixture_flow(z.requires_grad_(), [1.0, 0.0], means, var, Schedule(), log_w)
