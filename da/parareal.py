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

A propagator is any solver ``prop(score, z, grid, schedule) -> z_end``: ``grid``
is a decreasing 1-D time grid, or (batched fine solves) shaped (steps + 1, rows)
with one column of times per row of ``z``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from tfda.da._checks import check_finite, check_time_grid
from tfda.da.sampler import OdeMethod, ScoreFn, StepCallback, ode_step
from tfda.da.schedule import Schedule

Mode = Literal["serial", "batched", "distributed"]
MODES = ("serial", "batched", "distributed")

# Batched mode on CPU: glibc's malloc serves blocks above its mmap threshold (at most
# 32 MiB on 64-bit) with a fresh mmap and unmaps them on free, and trims the heap top
# once more than twice the threshold is free there; every state-sized temporary of a
# larger batch (the score's, the ODE step's) is then page-faulted in afresh. At
# d = 1e5, N = 20, 8 slices (128 MB a batch) the kernel took more time than the
# score and a batched fine evaluation cost 2x a serial one. The batched fine solve
# therefore runs over consecutive groups of slices holding at most this many bytes
# of state (at least one slice a group), where the allocator reuses its memory. The
# iterates and evaluation counts do not depend on the grouping (the score is
# row-wise). Other devices (CUDA's caching allocator) take all slices in one call.
CPU_BATCH_BYTES = 16 << 20


class Propagator(Protocol):
    """A one-slice ODE solver: from ``z`` at ``grid[0]`` to the state at ``grid[-1]``."""

    def __call__(
        self, score: ScoreFn, z: torch.Tensor, grid: torch.Tensor, schedule: Schedule
    ) -> torch.Tensor: ...


def ode_propagator(method: OdeMethod = "euler") -> Propagator:
    """The sampler's Euler/Heun steps (:func:`da.sampler.ode_step`) over ``grid``.

    A 1-D grid is stepped with Python floats, exactly as :func:`da.sampler.sample_ode`
    does; a 2-D grid (steps + 1, rows) gives every row of ``z`` its own times.
    """
    if method not in ("euler", "heun"):
        raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")

    def propagate(
        score: ScoreFn, z: torch.Tensor, grid: torch.Tensor, schedule: Schedule
    ) -> torch.Tensor:
        times = grid.tolist() if grid.ndim == 1 else list(grid.to(z.device).unbind(0))
        for t, t_next in zip(times[:-1], times[1:], strict=True):
            z = ode_step(score, z, t, t_next, schedule, method)
        return z

    return propagate


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
    """Options of :func:`parareal`, as passed to :func:`run_config` (and ``EnSF(parareal=)``).

    ``on_info`` receives the :class:`PararealInfo` of the run (sample_ode returns
    only the tensor).
    """

    n_slices: int
    tol: float = 1e-6
    max_iters: int | None = None
    mode: Mode = "serial"
    coarse: Propagator | None = None
    fine: Propagator | None = None
    coarse_steps: int = 1
    coarse_method: OdeMethod = "euler"
    slice_group: dist.ProcessGroup | None = None
    shard_group: dist.ProcessGroup | None = None
    result_on: Literal["all"] | int = "all"
    progress: bool = False
    on_info: Callable[[PararealInfo], None] | None = field(default=None, compare=False)


