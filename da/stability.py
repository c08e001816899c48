"""Step sizes the explicit samplers can take on the EnSF posterior score.

The EnSF likelihood term h(t) J^T R^{-1} (y - H(z)) (Bao, Zhang & Zhang, Eq. 3.9) is
stiff when R is small: linearised, an Euler(-Maruyama) step multiplies the error by
1 - dt c sigma^2(t) (h(t) lambda + kappa(t)), with lambda the largest eigenvalue of
J^T R^{-1} J, kappa(t) <= 1 / beta_t^2 the prior score's own stiffness, c = 1 for the
reverse SDE (Eq. 6) and 1/2 for the probability-flow ODE (Eq. 9). The step is
monotone (no overshoot) for dt <= 1 / rate and unstable beyond 2 / rate: with obs
std 0.05 (lambda = 400) a uniform 100-step grid is at rate dt ~ 4 and diverges.
:func:`stable_time_grid` keeps the user's uniform steps where they are stable and
shortens them where the rate asks for it (near t = 0, where h -> 1 and beta -> 0),
so that no clipping is needed to stay finite.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tfda.da.schedule import Schedule

MAX_STEPS = 100_000


def curvature_bound(
    gradient: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, *, iterations: int = 12
) -> float:
    """Largest eigenvalue of -d gradient / dz over the rows of ``z`` (power iteration).

    ``gradient`` must act row by row (one member's likelihood depends on its own row),
    as the EnSF likelihood score does; Hessian-vector products are central differences.
    """
    g = torch.Generator(device=z.device).manual_seed(0)
    v = torch.randn(z.shape, generator=g, dtype=z.dtype, device=z.device)
    scale = float(z.abs().max()) + 1.0
    eps = 1e-4 * scale if z.dtype == torch.float64 else 1e-2 * scale
    lam = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    for _ in range(iterations):
        v = v / v.flatten(1).norm(dim=1).clamp_min(1e-300).reshape(-1, *([1] * (z.ndim - 1)))
        hv = -(gradient(z + eps * v) - gradient(z - eps * v)) / (2 * eps)
        lam = (hv * v).flatten(1).sum(1)
        v = hv
    return float(lam.max().clamp_min(0.0))


def stable_time_grid(
    steps: int,
    t_end: float,
    schedule: Schedule,
    *,
    curvature: float,
    damping: Callable[[float], float],
    prior_stiffness: bool,
    ode: bool,
    target: float = 1.0,
) -> torch.Tensor:
    """A decreasing grid from 1 to ``t_end``: uniform ``steps`` steps, shortened where
    rate(t) dt > ``target``, rate = c sigma^2(t) (damping(t) curvature + 1 / beta_t^2).

    Raises ValueError when more than MAX_STEPS steps would be needed.
    """
    uniform = (1.0 - t_end) / steps
    c = 0.5 if ode else 1.0
    times = [1.0]
    t = 1.0
    while t > t_end:
        rate = curvature * float(damping(t))
        if prior_stiffness:
            rate += 1.0 / max(schedule.beta2(t), 1e-300)
        rate *= c * schedule.diffusion2(t)
        dt = min(uniform, target / rate) if rate > 0 else uniform
        t = max(t - dt, t_end)
        if t_end < t < t_end + 1e-9 * uniform:
            t = t_end
        times.append(t)
        if len(times) > MAX_STEPS:
            raise ValueError(
                f"the likelihood's curvature {curvature:.3g} (largest eigenvalue of "
                f"J^T R^-1 J) needs more than {MAX_STEPS} stable steps: the observation "
                "error is too small for an explicit sampler; use score='kernel'")
    return torch.tensor(times, dtype=torch.float64)


def pad_to_multiple(times: torch.Tensor, multiple: int) -> torch.Tensor:
    """Halve the longest steps until the step count is a multiple of ``multiple``
    (Parareal needs equal slices); shorter steps stay stable."""
    times = times.clone()
    while (times.numel() - 1) % multiple:
        k = int((times[:-1] - times[1:]).argmax())
        mid = 0.5 * (times[k] + times[k + 1])
        times = torch.cat([times[: k + 1], mid.reshape(1), times[k + 1 :]])
    return times
