"""Lorenz-96 (Lorenz 1996), the standard toy model for testing ensemble filters.

    dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F,   i = 0..nx-1 (periodic),

integrated with classical RK4 substeps of ``rk4_dt`` model time units; one
:meth:`Lorenz96.step` advances ``dt`` model time units (``dt / rk4_dt`` substeps).

Time convention (Lorenz 1996): 1 model time unit ~ 5 days, so 0.05 = 6 h, the
analysis interval of the Sakov & Oke (2008) setting. ``Lorenz96.dt`` is that
datetime.timedelta; ``Lorenz96.time_step`` is the step in model time units.

It satisfies the ForecastModel protocol of docs/design.md section 3 in its simplest
form: one variable "x", a one-row "grid" (``lat`` = [0.]) whose ``lon`` is the
ring index, and ``step`` on (batch, 1, 1, nx) tensors or plain (batch, nx).
"""

from __future__ import annotations

import datetime as _dt

import torch

from tfda.da.devices import randn

#: Lorenz (1996): one model time unit corresponds to about five days.
HOURS_PER_TIME_UNIT = 120.0


def tendency(x: torch.Tensor, forcing: float) -> torch.Tensor:
    """dx/dt of Lorenz-96 along the last dimension (periodic)."""
    return (torch.roll(x, -1, -1) - torch.roll(x, 2, -1)) * torch.roll(x, 1, -1) - x + forcing


class Lorenz96:
    """Lorenz-96 with ``nx`` variables, forcing F, RK4, batched over members."""

    variables: tuple[str, ...] = ("x",)

    def __init__(
        self,
        nx: int = 40,
        forcing: float = 8.0,
        dt: float = 0.05,
        rk4_dt: float = 0.01,
        *,
        device: torch.device | str = "cpu",
    ) -> None:
        if nx < 4:
            raise ValueError(f"nx must be >= 4 for the Lorenz-96 stencil, got {nx}")
        if not (dt > 0 and rk4_dt > 0):
            raise ValueError(f"dt and rk4_dt must be > 0, got dt={dt}, rk4_dt={rk4_dt}")
        substeps = dt / rk4_dt
        if abs(substeps - round(substeps)) > 1e-9 * max(1.0, substeps):
            raise ValueError(f"dt={dt} must be a whole multiple of rk4_dt={rk4_dt}")
        self.nx = int(nx)
        self.forcing = float(forcing)
        self.time_step = float(dt)
        self.rk4_dt = float(rk4_dt)
        self.substeps = int(round(substeps))
        self.device = torch.device(device)
        self.lat = torch.zeros(1, dtype=torch.float64, device=self.device)
        self.lon = torch.arange(self.nx, dtype=torch.float64, device=self.device)

    @property
    def dt(self) -> _dt.timedelta:
        """The step as a timedelta (1 model time unit = 5 days, Lorenz 1996)."""
        return _dt.timedelta(hours=self.time_step * HOURS_PER_TIME_UNIT)

    def to(self, device: torch.device | str) -> Lorenz96:
        self.device = torch.device(device)
        self.lat, self.lon = self.lat.to(self.device), self.lon.to(self.device)
        return self

    def _rk4(self, x: torch.Tensor) -> torch.Tensor:
        h, f = self.rk4_dt, self.forcing
        k1 = tendency(x, f)
        k2 = tendency(x + 0.5 * h * k1, f)
        k3 = tendency(x + 0.5 * h * k2, f)
        k4 = tendency(x + h * k3, f)
        return x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """Advance ``dt`` model time units; x is (batch, 1, 1, nx) or (batch, nx)."""
        if x.shape[-1] != self.nx or x.ndim not in (2, 4) or (
            x.ndim == 4 and tuple(x.shape[1:3]) != (1, 1)
        ):
            raise ValueError(
                f"x must be shaped (batch, 1, 1, {self.nx}) or (batch, {self.nx}), "
                f"got {tuple(x.shape)}"
            )
        for _ in range(self.substeps):
            x = self._rk4(x)
        return x

    def spin_up(
        self,
        n_steps: int,
        *,
        batch: int = 1,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> torch.Tensor:
        """A state on the attractor: F plus a small random kick, run ``n_steps`` steps.

        Returns (batch, nx).
        """
        # drawn on the generator's device, then moved (da.devices)
        x = self.forcing + 0.01 * randn((batch, self.nx), generator=generator, dtype=dtype,
                                        device=self.device)
        for _ in range(n_steps):
            x = self.step(x)
        return x

    def __repr__(self) -> str:
        return (
            f"Lorenz96(nx={self.nx}, forcing={self.forcing}, dt={self.time_step}, "
            f"rk4_dt={self.rk4_dt})"
        )

