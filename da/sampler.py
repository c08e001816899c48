"""Reverse-time samplers for the training-free diffusion model.

Each sampler is a short function over a score callable ``score(z, t) -> tensor``
shaped like ``z`` (k-diffusion's ``sampling.py`` is the model), integrating from
``timesteps[0]`` (usually 1) down to ``timesteps[-1]`` (> 0):

* :func:`sample_sde` -- Euler-Maruyama on the backward SDE, Rafid et al. Eq. (6):
  ``z <- z - [b z - sigma^2 S(z, t)] dt + sigma sqrt(dt) xi``.
* :func:`sample_ode` -- the probability-flow ODE, Eq. (9):
  ``dz/dt = b z - 0.5 sigma^2 S(z, t)``, with Euler or Heun steps.

``t`` passed to the score is a float for the plain samplers; Parareal passes a
tensor with one time per row, which :func:`ode_velocity` and the estimators of
:mod:`da.score` accept.

:class:`Sampler` is what a filter takes to run one of them: :class:`SDE`,
:class:`ODE` (with its step), :class:`tfda.da.parareal.ParallelConfig` (the ODE
parallel in time), or any object of that shape; :func:`as_sampler` also accepts the
shortcuts ``"sde"`` and ``"ode"`` that configuration files use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol, runtime_checkable

import torch
from tqdm.auto import tqdm

from tfda.da._checks import check_finite, check_time_grid
from tfda.da.devices import randn_like
from tfda.da.schedule import Schedule

ScoreFn = Callable[[torch.Tensor, "float | torch.Tensor"], torch.Tensor]
NoiseFn = Callable[[int, torch.Tensor], torch.Tensor]
OdeMethod = Literal["euler", "heun"]


class StepCallback(Protocol):
    def __call__(self, step: int, t: float, z: torch.Tensor) -> None: ...


def time_grid(
    n_steps: int,
    *,
    t_start: float = 1.0,
    t_end: float = 1e-3,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Uniform grid of ``n_steps`` steps from ``t_start`` down to ``t_end`` (inclusive)."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    grid = torch.linspace(t_start, t_end, n_steps + 1, dtype=dtype)
    check_time_grid("timesteps", grid)
    return grid


def _broadcast(coef: float | torch.Tensor, z: torch.Tensor) -> float | torch.Tensor:
    """A per-row coefficient (N,) reshaped to (N, 1, ..., 1) against z (N, ...)."""
    if isinstance(coef, torch.Tensor) and coef.ndim > 0:
        return coef.to(z.dtype).reshape(coef.shape + (1,) * (z.ndim - coef.ndim))
    return float(coef)


def _check_start(schedule: Schedule, t0: float) -> None:
    if schedule.alpha(t0) <= 0.0:
        raise ValueError(
            f"timesteps[0] = {t0} makes alpha_t = 0 and the drift b(t) infinite; "
            "start below 1 or use a Schedule with eps_a > 0"
        )


def ode_velocity(
    score: ScoreFn, z: torch.Tensor, t: float | torch.Tensor, schedule: Schedule
) -> torch.Tensor:
    """Right-hand side of the probability-flow ODE, Eq. (9): b(t) z - 0.5 sigma^2(t) S(z, t)."""
    b = _broadcast(schedule.drift(t), z)
    s2 = _broadcast(schedule.diffusion2(t), z)
    return b * z - 0.5 * s2 * score(z, t)


def ode_step(
    score: ScoreFn,
    z: torch.Tensor,
    t: float | torch.Tensor,
    t_next: float | torch.Tensor,
    schedule: Schedule,
    method: OdeMethod = "euler",
) -> torch.Tensor:
    """One backward step of the probability-flow ODE from ``t`` to ``t_next`` < ``t``.

    ``t`` and ``t_next`` may be per-row tensors (Parareal's batched fine solves).
    """
    h = _broadcast(t - t_next, z)
    v = ode_velocity(score, z, t, schedule)
    z_euler = z - h * v
    if method == "euler":
        return z_euler
    if method == "heun":
        return z - 0.5 * h * (v + ode_velocity(score, z_euler, t_next, schedule))
    raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")


def _finish(name: str, z: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    if not bool(torch.isfinite(z).all()):
        raise FloatingPointError(
            f"{name} produced non-finite values by t = {float(timesteps[-1])}; "
            "the score or the grid's smallest time is the usual cause"
        )
    return z


def sample_sde(
    score: ScoreFn,
    z: torch.Tensor,
    timesteps: torch.Tensor,
    schedule: Schedule,
    *,
    generator: torch.Generator | None = None,
    noise: NoiseFn | None = None,
    callback: StepCallback | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Euler-Maruyama on the backward SDE, Rafid et al. Eq. (6).

    Args:
        score: ``score(z, t)``, shaped like ``z``.
        z: starting points at ``timesteps[0]`` (usually standard normal at t = 1).
        timesteps: strictly decreasing times in (0, 1].
        schedule: the alpha/beta schedule.
        generator: random source for the Brownian increments.
        noise: ``noise(step, z) -> xi`` overriding the default N(0, I) draw (a
            sharded run draws the single-process noise and keeps its own shard).
        callback: called after every step with (step, t_next, z).
        progress: show a tqdm bar.
    """
    check_time_grid("timesteps", timesteps)
    check_finite("z", z)
    _check_start(schedule, float(timesteps[0]))
    times = timesteps.tolist()
    # The state and the drift live in two buffers updated in place, with the operations
    # of Eq. (6) in the same order as the expression
    #     z - (b z - s2 S) dt + sqrt(s2 dt) xi,
    # so the numbers are those of the out-of-place form; the score's output and the
    # noise are the only fresh state-sized tensors per step (the default noise is drawn
    # into a third buffer). The caller's z is never written.
    z = z.clone()
    drift = torch.empty_like(z)
    scratch = torch.empty_like(z)
    for k in tqdm(range(len(times) - 1), disable=not progress, desc="SDE", leave=False):
        t, t_next = times[k], times[k + 1]
        dt = t - t_next
        s2 = schedule.diffusion2(t)
        torch.mul(score(z, t), s2, out=scratch)
        torch.mul(z, schedule.drift(t), out=drift).sub_(scratch).mul_(dt)
        xi = noise(k, z) if noise is not None else _draw_into(scratch, generator)
        z.sub_(drift).add_(torch.mul(xi, (s2 * dt) ** 0.5, out=scratch))
        if callback is not None:
            callback(k, t_next, z.clone())  # the callback may keep it; z is rewritten
    return _finish("sample_sde", z, timesteps)


def _draw_into(buffer: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """N(0, I) into ``buffer`` when the generator lives on its device (no allocation);
    otherwise drawn on the generator's device and copied in (da.devices)."""
    if generator is None or torch.device(generator.device) == buffer.device:
        return torch.randn(buffer.shape, generator=generator, dtype=buffer.dtype,
                           device=buffer.device, out=buffer)
    return buffer.copy_(randn_like(buffer, generator))


def sample_ode(
    score: ScoreFn,
    z: torch.Tensor,
    timesteps: torch.Tensor,
    schedule: Schedule,
    *,
    method: OdeMethod = "euler",
    callback: StepCallback | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """The probability-flow ODE, Rafid et al. Eq. (9), with Euler or Heun steps.

    Args are those of :func:`sample_sde`; ``method`` picks the step. The map from
    ``z`` to the result is deterministic, which is what Parareal needs: the same ODE
    parallel in time is :class:`tfda.da.parareal.ParallelConfig` (Algorithm 1), a
    sampler of its own over the same steps (:func:`ode_step`).
    """
    check_time_grid("timesteps", timesteps)
    check_finite("z", z)
    _check_start(schedule, float(timesteps[0]))
    times = timesteps.tolist()
    if method != "euler":
        for k in tqdm(range(len(times) - 1), disable=not progress, desc="ODE", leave=False):
            z = ode_step(score, z, times[k], times[k + 1], schedule, method)
            if callback is not None:
                callback(k, times[k + 1], z)
        return _finish("sample_ode", z, timesteps)
    # Euler in place: z - h (b z - 0.5 s2 S) with the operations of ode_step in the same
    # order, so the numbers are its own; the caller's z is never written.
    z = z.clone()
    v = torch.empty_like(z)
    scratch = torch.empty_like(z)
    for k in tqdm(range(len(times) - 1), disable=not progress, desc="ODE", leave=False):
        t, t_next = times[k], times[k + 1]
        torch.mul(score(z, t), 0.5 * float(schedule.diffusion2(t)), out=scratch)
        torch.mul(z, float(schedule.drift(t)), out=v).sub_(scratch)
        z.sub_(v.mul_(float(t - t_next)))
        if callback is not None:
            callback(k, t_next, z.clone())  # the callback may keep it; z is rewritten
    return _finish("sample_ode", z, timesteps)


@runtime_checkable
class Sampler(Protocol):
    """A reverse-time sampler: ``sampler(score, z, timesteps, schedule, *, generator,
    progress)`` returns the state at ``timesteps[-1]``.

    ode: it integrates the probability-flow ODE (Eq. 9), a deterministic map (a
        filter's stable step sizes then use the ODE's bound, :mod:`da.stability`).
    row_wise: it may stack copies of the rows and pass one time per row, so the score
        must be row-wise (Parareal).
    steps_multiple: the grid's step count must be a multiple of this (a filter pads
        its grid); 1 for any grid.
    """

    ode: bool
    row_wise: bool

    @property
    def steps_multiple(self) -> int: ...

    def __call__(self, score: ScoreFn, z: torch.Tensor, timesteps: torch.Tensor,
                 schedule: Schedule, *, generator: torch.Generator | None = None,
                 progress: bool = False) -> torch.Tensor: ...


@dataclass(frozen=True)
class SDE:
    """Euler-Maruyama on the backward SDE (Eq. 6), :func:`sample_sde`."""

    ode: ClassVar[bool] = False
    row_wise: ClassVar[bool] = False
    steps_multiple: ClassVar[int] = 1

    def __call__(self, score: ScoreFn, z: torch.Tensor, timesteps: torch.Tensor,
                 schedule: Schedule, *, generator: torch.Generator | None = None,
                 progress: bool = False) -> torch.Tensor:
        return sample_sde(score, z, timesteps, schedule, generator=generator,
                          progress=progress)


@dataclass(frozen=True)
class ODE:
    """The probability-flow ODE (Eq. 9) with ``method`` steps, :func:`sample_ode`."""

    method: OdeMethod = "euler"

    ode: ClassVar[bool] = True
    row_wise: ClassVar[bool] = False
    steps_multiple: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if self.method not in ("euler", "heun"):
            raise ValueError(f"method must be 'euler' or 'heun', got {self.method!r}")

    def __call__(self, score: ScoreFn, z: torch.Tensor, timesteps: torch.Tensor,
                 schedule: Schedule, *, generator: torch.Generator | None = None,
                 progress: bool = False) -> torch.Tensor:
        del generator  # deterministic
        return sample_ode(score, z, timesteps, schedule, method=self.method, progress=progress)


SHORTCUTS: dict[str, Sampler] = {"sde": SDE(), "ode": ODE()}


def as_sampler(value: str | Sampler) -> Sampler:
    """``value`` as a :class:`Sampler`: ``"sde"`` and ``"ode"`` (Euler steps) name
    :class:`SDE` and :class:`ODE`; a sampler object is returned as it is."""
    if isinstance(value, str):
        if value not in SHORTCUTS:
            raise ValueError(f"sampler must be 'sde', 'ode' or a Sampler, got {value!r}")
        return SHORTCUTS[value]
    if not isinstance(value, Sampler):
        raise ValueError(f"sampler must be 'sde', 'ode' or a Sampler (SDE(), ODE('heun'), "
                         f"a ParallelConfig), got {value!r}")
    return value
