"""The diffused score of a Gaussian mixture with a shared diagonal covariance.

A Gaussian-mixture (kernel) prior p_0(u) = sum_j pi_j N(u; m_j, diag(c)) stays a
Gaussian mixture under the forward process Z_t = alpha_t Z_0 + beta_t xi of
Rafid et al. Eq. (3):

    p_t(z) = sum_j pi_j N(z; alpha_t m_j, diag(alpha_t^2 c + beta_t^2)),

so its score is closed form (no training, no Monte Carlo over t):

    S(z, t) = -diag(s_t)^{-1} (z - alpha_t sum_j r_j(z) m_j),    s_t = alpha_t^2 c + beta_t^2,
    r_j(z)  = softmax_j[ log pi_j - 0.5 sum_k (z_k - alpha_t m_jk)^2 / s_tk ].

c -> 0 with equal weights gives the training-free mixture score of Eq. (8)
(:func:`da.score.mixture_score`); one component gives the Gaussian score
-(z - alpha m) / s_t. As in Eq. (8) the |z|^2 part of the exponent is the same for
every j, so the responsibilities are a softmax of two matrix products.

A covariance that is not diagonal is handled by rotating into its eigenbasis once
(see :mod:`da.filters.kernel`): the rotated mixture has a diagonal covariance.

Shapes: z (B, N, K) points, means (B, M, K), var (B, K) or a float, log_weights
(B, M) or None (equal weights); B independent problems (local domains).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from tfda.da.batched import column_max, matmul
from tfda.da.schedule import Schedule

_LOG2E = math.log2(math.e)

try:  # the compiled flow (da/_flow.c); optional: tfda installs without a C compiler
    from tfda.da import _flow as _compiled
except ImportError:  # pragma: no cover - depends on the build
    _compiled = None

_backend = "auto"


@contextlib.contextmanager
def flow_backend(name: str) -> Iterator[None]:
    """Choose :func:`mixture_flow`'s implementation inside the block: "auto" (the compiled
    CPU flow where it applies, else torch), "torch" (always the torch code: the reference,
    for A/B comparisons) or "compiled" (an error where the compiled flow cannot run)."""
    global _backend
    if name not in ("auto", "torch", "compiled"):
        raise ValueError(f"flow backend must be 'auto', 'torch' or 'compiled', got {name!r}")
    previous, _backend = _backend, name
    try:
        yield
    finally:
        _backend = previous


def compiled_flow_available() -> bool:
    """Whether the compiled CPU flow was built (da/_flow.c)."""
    return _compiled is not None


def gaussian_mixture_score(
    z: torch.Tensor,
    t: float,
    means: torch.Tensor,
    var: torch.Tensor | float,
    schedule: Schedule,
    log_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Score of the diffused mixture sum_j pi_j N(alpha_t m_j, diag(alpha_t^2 var + beta_t^2)).

    Args:
        z: points (B, N, K).
        t: diffusion time in [0, 1]; t = 0 is allowed when ``var`` + eps_b > 0.
        means: component means (B, M, K) at t = 0.
        var: the components' shared diagonal variance at t = 0, (B, K) or a float.
        schedule: alpha_t, beta_t^2 (Eq. 5).
        log_weights: (B, M) unnormalised log pi_j; None for equal weights.

    Returns:
        The score, shaped like ``z``.
    """
    centre = _posterior_centre(z, t, means, var, schedule, log_weights)
    return -(z - schedule.alpha(t) * centre) / _diffused_variance(t, var, schedule, z).unsqueeze(1)


