"""Input checks shared by the da modules: each error names the offending argument."""

from __future__ import annotations

import warnings

import torch


class MaskedObservationWarning(UserWarning):
    """Some observations were NaN and were left out of the analysis."""


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


def check_ensemble(name: str, x: torch.Tensor) -> None:
    """An ensemble needs a member dimension of at least 2 and finite values."""
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        raise ValueError(f"{name} must be a tensor shaped (member, ...), got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    if x.shape[0] < 2:
        raise ValueError(f"{name} has {x.shape[0]} member(s); an ensemble filter needs >= 2")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} holds non-finite values")


def observation_mask(
    y: torch.Tensor, hx: torch.Tensor, std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check y against H(x) (member, *obs_shape) and R's std; return (y with NaN -> 0, mask).

    Raises ValueError for a shape mismatch, a non-positive std, an Inf in y or
    when nothing is observed; warns (:class:`MaskedObservationWarning`) for NaN.
    """
    if tuple(y.shape) != tuple(hx.shape[1:]):
        raise ValueError(
            f"y has shape {tuple(y.shape)} but H(x) gives {tuple(hx.shape[1:])} per member"
        )
    std = torch.as_tensor(std)
    if not bool(torch.isfinite(std).all()) or bool((std <= 0).any()):
        raise ValueError("observation error std must be finite and > 0")
    if bool(torch.isinf(y).any()):
        raise ValueError("y holds Inf values")
    valid = ~torch.isnan(y)
    n_bad = int((~valid).sum())
    if n_bad == y.numel():
        raise ValueError("y holds no observation: every value is NaN")
    if n_bad:
        warnings.warn(
            f"{n_bad} of {y.numel()} observations are NaN and are left out",
            MaskedObservationWarning,
            stacklevel=3,
        )
    return torch.where(valid, y, torch.zeros_like(y)), valid
