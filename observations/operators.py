"""Observation operators H: state (member, *state_shape) -> observations (member, *obs_shape).

Each operator is a differentiable torch function carrying its error model
(:class:`observations.errors.ObservationError`), so a filter gets everything it
needs from one object:

* the EnSF likelihood score grad_z log p(y | z) = J_H(z)^T R^{-1} (y - H(z)) by
  autograd through ``operator(z)`` and ``error.precision_matvec`` (Bao, Zhang &
  Zhang, arXiv 2309.00983, Eq. 3.9);
* the LETKF's ensemble in observation space H(x_k) and the marginal error std,
  and, through the optional ``locations``, the positions used for localisation.

Implementations: :class:`Identity`, :class:`Subset` (indices or a boolean mask
over the state components: sparse stations, a subset of channels),
:class:`Arctan` (the EnSF papers' nonlinear case, H(x) = arctan(x) on the chosen
components), :class:`Absolute` (|x|, sign-ambiguous) and :class:`FromCallable` (any user function).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from tfda.da.protocols import ObservationError, ObservationOperator
from tfda.observations.errors import DiagonalError

__all__ = ["Absolute", "Arctan", "FromCallable", "Identity", "ObservationOperator", "Subset",
           "as_error"]

ErrorLike = ObservationError | float | torch.Tensor


def as_error(error: ErrorLike, *, name: str = "error") -> ObservationError:
    """A float or tensor std becomes :class:`DiagonalError`; an error model is checked.

    Raises ValueError naming ``name`` when the std is negative, zero or not finite.
    """
    if isinstance(error, (int, float, torch.Tensor)):
        try:
            return DiagonalError(error)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    if not isinstance(error, ObservationError):
        raise TypeError(f"{name} must be an ObservationError or a std, got {type(error).__name__}")
    std = torch.as_tensor(error.std)
    if not bool(torch.isfinite(std).all()) or bool((std <= 0).any()):
        raise ValueError(f"{name}: observation error std must be finite and > 0")
    return error


def _as_locations(locations: Any) -> torch.Tensor | None:
    return None if locations is None else torch.as_tensor(locations, dtype=torch.float64)


class Identity:
    """H(x) = x: every state component observed, obs_shape = state_shape."""

    def __init__(self, error: ErrorLike, *, locations: Any = None) -> None:
        self.error = as_error(error)
        self.locations = _as_locations(locations)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def __repr__(self) -> str:
        return f"Identity(error={self.error!r})"


class Subset:
    """Observe chosen state components: ``indices`` into the flattened state
    (member, prod(state_shape)) or a boolean ``mask`` shaped like the state.

    The result is (member, n_obs), ordered like ``indices`` (or row-major over the
    mask). With neither ``locations`` given nor a mask, the flat indices double as
    observation locations (the ring position for Lorenz-96).
    """

    def __init__(
        self,
        error: ErrorLike,
        *,
        indices: torch.Tensor | list[int] | None = None,
        mask: torch.Tensor | None = None,
        locations: Any = None,
    ) -> None:
        if (indices is None) == (mask is None):
            raise ValueError("Subset: give exactly one of indices= or mask=")
        self.mask = None
        if mask is not None:
            mask = torch.as_tensor(mask)
            if mask.dtype != torch.bool:
                raise ValueError(f"Subset: mask must be boolean, got {mask.dtype}")
            self.mask = mask
            idx = torch.nonzero(mask.flatten()).flatten()
        else:
            idx = torch.as_tensor(indices, dtype=torch.long).flatten()
            if bool((idx < 0).any()):
                raise ValueError("Subset: indices must be >= 0")
        if idx.numel() == 0:
            raise ValueError("Subset: no component is observed")
        self.indices = idx
        self._n_state = int(idx.max()) + 1  # the state needs at least this many components
        self._on_device: dict[torch.device, torch.Tensor] = {}  # indices copied once per device
        self.error = as_error(error)
        if locations is None and mask is None:
            locations = idx.to(torch.float64)
        self.locations = _as_locations(locations)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        if self.mask is not None and tuple(x.shape[1:]) != tuple(self.mask.shape):
            raise ValueError(
                f"Subset: mask shape {tuple(self.mask.shape)} differs from state shape "
                f"{tuple(x.shape[1:])}"
            )
        if self._n_state > flat.shape[1]:
            raise ValueError(
                f"Subset: index {self._n_state - 1} out of range for a state of "
                f"{flat.shape[1]} components"
            )
        if x.device not in self._on_device:
            self._on_device[x.device] = self.indices.to(x.device)
        return flat.index_select(1, self._on_device[x.device])

    def __repr__(self) -> str:
        return f"Subset(n_obs={self.indices.numel()}, error={self.error!r})"


class _Pointwise:
    """H(x) = function(x) on every component or on ``indices`` of the flat state
    (``locations``, one per observation, default to the flat indices observed)."""

    function: Any

    def __init__(
        self,
        error: ErrorLike,
        *,
        indices: torch.Tensor | list[int] | None = None,
        locations: Any = None,
    ) -> None:
        self.error = as_error(error)
        self._subset = None
        if indices is not None:
            self._subset = Subset(self.error, indices=indices, locations=locations)
            locations = self._subset.locations
        self.locations = _as_locations(locations)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return type(self).function(x if self._subset is None else self._subset(x))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(error={self.error!r})"


class Arctan(_Pointwise):
    """H(x) = arctan(x), the nonlinear operator of the EnSF papers (Bao, Zhang &
    Zhang 2023, Sec. 4.2), on every component or on ``indices`` of the flat state.

    Its Jacobian 1 / (1 + x^2) vanishes for large |x|, so observations say little
    about the magnitude of large values: the hard case for linearising filters.
    """

    function = staticmethod(torch.arctan)


class Absolute(_Pointwise):
    """H(x) = |x| on every component or on ``indices`` of the flat state: a
    sign-ambiguous observation (issue 23's non-Gaussian twin).

    A forecast ensemble that straddles 0 has observation-space perturbations |x_j|
    uncorrelated with x_j, so a filter that linearises H through the ensemble (the
    LETKF) learns nearly nothing from it, and the posterior of a variable near
    +-sqrt(y) is bimodal. Differentiable almost everywhere (d|x|/dx = sign x, 0 at 0).
    ``locations`` (one per observation) default to the flat indices observed.
    """

    function = staticmethod(torch.abs)


class FromCallable:
    """Any differentiable user function ``fn(x (member, *state)) -> (member, *obs)``."""

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        error: ErrorLike,
        *,
        locations: Any = None,
    ) -> None:
        if not callable(fn):
            raise TypeError("FromCallable: fn must be callable")
        self.fn = fn
        self.error = as_error(error)
        self.locations = _as_locations(locations)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fn(x)
        if not isinstance(out, torch.Tensor) or out.ndim < 1 or out.shape[0] != x.shape[0]:
            raise ValueError(
                "FromCallable: fn must return a tensor with the member dimension of x first"
            )
        return out

    def __repr__(self) -> str:
        return f"FromCallable({getattr(self.fn, '__name__', 'fn')}, error={self.error!r})"