class _Counted:
    """Counts score evaluations in units of the full state (rows / n_rows)."""

    def __init__(self, score: ScoreFn, n_rows: int) -> None:
        self.score, self.n_rows, self.rows = score, n_rows, 0

    def __call__(self, z: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        self.rows += z.shape[0]
        return self.score(z, t)

    @property
    def evals(self) -> int:
        return self.rows // self.n_rows


def _validate(
    z: torch.Tensor,
    timesteps: torch.Tensor,
    schedule: Schedule,
    n_slices: int,
    tol: float,
    max_iters: int | None,
    mode: str,
    coarse_steps: int,
    slice_group: dist.ProcessGroup | None,
    result_on: str | int,
) -> tuple[int, int]:
    """All checks before any work; returns (fine steps per slice, iterations allowed)."""
    check_time_grid("timesteps", timesteps)
    check_finite("z", z)
    if z.ndim < 1 or z.shape[0] == 0:
        raise ValueError(
            f"z must have a non-empty leading (member) dimension, got {tuple(z.shape)}"
        )
    if schedule.alpha(float(timesteps[0])) <= 0.0:
        raise ValueError(f"timesteps[0] = {float(timesteps[0])} makes the drift b(t) infinite")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    n_steps = timesteps.numel() - 1
    if not isinstance(n_slices, int) or n_slices < 1:
        raise ValueError(f"n_slices must be a positive integer, got {n_slices!r}")
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
    if not (isinstance(coarse_steps, int) and 1 <= coarse_steps and per_slice % coarse_steps == 0):
        raise ValueError(
            f"coarse_steps = {coarse_steps!r} must be a positive divisor of the {per_slice} "
            "fine steps of a slice"
        )
    if not tol > 0.0:
        raise ValueError(f"tol must be > 0, got {tol}")
    if max_iters is not None and (not isinstance(max_iters, int) or max_iters < 0):
        raise ValueError(f"max_iters must be a non-negative integer or None, got {max_iters!r}")
    iters = n_slices if max_iters is None else min(max_iters, n_slices)
    if mode == "distributed":
        if slice_group is None:
            raise ValueError("mode='distributed' needs slice_group (a torch.distributed group)")
        size = dist.get_world_size(slice_group)
        if size != n_slices:
            raise ValueError(
                f"slice_group has {size} ranks but n_slices = {n_slices}: distributed "
                "Parareal places one slice on each rank of slice_group"
            )
    if result_on != "all" and not (isinstance(result_on, int) and 0 <= result_on < n_slices):
        raise ValueError(f"result_on must be 'all' or a slice rank in [0, {n_slices}), "
                         f"got {result_on!r}")
    return per_slice, iters


def parareal(
    score: ScoreFn,
    z: torch.Tensor,
    timesteps: torch.Tensor,
    schedule: Schedule,
    *,
    n_slices: int,
    tol: float = 1e-6,
    max_iters: int | None = None,
    mode: Mode = "serial",
    coarse: Propagator | None = None,
    fine: Propagator | None = None,
    fine_method: OdeMethod = "euler",
    coarse_steps: int = 1,
    coarse_method: OdeMethod = "euler",
    slice_group: dist.ProcessGroup | None = None,
    shard_group: dist.ProcessGroup | None = None,
    result_on: Literal["all"] | int = "all",
    callback: StepCallback | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, PararealInfo]:
    """Solve the probability-flow ODE (Eq. 9) over ``timesteps`` with Parareal (Algorithm 1).

    Args:
        score: ``score(z, t)``; row-wise for ``mode="batched"`` (module docstring).
        z: the state at ``timesteps[0]``, shaped (member, ...). Distributed: every
            rank of ``slice_group`` passes the same z (its own shard when sharded).
        timesteps: the fine grid, strictly decreasing; its steps split evenly into slices.
        schedule: the alpha/beta schedule.
        n_slices: number of slices n_c.
        tol: stop once max |U^{k+1} - U^k| < tol (absolute, over all boundaries).
        max_iters: at most this many corrections (default and cap: n_slices).
        mode: "serial", "batched" or "distributed".
        coarse, fine: propagators G and F; defaults are ``coarse_steps`` steps of
            ``coarse_method`` and the slice's fine steps of ``fine_method``.
        slice_group: distributed mode: the n_slices ranks, rank i holding slice i.
        shard_group: the ranks holding the other feature shards of the state, if any.
        result_on: "all": every rank returns the final state; an int r: slice rank
            r does, and the other ranks return their own slice's end state.
        callback: called after convergence with (step, t, U) at each slice end
            (distributed: each rank for its own slice).
        progress: tqdm bar over iterations.

    Returns:
        (state at ``timesteps[-1]``, :class:`PararealInfo`).
    """
    per_slice, iters = _validate(z, timesteps, schedule, n_slices, tol, max_iters, mode,
                                 coarse_steps, slice_group, result_on)
    coarse = coarse or ode_propagator(coarse_method)
    fine = fine or ode_propagator(fine_method)
    bounds = list(range(0, timesteps.numel(), per_slice))
    fine_grids = [timesteps[b : b + per_slice + 1] for b in bounds[:-1]]
    coarse_grids = [g[:: per_slice // coarse_steps] for g in fine_grids]
    g_score, f_score = _Counted(score, z.shape[0]), _Counted(score, z.shape[0])
    run = _distributed if mode == "distributed" else _single
    out, iterations, norms, converged, ends = run(
        f_score, g_score, z, schedule, coarse, fine, fine_grids, coarse_grids,
        tol, iters, mode, slice_group, shard_group, result_on, progress,
    )
    fine_evals, coarse_evals = f_score.evals, g_score.evals
    if mode == "distributed":
        counts = torch.tensor([fine_evals, coarse_evals], dtype=torch.int64, device=z.device)
        dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=slice_group)
        fine_evals, coarse_evals = (int(c) for c in counts.tolist())
    if callback is not None:
        for i, u in ends:
            callback(bounds[i + 1] - 1, float(timesteps[bounds[i + 1]]), u)
    info = PararealInfo(iterations, tuple(norms), fine_evals, coarse_evals, converged, per_slice)
    return out, info


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().max().to(torch.float64)


def _batch_groups(active: range, z: torch.Tensor) -> list[range]:
    """The active slices in consecutive groups, one batched fine call each."""
    if z.device.type != "cpu":
        return [active]
    per = max(1, CPU_BATCH_BYTES // max(1, z.numel() * z.element_size()))
    return [active[j : j + per] for j in range(0, len(active), per)]


def _single(f_score, g_score, z, schedule, coarse, fine, fine_grids, coarse_grids,
            tol, iters, mode, slice_group, shard_group, result_on, progress):
    """Serial and batched modes: all slices in this process."""
    del slice_group, result_on
    n_c, n = len(fine_grids), z.shape[0]
    u = [z]
    g_prev: list[torch.Tensor | None] = [None]
    for i in range(n_c):  # U^0 from the coarse sweep alone
        g_prev.append(coarse(g_score, u[i], coarse_grids[i], schedule))
        u.append(g_prev[-1])
    norms: list[float] = []
    converged = False
    bar = tqdm(range(iters), disable=not progress, desc="Parareal", leave=False)
    for k in bar:
        active = range(k, n_c)
        if mode == "batched":
            groups = _batch_groups(active, z)
        else:
            groups = [range(i, i + 1) for i in active]
        f_out: dict[int, torch.Tensor] = {}
        for group in groups:
            if len(group) == 1:
                f_out[group[0]] = fine(f_score, u[group[0]], fine_grids[group[0]], schedule)
                continue
            stacked = torch.cat([u[i] for i in group], dim=0)
            grid = torch.stack([fine_grids[i] for i in group], dim=1)  # (steps+1, slices)
            grid = grid.to(z.device).repeat_interleave(n, dim=1)
            f_out.update(zip(group, fine(f_score, stacked, grid, schedule).split(n), strict=True))
        new = list(u)
        new[k + 1] = f_out[k]  # slice k starts from the exact U_k: its end is exact
        for i in range(k + 1, n_c):
            g = coarse(g_score, new[i], coarse_grids[i], schedule)
            new[i + 1] = g + f_out[i] - g_prev[i + 1]
            g_prev[i + 1] = g
        norm = max(float(_max_abs(new[i], u[i])) for i in range(k + 1, n_c + 1))
        if shard_group is not None:
            nt = torch.tensor(norm, dtype=torch.float64, device=z.device)
            dist.all_reduce(nt, op=dist.ReduceOp.MAX, group=shard_group)
            norm = float(nt)
        u = new
        norms.append(norm)
        bar.set_postfix(update=f"{norm:.2e}")
        if norm < tol or k + 1 == n_c:
            converged = True
            break
    ends = [(i, u[i + 1]) for i in range(n_c)]
    return u[n_c], len(norms), norms, converged, ends


def _distributed(f_score, g_score, z, schedule, coarse, fine, fine_grids, coarse_grids,
                 tol, iters, mode, slice_group, shard_group, result_on, progress):
    """Slice i on rank i of slice_group; the coarse sweep is a send/recv chain."""
    del mode
    n_c = len(fine_grids)
    me = dist.get_rank(slice_group)
    prev_rank = dist.get_global_rank(slice_group, me - 1) if me > 0 else None
    next_rank = dist.get_global_rank(slice_group, me + 1) if me + 1 < n_c else None

    def receive() -> torch.Tensor:
        buf = torch.empty_like(z)
        dist.recv(buf, src=prev_rank, group=slice_group)
        return buf

    def send(x: torch.Tensor) -> None:
        if next_rank is not None:
            dist.send(x.contiguous(), dst=next_rank, group=slice_group)

    start = z if me == 0 else receive()  # U^0_me: coarse sweep along the chain
    g_prev = coarse(g_score, start, coarse_grids[me], schedule)
    end = g_prev
    send(end)
    norms: list[float] = []
    converged = False
    bar = tqdm(range(iters), disable=not progress or me != 0, desc="Parareal", leave=False)
    for k in bar:
        local = torch.zeros((), dtype=torch.float64, device=z.device)
        if me >= k:
            f_end = fine(f_score, start, fine_grids[me], schedule)
            if me == k:
                new_end = f_end
            else:
                start = receive()
                g = coarse(g_score, start, coarse_grids[me], schedule)
                new_end = g + f_end - g_prev
                g_prev = g
            local = _max_abs(new_end, end)
            end = new_end
            if me + 1 < n_c and me + 1 > k:
                send(end)
        dist.all_reduce(local, op=dist.ReduceOp.MAX, group=slice_group)
        if shard_group is not None:
            dist.all_reduce(local, op=dist.ReduceOp.MAX, group=shard_group)
        norm = float(local)
        norms.append(norm)
        bar.set_postfix(update=f"{norm:.2e}")
        if norm < tol or k + 1 == n_c:
            converged = True
            break
    last = dist.get_global_rank(slice_group, n_c - 1)
    if result_on == "all":
        out = end.contiguous().clone()
        dist.broadcast(out, src=last, group=slice_group)
    elif result_on == n_c - 1:
        out = end
    elif me == result_on:
        out = torch.empty_like(z)
        dist.recv(out, src=last, group=slice_group)
    else:
        out = end
        if me == n_c - 1:
            dist.send(end.contiguous(), dst=dist.get_global_rank(slice_group, result_on),
                      group=slice_group)
    return out, len(norms), norms, converged, [(me, end)]


def run_config(
    config: ParallelConfig,
    score: ScoreFn,
    z: torch.Tensor,
    timesteps: torch.Tensor,
    schedule: Schedule,
    *,
    fine_method: OdeMethod = "euler",
    callback: StepCallback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """:func:`parareal` with the options of ``config``; the info goes to ``config.on_info``."""
    out, info = parareal(
        score, z, timesteps, schedule,
        n_slices=config.n_slices, tol=config.tol, max_iters=config.max_iters,
        mode=config.mode, coarse=config.coarse, fine=config.fine, fine_method=fine_method,
        coarse_steps=config.coarse_steps, coarse_method=config.coarse_method,
        slice_group=config.slice_group, shard_group=config.shard_group,
        result_on=config.result_on, callback=callback,
        progress=progress and config.progress,
    )
    if config.on_info is not None:
        config.on_info(info)
    if not bool(torch.isfinite(out).all()):
        raise FloatingPointError(
            f"parareal produced non-finite values by t = {float(timesteps[-1])}; "
            "the score or the grid's smallest time is the usual cause")
    return out
