"""Observation-error models: what a filter needs of R.

An error model describes Gaussian observation noise eps ~ N(0, R) on observations
shaped (*obs_shape). Filters use it through :class:`ObservationError`:
``precision_matvec`` applies R^{-1} to residuals (batch, *obs_shape), which gives
the EnSF likelihood score J_H^T R^{-1} (y - H(x)) and the LETKF's R^{-1}; ``sample``
draws noise for synthetic observations and baseline perturbations.
"""

from __future__ import annotations

import torch

from tfda.da.devices import randn
from tfda.da.protocols import ObservationError

__all__ = ["DiagonalError", "ObservationError", "log_likelihood"]


def log_likelihood(error: ObservationError, residual: torch.Tensor) -> torch.Tensor:
    """-0.5 r^T R^{-1} r per batch row (constants dropped); residual (batch, *obs_shape)."""
    weighted = error.precision_matvec(residual)
    return -0.5 * (residual * weighted).flatten(1).sum(dim=1)


class DiagonalError:
    """Independent errors with standard deviation ``std`` (a float or a tensor
    broadcastable to the observation shape): R = diag(std^2)."""

    def __init__(self, std: float | torch.Tensor) -> None:
        std_t = torch.as_tensor(std, dtype=torch.float64)
        if not bool(torch.isfinite(std_t).all()) or bool((std_t <= 0).any()):
            raise ValueError(f"std must be finite and > 0, got min {float(std_t.min())}")
        self._std = std_t
        # std per (dtype, device): precision_matvec runs at every sampler step, and a
        # host-to-device copy each time would stall the GPU stream
        self._cache: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    @property
    def std(self) -> torch.Tensor:
        return self._std

    def precision_matvec(self, residual: torch.Tensor) -> torch.Tensor:
        key = (residual.dtype, residual.device)
        if key not in self._cache:
            self._cache[key] = self._std.to(dtype=residual.dtype, device=residual.device).square()
        return residual / self._cache[key]

    def sample(
        self,
        shape: tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        # drawn on the generator's device and moved (da.devices); std joins it there
        noise = randn(shape, generator=generator, dtype=dtype, device=device)
        return noise * self._std.to(dtype=dtype, device=noise.device)

    def __repr__(self) -> str:
        s = self._std
        return f"DiagonalError(std={float(s) if s.numel() == 1 else tuple(s.shape)})"
