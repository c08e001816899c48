"""Input checks shared by the da modules: each error names the offending argument."""

from __future__ import annotations

import dataclasses
import math
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


def check_int(name: str, value: object, *, minimum: int | None = None,
              optional: bool = False) -> None:
    """TypeError naming ``name`` unless ``value`` is an int (not a bool; None when
    ``optional``); ValueError when below ``minimum``."""
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_number(name: str, value: object, *, optional: bool = False) -> None:
    """TypeError naming ``name`` unless ``value`` is a real number (None when ``optional``);
    ValueError when it is NaN or Inf."""
    if optional and value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")


def check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


# annotation text -> check, for the plain fields of the filters' dataclasses
_FIELD_CHECKS = {
    "int": lambda n, v: check_int(n, v),
    "int | None": lambda n, v: check_int(n, v, optional=True),
    "float": lambda n, v: check_number(n, v),
    "float | None": lambda n, v: check_number(n, v, optional=True),
    "bool": check_bool,
}


def check_fields(obj: object) -> None:
    """Check every plain (int, float, bool, optional int/float) field of the dataclass
    ``obj`` against its annotation: TypeError/ValueError naming the field, before any
    comparison could fail with a bare ``'<' not supported``; floats must be finite."""
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        check = _FIELD_CHECKS.get(f.type if isinstance(f.type, str) else
                                  getattr(f.type, "__name__", ""))
        if check is not None:
            check(f.name, getattr(obj, f.name))
