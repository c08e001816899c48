"""Input checks shared by the da modules: each error names the offending argument."""

from __future__ import annotations

import torch


def check_finite(name: str, x: torch.Tensor) -> None:
    """Raise ValueError naming ``name`` if ``x`` holds NaN or Inf."""
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} holds {bad} non-finite value(s) (NaN or Inf)")


def check_times(name: str, t: float | torch.Tensor) -> None:
    """Raise ValueError unless every time in ``t`` lies in (0, 1]."""
    tt = torch.as_tensor(t, dtype=torch.float64)
    if tt.numel() == 0:
        raise ValueError(f"{name} is empty")
    if not bool(torch.isfinite(tt).all()) or bool((tt <= 0).any()) or bool((tt > 1).any()):
        lo, hi = float(tt.min()), float(tt.max())
        raise ValueError(f"{name} must lie in (0, 1]; got values in [{lo}, {hi}]")


def check_time_grid(name: str, timesteps: torch.Tensor) -> None:
    """A sampler's grid: at least two times, strictly decreasing, all in (0, 1]."""
    if timesteps.ndim != 1 or timesteps.numel() < 2:
        raise ValueError(
            f"{name} must be a 1-D grid of at least two times, got shape {tuple(timesteps.shape)}"
        )
    check_times(name, timesteps)
    steps = timesteps[1:] - timesteps[:-1]
    if bool((steps >= 0).any()):
        k = int(torch.nonzero(steps >= 0)[0])
        raise ValueError(
            f"{name} must be strictly decreasing from 1 towards 0; "
            f"{name}[{k}] = {float(timesteps[k])} is followed by {float(timesteps[k + 1])}"
        )