def mixture_log_density(
    z: torch.Tensor,
    t: float,
    means: torch.Tensor,
    var: torch.Tensor | float,
    schedule: Schedule,
    log_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """log p_t(z) of the same mixture, (B, N): the reference the score is tested against."""
    alpha = schedule.alpha(t)
    s_t = _diffused_variance(t, var, schedule, z)
    diff = z.unsqueeze(2) - alpha * means.unsqueeze(1)  # (B, N, M, K)
    quad = (diff * diff / s_t[:, None, None, :]).sum(-1)
    log_norm = -0.5 * torch.log(2 * torch.pi * s_t).sum(-1)[:, None, None]
    if log_weights is None:
        log_weights = torch.zeros(means.shape[:2], dtype=z.dtype, device=z.device)
    log_pi = torch.log_softmax(log_weights, dim=-1).unsqueeze(1)
    return torch.logsumexp(log_pi + log_norm - 0.5 * quad, dim=-1)


def _diffused_variance(
    t: float, var: torch.Tensor | float, schedule: Schedule, like: torch.Tensor
) -> torch.Tensor:
    alpha = schedule.alpha(t)
    s_t = alpha * alpha * torch.as_tensor(var, dtype=like.dtype, device=like.device)
    s_t = s_t + schedule.beta2(t)
    return s_t.expand(like.shape[0], like.shape[-1]) if s_t.ndim == 0 else s_t


def _posterior_centre(
    z: torch.Tensor, t: float, means: torch.Tensor, var: torch.Tensor | float,
    schedule: Schedule, log_weights: torch.Tensor | None,
) -> torch.Tensor:
    """sum_j r_j(z, t) m_j: the responsibility-weighted component mean, (B, N, K)."""
    work = _Workspace(z, means)
    alpha = work.set_time(t, var, schedule, log_weights, z)
    sums = work.weighted_sums(work.points, alpha, work.means_ones, work.s0)
    return (sums[:, :-1] / sums[:, -1:]).transpose(1, 2).expand_as(z)


class _Workspace:
    """The arrays of one flow, allocated once and reused by every step.

    Points and means are held as columns, [z; 1] (B, K + 1, N) and [m_j; 1]
    (B, K + 1, M), because the softmax's maximum over the components is then a maximum
    over rows, which vectorises along them (several times faster on a CPU than a
    reduction along a short last axis). Every step writes into these arrays (``out=``)
    instead of making fresh temporaries: on the development machine every fresh
    multi-megabyte temporary is page-faulted in again, so an operation into a new array
    costs more than into a reused one.
    """

    def __init__(self, z: torch.Tensor, means: torch.Tensor) -> None:
        (m, k), n = means.shape[1:], z.shape[1]
        b = max(z.shape[0], means.shape[0])  # one of them may be broadcast
        new = means.new_empty
        self.points, self.base, self.pred = new(b, k + 1, n), new(b, k + 1, n), new(b, k + 1, n)
        self.points[:, :k] = z.transpose(1, 2)
        self.points[:, k] = 1.0
        self.s0, self.s1, self.logits = new(b, k + 1, n), new(b, k + 1, n), new(b, m, n)
        self.scratch, self.terms = new(b, (m + 1) // 2, n), new(b, m, k + 1)
        self.rows = new(b, k + 1, m)
        self.means = means.expand(b, m, k)
        self.squared = self.means * self.means
        self.means_ones = torch.cat([self.means, means.new_ones(b, m, 1)], -1).transpose(1, 2)
        self.means_ones = self.means_ones.contiguous()
        self.time: float | None = None

    def set_time(self, t: float, var: torch.Tensor | float, schedule: Schedule,
                 log_weights: torch.Tensor | None, like: torch.Tensor) -> float:
        """Write the left factor A_t (B, M, K + 1) of the logits, in base-2 units (they are
        exponentiated with exp2, 2-3x cheaper than exp on a CPU): columns 0 .. K-1 hold
        alpha_t m_jk / s_tk, column K the bias log pi_j - alpha_t^2 |m_j|^2_{s_t} / 2, both
        times log2(e), so that A_t [z; 1] is the logits in one product. Returns alpha_t;
        ``like``: a (B, N, K) tensor."""
        alpha = schedule.alpha(t)
        if t != self.time:  # the corrector's time is the next step's start
            self.time = t
            inv_s = _LOG2E / _diffused_variance(t, var, schedule, like)  # (B, K)
            k = inv_s.shape[-1]
            torch.mul(self.means, (alpha * inv_s).unsqueeze(1), out=self.terms[..., :k])
            bias = self.terms[..., k:]
            matmul(self.squared, inv_s.unsqueeze(-1), out=bias).mul_(-0.5 * alpha * alpha)
            if log_weights is not None:
                bias.add_(log_weights.unsqueeze(-1), alpha=_LOG2E)
        return alpha

    def weighted_sums(self, points: torch.Tensor, alpha: float, rows: torch.Tensor,
                      out: torch.Tensor) -> torch.Tensor:
        """sum_j w_j(z) rows_j (B, R, N) into ``out`` at the points [z; 1] (B, K + 1, N),
        for the unnormalised responsibilities w_j = 2^(logit_j - max_j logit_j) and the
        columns of ``rows`` (B, R, M); a row of ones in ``rows`` gives the normaliser
        sum_j w_j (the softmax is normalised after the product: torch's softmax costs
        more than both matrix products together on a CPU at these sizes). At t = 1
        (alpha = 0) the responsibilities are the weights alone and the result is
        (B, R, 1), to be broadcast over the points."""
        k = self.terms.shape[-1] - 1
        if alpha == 0.0:
            logits = self.logits[..., :1].copy_(self.terms[..., k:])
            out = out[..., :1]
        else:
            logits = matmul(self.terms, points, out=self.logits)  # (B, M, N)
        # weights below 2^-100 of the largest are raised to it (a change far below
        # round-off): subnormal weights would slow the product below by a third on x86
        scratch = self.scratch[..., : logits.shape[-1]]
        logits.sub_(column_max(logits, scratch=scratch)).clamp_min_(-100.0).exp2_()
        return matmul(rows, logits, out=out)


def mixture_flow(
    z: torch.Tensor,
    times: list[float],
    means: torch.Tensor,
    var: torch.Tensor | float,
    schedule: Schedule,
    log_weights: torch.Tensor | None = None,
    *,
    second_order: bool = True,
) -> torch.Tensor:
    """Carry z along the probability-flow ODE (Eq. 9) of the diffused mixture, over ``times``.

    ``times`` may increase (encoding, data -> noise) or decrease (sampling). The ODE's
    linear part is integrated exactly: with the responsibility-weighted mean
    m(z, t) = sum_j r_j m_j held fixed over a step, Eq. (9) with the score above reads
    d(z - alpha_t m)/dt = (b + sigma^2 / (2 s_t)) (z - alpha_t m), and since
    d log s_t / dt = 2 b + sigma^2 / s_t its solution is

        z(t1) = alpha_{t1} m + (z(t0) - alpha_{t0} m) sqrt(s_{t1} / s_{t0})

    (the exponential integrator / DDIM step of a Gaussian mixture). It is exact for one
    component at any step size and unconditionally stable -- the posterior's stiffness
    (s_t -> a small variance as t -> 0) costs no extra steps -- and it needs no drift
    b(t), so eps_a = 0 is allowed. ``second_order`` re-evaluates m at the predicted end
    point and steps with the average of the two (Heun on the responsibilities).

    On the CPU (float32 or float64, no autograd) the compiled flow of da/_flow.c runs
    the same steps one domain at a time in the cache, about twice as fast
    (docs/performance.md); :func:`flow_backend` chooses.
    """
    if _use_compiled(z, means, var, log_weights):
        return _compiled_flow(z, times, means, var, schedule, log_weights, second_order)
    work = _Workspace(z, means)
    k = z.shape[-1]
    # A step is z1 = ratio z0 + gain m(z0) with m = S / n, S = sum_j w_j m_j and
    # n = sum_j w_j: with the means' rows scaled by the gain, gain m is S / n, one
    # addcdiv, and the row of ones is rebuilt every step (its ratio is 0 and n / n adds
    # exactly 1; x / 2x is exactly 1/2 in Heun's average).
    for t0, t1 in zip(times[:-1], times[1:], strict=True):
        ratio, gain = _step_factors(t0, t1, var, schedule, z)
        torch.mul(work.means_ones, gain, out=work.rows)
        torch.mul(work.points, ratio, out=work.base)
        alpha = work.set_time(t0, var, schedule, log_weights, z)
        s0 = work.weighted_sums(work.points, alpha, work.rows, work.s0)
        if not second_order:
            work.points, work.base = work.base.addcdiv_(s0, s0[:, k:]), work.points
            continue
        torch.addcdiv(work.base, s0, s0[:, k:], out=work.pred)
        alpha = work.set_time(t1, var, schedule, log_weights, z)
        s1 = work.weighted_sums(work.pred, alpha, work.rows, work.s1)
        work.base.addcdiv_(s0, s0[:, k:], value=0.5).addcdiv_(s1, s1[:, k:], value=0.5)
        work.points, work.base = work.base, work.points
    return work.points[:, :k].transpose(1, 2).contiguous()


def _step_factors(t0: float, t1: float, var: torch.Tensor | float, schedule: Schedule,
                  like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The exponential integrator's ratio sqrt(s_t1 / s_t0) and gain alpha_1 - alpha_0 ratio,
    (B, K + 1, 1), extended by 0 and 1 for the row of ones. ``like``: (B, N, K)."""
    ratio = (_diffused_variance(t1, var, schedule, like)
             / _diffused_variance(t0, var, schedule, like)).sqrt()
    gain = schedule.alpha(t1) - schedule.alpha(t0) * ratio
    ratio = torch.cat([ratio, ratio.new_zeros(ratio.shape[0], 1)], dim=-1)
    gain = torch.cat([gain, gain.new_ones(gain.shape[0], 1)], dim=-1)
    return ratio.unsqueeze(-1), gain.unsqueeze(-1)


def _use_compiled(z: torch.Tensor, means: torch.Tensor, var: torch.Tensor | float,
                  log_weights: torch.Tensor | None) -> bool:
    if _backend == "torch":
        return False
    tensors = [z, means] + [x for x in (var, log_weights) if isinstance(x, torch.Tensor)]
    usable = (_compiled is not None and z.dtype in (torch.float32, torch.float64)
              and all(x.device.type == "cpu" and x.dtype == z.dtype for x in tensors)
              and not (torch.is_grad_enabled() and any(x.requires_grad for x in tensors)))
    if _backend == "compiled" and not usable:
        raise RuntimeError("the compiled flow cannot run here (not built, not a CPU "
                           "float32/float64 problem, or autograd is on)")
    return usable


def _compiled_flow(z: torch.Tensor, times: list[float], means: torch.Tensor,
                   var: torch.Tensor | float, schedule: Schedule,
                   log_weights: torch.Tensor | None, second_order: bool) -> torch.Tensor:
    """:func:`mixture_flow` by da/_flow.c, the batch split over torch's CPU threads (the
    C code releases the GIL)."""
    (m, k), n = means.shape[1:], z.shape[1]
    b = max(z.shape[0], means.shape[0])
    out = z.detach().expand(b, n, k).contiguous() if z.shape[0] != b else z.detach().clone(
        memory_format=torch.contiguous_format)
    var_rows = torch.as_tensor(var, dtype=z.dtype)
    var_rows = (var_rows.expand(1, k) if var_rows.ndim == 0 else var_rows).contiguous()
    means = means.detach().contiguous()
    log_weights = None if log_weights is None else log_weights.detach().contiguous()
    alphas = torch.tensor([float(schedule.alpha(t)) for t in times], dtype=torch.float64)
    betas2 = torch.tensor([float(schedule.beta2(t)) for t in times], dtype=torch.float64)

    def run(lo: int, hi: int) -> None:
        def rows(x: torch.Tensor | None) -> object:
            return None if x is None else (x if x.shape[0] == 1 else x[lo:hi]).numpy()
        _compiled.flow(out[lo:hi].numpy(), rows(means), rows(var_rows), rows(log_weights),
                       alphas.numpy(), betas2.numpy(), second_order, hi - lo, m, k, n,
                       len(times) - 1)

    parts = min(torch.get_num_threads(), max(1, b // 64))
    bounds = [b * i // parts for i in range(parts + 1)]
    if parts == 1:
        run(0, b)
    else:
        with ThreadPoolExecutor(parts) as pool:
            list(pool.map(run, bounds[:-1], bounds[1:]))
    return out
