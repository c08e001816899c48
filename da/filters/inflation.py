"""Innovation-driven adaptive multiplicative inflation, shared by the local filters.

Desroziers et al. (2005, QJRMS 131, Eq. 3 and Sec. 3) and Li, Kalnay & Miyoshi (2009,
QJRMS 135, Eq. 4): if the forecast errors have covariance lambda^2 P^f, the
innovations d = y - mean H(x) satisfy E[d^T R^{-1} d] = lambda^2 tr(R^{-1} H P^f H^T)
+ p. With the ensemble estimate H P^f H^T ~ Y Y^T, Y = the observation-space
perturbations / sqrt(M - 1), one analysis' estimate is

    lambda^2 = (d^T R^{-1} d - p) / tr(R^{-1} Y Y^T),

over the p observations used (NaN left out), clipped to [1, lambda_max]. It is
measured on the forecast already inflated by the fixed ``inflation`` (Y Y^T scaled by
it), so the covariance factor the analysis uses is inflation * lambda^2, i.e. the raw
estimate clipped to [inflation, inflation * lambda_max]: the fixed inflation is a
floor, and the adaptive part only adds what the innovations ask for beyond it.

Stateless: each analysis estimates its own factor from its own forecast (no temporal
smoothing as in Li et al.'s Kalman-filtered lambda), so checkpoints and restarts are
unaffected. One global factor per analysis (not per local domain): the same factor
for :class:`da.filters.LETKF` and the kernel :class:`da.filters.EnSF`, whose
per-component innovations (``linearisation="centres"``) are evaluated at centres
that depend on the inflation, which a per-domain factor could not follow. A single
estimate from p observations has relative noise ~ sqrt(2 / p); clipping at 1 makes
its mean >= 1 even when the ensemble is consistent.
"""

from __future__ import annotations

from typing import Any

import torch

from tfda.da.filters.local import prepare_observations


def check_adaptive_inflation(value: float | None) -> None:
    """One error for an invalid lambda_max (None: adaptive inflation off)."""
    if value is not None and not value >= 1.0:
        raise ValueError(f"adaptive_inflation (the largest lambda^2) must be >= 1 or None, "
                         f"got {value}")


def innovation_inflation(prior: torch.Tensor, y: torch.Tensor, obs_operator: Any, *,
                         inflation: float, maximum: float,
                         hx: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
    """(lambda^2 in [1, maximum], H(prior)): the module docstring's estimate.

    Args:
        prior: forecast ensemble (M, *state_shape), before any inflation.
        y: observations shaped like H(x)[0]; NaN marks "not observed".
        obs_operator: H with an ``error`` (diagonal R: ``error.std``).
        inflation: the fixed multiplicative inflation of the forecast covariance.
        maximum: lambda_max, the upper clip.
        hx: H(prior) (M, *obs_shape) if already computed.

    lambda^2 = 1 when the ensemble has no spread in observation space.
    """
    m = prior.shape[0]
    hx, y_filled, valid, r_inv, _ = prepare_observations(
        prior, y, obs_operator, hx=hx, radius=None, distance=None, sites=None)
    hxf = hx.reshape(m, -1)[:, valid]
    mean = hxf.mean(0)
    innov = y_filled.flatten()[valid] - mean
    spread = inflation * ((hxf - mean).square() * r_inv).sum() / (m - 1)
    excess = (innov.square() * r_inv).sum() - innov.numel()
    if not float(spread) > 0.0:
        return 1.0, hx
    return min(max(float(excess / spread), 1.0), maximum), hx
