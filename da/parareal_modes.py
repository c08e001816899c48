"""Parareal's execution modes and propagators (:func:`tfda.da.parareal.parareal` runs them).

* :func:`run_single`: the ``serial`` (a loop over slices, the reference) and
  ``batched`` modes (the active slices' fine solves stacked along dim 0, one time per
  row, ParaDiGMS, Shih et al. 2023) in one process;
* :func:`run_distributed`: slice i on rank i of the slice group, the coarse sweep a
  send/recv chain (Rafid et al., Algorithm 1).

A propagator is any solver ``prop(score, z, grid, schedule) -> z_end``: ``grid`` is
a decreasing 1-D time grid, or (batched fine solves) shaped (steps + 1, rows) with one
column of times per row of ``z``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from tfda.da.sampler import OdeMethod, ScoreFn, ode_step
from tfda.da.schedule import Schedule

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


class Counted:
    """Counts score evaluations in units of the full state (rows / n_rows)."""

    def __init__(self, score: ScoreFn, n_rows: int) -> None:
        self.score, self.n_rows, self.rows = score, n_rows, 0

    def __call__(self, z: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        self.rows += z.shape[0]
        return self.score(z, t)

    @property
    def evals(self) -> int:
        return self.rows // self.n_rows


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().max().to(torch.float64)


def _batch_groups(active: range, z: torch.Tensor) -> list[range]:
    """The active slices in consecutive groups, one batched fine call each."""
    if z.device.type != "cpu":
        return [active]
    per = max(1, CPU_BATCH_BYTES // max(1, z.numel() * z.element_size()))
    return [active[j : j + per] for j in range(0, len(active), per)]


@dataclass(frozen=True)
class Slices:
    """One run's work: the counted scores, the propagators G and F, each slice's grids."""

    f_score: Counted
    g_score: Counted
    coarse: Propagator
    fine: Propagator
    fine_grids: list[torch.Tensor]
    coarse_grids: list[torch.Tensor]
    schedule: Schedule


Result = tuple[torch.Tensor, int, list[float], bool, list[tuple[int, torch.Tensor]]]
"""(state at the end, iterations, update norms, converged, (slice, end state) pairs)."""


def run_single(s: Slices, z: torch.Tensor, *, tol: float, iters: int, batched: bool,
               shard_group: dist.ProcessGroup | None, progress: bool) -> Result:
    """Serial and batched modes: all slices in this process."""
    n_c, n = len(s.fine_grids), z.shape[0]
    u = [z]
    g_prev: list[torch.Tensor | None] = [None]
    for i in range(n_c):  # U^0 from the coarse sweep alone
        g_prev.append(s.coarse(s.g_score, u[i], s.coarse_grids[i], s.schedule))
        u.append(g_prev[-1])
    norms: list[float] = []
    converged = False
    bar = tqdm(range(iters), disable=not progress, desc="Parareal", leave=False)
    for k in bar:
        active = range(k, n_c)
        if batched:
            groups = _batch_groups(active, z)
        else:
            groups = [range(i, i + 1) for i in active]
        f_out: dict[int, torch.Tensor] = {}
        for group in groups:
            if len(group) == 1:
                i = group[0]
                f_out[i] = s.fine(s.f_score, u[i], s.fine_grids[i], s.schedule)
                continue
            stacked = torch.cat([u[i] for i in group], dim=0)
            grid = torch.stack([s.fine_grids[i] for i in group], dim=1)  # (steps+1, slices)
            grid = grid.to(z.device).repeat_interleave(n, dim=1)
            outs = s.fine(s.f_score, stacked, grid, s.schedule).split(n)
            f_out.update(zip(group, outs, strict=True))
        new = list(u)
        new[k + 1] = f_out[k]  # slice k starts from the exact U_k: its end is exact
        for i in range(k + 1, n_c):
            g = s.coarse(s.g_score, new[i], s.coarse_grids[i], s.schedule)
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


def run_distributed(s: Slices, z: torch.Tensor, *, tol: float, iters: int,
                    slice_group: dist.ProcessGroup, shard_group: dist.ProcessGroup | None,
                    result_on: str | int, progress: bool) -> Result:
    """Slice i on rank i of slice_group; the coarse sweep is a send/recv chain."""
    n_c = len(s.fine_grids)
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
    g_prev = s.coarse(s.g_score, start, s.coarse_grids[me], s.schedule)
    end = g_prev
    send(end)
    norms: list[float] = []
    converged = False
    bar = tqdm(range(iters), disable=not progress or me != 0, desc="Parareal", leave=False)
    for k in bar:
        local = torch.zeros((), dtype=torch.float64, device=z.device)
        if me >= k:
            f_end = s.fine(s.f_score, start, s.fine_grids[me], s.schedule)
            if me == k:
                new_end = f_end
            else:
                start = receive()
                g = s.coarse(s.g_score, start, s.coarse_grids[me], s.schedule)
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
