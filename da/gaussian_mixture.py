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

import math

import torch

from tfda.da.batched import matmul, row_max
from tfda.da.schedule import Schedule

_LOG2E = math.log2(math.e)


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
    terms = _centre_terms(t, means, var, schedule, log_weights, z)
    return _centre(z, terms, _with_ones(means)).expand_as(z)


def _centre_terms(
    t: float, means: torch.Tensor, var: torch.Tensor | float, schedule: Schedule,
    log_weights: torch.Tensor | None, like: torch.Tensor,
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """What the responsibilities at time t need of the components, computed once per time,
    in base-2 units (the logits are exponentiated with exp2, 2-3x cheaper than exp on a
    CPU): alpha_t, alpha_t m_j / s_t transposed (B, K, M) and
    log pi_j - alpha_t^2 |m_j|^2_{s_t} / 2 (B, 1, M), both times log2(e)."""
    alpha = schedule.alpha(t)
    scaled = means * (_LOG2E / _diffused_variance(t, var, schedule, like)).unsqueeze(1)
    bias = (-0.5 * alpha * alpha) * (scaled * means).sum(-1)
    if log_weights is not None:
        bias = bias + _LOG2E * log_weights
    # contiguous (B, K, M): numpy's stacked product takes twice as long from a transposed view
    return alpha, (alpha * scaled).transpose(1, 2).contiguous(), bias.unsqueeze(1)


def _with_ones(means: torch.Tensor) -> torch.Tensor:
    """[m_j, 1] (B, M, K + 1): one product then gives sum_j w_j m_j and sum_j w_j."""
    return torch.cat([means, means.new_ones(means.shape[:-1]).unsqueeze(-1)], dim=-1)


def _centre(z: torch.Tensor, terms: tuple[float, torch.Tensor, torch.Tensor],
            means_ones: torch.Tensor) -> torch.Tensor:
    """The softmax is taken by hand and normalised after the product with the means
    (a (B, N, K) division instead of a (B, N, M) one; the normaliser comes from the
    column of ones): torch's softmax costs more than both matrix products together
    on a CPU at these sizes. At t = 1 (alpha = 0) the responsibilities are the
    weights alone and the result is (B, 1, K), to be broadcast over the points."""
    alpha, scaled_t, bias = terms
    logits = bias.clone() if alpha == 0.0 else matmul(z, scaled_t).add_(bias)
    # weights below 2^-100 of the largest are raised to it (a change far below round-off):
    # subnormal weights would slow the product below by a third on x86 CPUs
    logits = logits.sub_(row_max(logits)).clamp_min_(-100.0).exp2_()
    k = means_ones.shape[-1] - 1
    weighted = matmul(logits, means_ones)
    return weighted[..., :k].div_(weighted[..., k:])


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
    """
    terms: dict[float, tuple[float, torch.Tensor, torch.Tensor]] = {}
    means_ones = _with_ones(means)

    def centre(x: torch.Tensor, t: float) -> torch.Tensor:
        if t not in terms:  # the corrector's time is the next step's start
            terms.clear()
            terms[t] = _centre_terms(t, means, var, schedule, log_weights, x)
        return _centre(x, terms[t], means_ones)

    for t0, t1 in zip(times[:-1], times[1:], strict=True):
        ratio = (_diffused_variance(t1, var, schedule, z)
                 / _diffused_variance(t0, var, schedule, z)).sqrt().unsqueeze(1)
        # z(t1) = alpha_1 m + (z - alpha_0 m) ratio = ratio z + (alpha_1 - alpha_0 ratio) m
        gain = schedule.alpha(t1) - schedule.alpha(t0) * ratio
        base = z * ratio
        m0 = centre(z, t0)
        z_next = torch.addcmul(base, gain, m0)
        if second_order:
            m0 = (m0 + centre(z_next, t1)).mul_(0.5)
            z_next = torch.addcmul(base, gain, m0)
        z = z_next
    return z
