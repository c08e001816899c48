"""Parareal: the probability-flow ODE solved parallel in time.

Rafid et al., Algorithm 1, after Lions, Maday & Turinici (2001). The grid
``timesteps`` (1 -> 0) is cut into ``n_slices`` slices of equal numbers of fine
steps. With a coarse propagator G and a fine propagator F over one slice, the
boundary states U_0 = z, U_1, ..., U_{n_c} are iterated as

    U^0_{i+1}     = G(U^0_i)                                   (coarse sweep)
    U^{k+1}_{i+1} = G(U^{k+1}_i) + F(U^k_i) - G(U^k_i)          (correction)

until max_i |U^{k+1}_i - U^k_i| < tol. After k iterations the first k slices are
exact (U_k equals the serial fine solve), so iteration k recomputes only slices
k..n_c-1, and the boundary U_{k+1} is set to F(U_k) itself (the correction is
exactly F there; this also makes n_c iterations reproduce the serial fine solve
to the last bit in serial mode).

Three execution modes give the same iterates:

* ``serial``: loops over slices -- the reference.
* ``batched``: the fine solves of one iteration are one batched computation on
  one device: the active slices' states are concatenated along dim 0 and every row
  carries its own time (ParaDiGMS, Shih et al. 2023). This needs a *row-wise*
  score: row r of ``score(z, t)`` depends only on row r of ``z`` and ``t[r]``.
  :func:`da.score.mixture_score`, :func:`da.score.paired_score` and the EnSF
  posterior score are row-wise. On CPU the active slices go in groups of at most
  :data:`CPU_BATCH_BYTES` of state per call (see there); other devices take them
  all in one call.
* ``distributed``: slice i lives on rank i of ``slice_group``; fine solves run in
  parallel and the coarse sweep is a chain in which rank i receives U_i from rank
  i-1 and sends U_{i+1} to rank i+1. With a feature-sharded state, each rank holds
  one shard, the score reduces over its own shard group, and the update norm is
  reduced over ``shard_group`` so that every shard stops at the same iteration.

The options live in one frozen :class:`ParallelConfig`; called as
``config(score, z, timesteps, schedule)`` it is a sampler of its own (the
:class:`tfda.da.sampler.Sampler` that ``EnSF(sampler=...)`` takes). The modes and
propagators are in :mod:`tfda.da.parareal_modes`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal

import torch
import torch.distributed as dist

from tfda.da._checks import check_finite, check_time_grid
from tfda.da.parareal_modes import (
    CPU_BATCH_BYTES,
    Counted,
    Propagator,
    Slices,
    ode_propagator,
    run_distributed,
    run_single,
)
from tfda.da.sampler import OdeMethod, ScoreFn, StepCallback
from tfda.da.schedule import Schedule

__all__ = ["CPU_BATCH_BYTES", "MODES", "ParallelConfig", "PararealInfo", "Propagator",
           "ode_propagator", "parareal"]

Mode = Literal["serial", "batched", "distributed"]
MODES = ("serial", "batched", "distributed")


@dataclass(frozen=True)
class PararealInfo:
    """What a Parareal run did.

    iterations: corrections made (K); K = n_slices reproduces the serial fine solve.
    update_norms: max |U^{k+1} - U^k| over the boundaries, one per iteration.
    fine_evals / coarse_evals: score evaluations of the whole state (N rows) made by
        F and G, summed over slices and ranks (a batched call over s slices counts s).
    converged: the tolerance was met or every slice is exact.
    fine_steps_per_slice: fine steps in one slice (the critical path of one
        iteration is that many fine steps).
    """

    iterations: int
    update_norms: tuple[float, ...]
    fine_evals: int
    coarse_evals: int
    converged: bool
    fine_steps_per_slice: int = 0


@dataclass(frozen=True)
class ParallelConfig:
    """Every option of :func:`parareal`; called, a sampler of its own (EnSF's ``sampler=``).

    n_slices: number of slices n_c.
    tol: stop once max |U^{k+1} - U^k| < tol (absolute, over all boundaries).
    max_iters: at most this many corrections (default and cap: n_slices).
    mode: "serial", "batched" or "distributed" (module docstring).
    coarse, fine: propagators G and F; defaults are ``coarse_steps`` steps of
        ``coarse_method`` and the slice's fine steps of ``fine_method``.
    slice_group: distributed mode: the n_slices ranks, rank i holding slice i.
    shard_group: the ranks holding the other feature shards of the state, if any.
    result_on: "all": every rank returns the final state; an int r: slice rank r
        does, and the other ranks return their own slice's end state.
    progress: tqdm bar over iterations.
    on_info: receives the :class:`PararealInfo` of each run made through ``__call__``
        (a sampler returns only the tensor).
    """

    # what EnSF asks of a sampler (tfda.da.sampler.Sampler): a deterministic ODE map
    # whose slices may be stacked with one time per row (a row-wise score)
    ode: ClassVar[bool] = True
    row_wise: ClassVar[bool] = True

    n_slices: int
    tol: float = 1e-6
    max_iters: int | None = None
    mode: Mode = "serial"
    coarse: Propagator | None = None
    fine: Propagator | None = None
    fine_method: OdeMethod = "euler"
    coarse_steps: int = 1
    coarse_method: OdeMethod = "euler"
    slice_group: dist.ProcessGroup | None = None
    shard_group: dist.ProcessGroup | None = None
    result_on: Literal["all"] | int = "all"
    progress: bool = False
    on_info: Callable[[PararealInfo], None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.n_slices, int) or self.n_slices < 1:
            raise ValueError(f"n_slices must be a positive integer, got {self.n_slices!r}")
        if not self.tol > 0.0:
            raise ValueError(f"tol must be > 0, got {self.tol}")
        if self.max_iters is not None and (not isinstance(self.max_iters, int)
                                           or self.max_iters < 0):
            raise ValueError("max_iters must be a non-negative integer or None, got "
                             f"{self.max_iters!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not (isinstance(self.coarse_steps, int) and self.coarse_steps >= 1):
            raise ValueError(f"coarse_steps must be a positive integer, got {self.coarse_steps!r}")
        for name in ("fine_method", "coarse_method"):
            if getattr(self, name) not in ("euler", "heun"):
                raise ValueError(f"{name} must be 'euler' or 'heun', got {getattr(self, name)!r}")
        if self.result_on != "all" and not (isinstance(self.result_on, int)
                                            and 0 <= self.result_on < self.n_slices):
            raise ValueError(f"result_on must be 'all' or a slice rank in [0, {self.n_slices}), "
                             f"got {self.result_on!r}")

    @property
    def steps_multiple(self) -> int:
        """The fine grid's steps must split into ``n_slices`` equal slices."""
        return self.n_slices

    def __call__(self, score: ScoreFn, z: torch.Tensor, timesteps: torch.Tensor,
                 schedule: Schedule, *, generator: torch.Generator | None = None,
                 progress: bool = False) -> torch.Tensor:
        """:func:`parareal` as a sampler: the state at ``timesteps[-1]``; the info goes to
        ``on_info``. ``generator`` is unused (the ODE map is deterministic)."""
        del generator
        config = self if progress or not self.progress else replace(self, progress=False)
        out, info = parareal(score, z, timesteps, schedule, config=config)
        if self.on_info is not None:
            self.on_info(info)
        if not bool(torch.isfinite(out).all()):
            raise FloatingPointError(
                f"parareal produced non-finite values by t = {float(timesteps[-1])}; "
                "the score or the grid's smallest time is the usual cause")
        return out


def _validate(z: torch.Tensor, timesteps: torch.Tensor, schedule: Schedule,
              config: ParallelConfig) -> tuple[int, int]:
    """The checks that need the problem, before any work; returns (fine steps per
    slice, iterations allowed). The options alone were checked by ParallelConfig."""
    check_time_grid("timesteps", timesteps)
    check_finite("z", z)
    if z.ndim < 1 or z.shape[0] == 0:
        raise ValueError(
            f"z must have a non-empty leading (member) dimension, got {tuple(z.shape)}"
        )
    if schedule.alpha(float(timesteps[0])) <= 0.0:
        raise ValueError(f"timesteps[0] = {float(timesteps[0])} makes the drift b(t) infinite")
    n_steps, n_slices = timesteps.numel() - 1, config.n_slices
    if n_slices > n_steps:
        raise ValueError(
            f"n_slices = {n_slices} is larger than the number of fine steps ({n_steps})"
        )
    if n_steps % n_slices:
        raise ValueError(
            f"the fine grid is not aligned with the slice boundaries: {n_steps} fine steps "
            f"do not split into n_slices = {n_slices} equal slices"
        )
    per_slice = n_steps // n_slices
    if per_slice % config.coarse_steps:
        raise ValueError(
            f"coarse_steps = {config.coarse_steps!r} must be a positive divisor of the "
            f"{per_slice} fine steps of a slice"
        )
    if config.mode == "distributed":
        if config.slice_group is None:
            raise ValueError("mode='distributed' needs slice_group (a torch.distributed group)")
        size = dist.get_world_size(config.slice_group)
        if size != n_slices:
            raise ValueError(
                f"slice_group has {size} ranks but n_slices = {n_slices}: distributed "
                "Parareal places one slice on each rank of slice_group"
            )
    iters = n_slices if config.max_iters is None else min(config.max_iters, n_slices)
    return per_slice, iters


def parareal(
    score: ScoreFn,
    z: torch.Tensor,
    timesteps: torch.Tensor,
    schedule: Schedule,
    *,
    config: ParallelConfig,
    callback: StepCallback | None = None,
) -> tuple[torch.Tensor, PararealInfo]:
    """Solve the probability-flow ODE (Eq. 9) over ``timesteps`` with Parareal (Algorithm 1).

    Args:
        score: ``score(z, t)``; row-wise for ``mode="batched"`` (module docstring).
        z: the state at ``timesteps[0]``, shaped (member, ...). Distributed: every
            rank of ``slice_group`` passes the same z (its own shard when sharded).
        timesteps: the fine grid, strictly decreasing; its steps split evenly into slices.
        schedule: the alpha/beta schedule.
        config: the options (:class:`ParallelConfig`).
        callback: called after convergence with (step, t, U) at each slice end
            (distributed: each rank for its own slice).

    Returns:
        (state at ``timesteps[-1]``, :class:`PararealInfo`).
    """
    per_slice, iters = _validate(z, timesteps, schedule, config)
    bounds = list(range(0, timesteps.numel(), per_slice))
    fine_grids = [timesteps[b : b + per_slice + 1] for b in bounds[:-1]]
    slices = Slices(
        f_score=Counted(score, z.shape[0]), g_score=Counted(score, z.shape[0]),
        coarse=config.coarse or ode_propagator(config.coarse_method),
        fine=config.fine or ode_propagator(config.fine_method),
        fine_grids=fine_grids,
        coarse_grids=[g[:: per_slice // config.coarse_steps] for g in fine_grids],
        schedule=schedule)
    if config.mode == "distributed":
        out, iterations, norms, converged, ends = run_distributed(
            slices, z, tol=config.tol, iters=iters, slice_group=config.slice_group,
            shard_group=config.shard_group, result_on=config.result_on,
            progress=config.progress)
    else:
        out, iterations, norms, converged, ends = run_single(
            slices, z, tol=config.tol, iters=iters, batched=config.mode == "batched",
            shard_group=config.shard_group, progress=config.progress)
    fine_evals, coarse_evals = slices.f_score.evals, slices.g_score.evals
    if config.mode == "distributed":
        counts = torch.tensor([fine_evals, coarse_evals], dtype=torch.int64, device=z.device)
        dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=config.slice_group)
        fine_evals, coarse_evals = (int(c) for c in counts.tolist())
    if callback is not None:
        for i, u in ends:
            callback(bounds[i + 1] - 1, float(timesteps[bounds[i + 1]]), u)
    info = PararealInfo(iterations, tuple(norms), fine_evals, coarse_evals, converged, per_slice)
    return out, info
