"""The contracts ``tfda.da`` consumes, defined once.

The filters, the cycle and the samplers work on anything that has these shapes;
``tfda.observations`` (operators, error models), ``tfda.models`` (forecast models)
and ``tfda.experiments`` (checkpoints) implement them and import them from here,
so ``da`` never imports the packages that implement its contracts.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class ObservationError(Protocol):
    """Gaussian observation error N(0, R) on observations shaped ``obs_shape``."""

    @property
    def std(self) -> torch.Tensor:
        """Marginal standard deviation, broadcastable to ``obs_shape``."""
        ...

    def precision_matvec(self, residual: torch.Tensor) -> torch.Tensor:
        """R^{-1} r for r shaped (batch, *obs_shape); differentiable."""
        ...

    def sample(
        self,
        shape: tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Draw noise of ``shape`` = (batch, *obs_shape) with ``generator`` on the
        generator's own device, returned on ``device`` (default: where it was drawn);
        see :mod:`tfda.da.devices` for the policy."""
        ...


@runtime_checkable
class ObservationOperator(Protocol):
    """A differentiable map from states to observations with its error model.

    ``locations`` (optional attribute, None when absent) gives the observation
    positions used by a localised filter: for a 1-D ring, a float index per
    observation; for lat/lon grids, an (n_obs, 2) tensor of (lat, lon) degrees.
    """

    error: ObservationError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """H(x) for x (member, *state_shape) -> (member, *obs_shape)."""
        ...


class Dynamics(Protocol):
    """What the cycle needs of a forecast model: one step on (member, *state_shape)."""

    def step(self, x: torch.Tensor) -> torch.Tensor: ...


class Analysis(Protocol):
    """An analysis step: posterior ensemble from the prior ensemble and observations.

    Every filter takes the cycle's ``generator`` (a deterministic one ignores it).
    """

    def __call__(self, prior: torch.Tensor, y: torch.Tensor,
                 obs_operator: ObservationOperator, *,
                 generator: torch.Generator | None = None) -> torch.Tensor: ...


class Checkpointer(Protocol):
    """Where a cycle keeps its state between cycles (atomically)."""

    def save(self, state: dict[str, Any]) -> None: ...

    def load(self) -> dict[str, Any] | None: ...
