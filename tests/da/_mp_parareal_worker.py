"""Worker for the multi-process Parareal tests (launched by tests/da/test_parareal.py
and tests/da/test_distributed.py through ``mpirun -n 4`` or torch multiprocessing).

Every rank writes ``rank<r>.pt`` (or ``rank<r>.json`` for the killed-rank case) into
the output folder, atomically; the test compares with the serial solve it makes itself.

Usage: python tests/da/_mp_parareal_worker.py CASE OUT_DIR
CASE: "parareal" (distributed Parareal, 4 slices, and a 2 x 2 sliced-and-sharded run),
      "kill" (rank 2 exits during the run; the others must raise within the timeout),
      "hang" (rank 2 stalls in its score; the others must raise within the timeout),
      "context" (init() only: rank, world, local rank, launcher).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tfda.da import distributed  # noqa: E402
from tfda.da.parareal import ParallelConfig, parareal  # noqa: E402
from tfda.da.sampler import time_grid  # noqa: E402
from tfda.da.schedule import Schedule  # noqa: E402
from tfda.da.score import mixture_score  # noqa: E402

SCHEDULE = Schedule(eps_a=1e-3)
KILL_TIMEOUT_S = 10.0


def problem(d: int = 6, n: int = 5, m: int = 16, steps: int = 24):
    """The Gaussian-mixture target: prior samples x0, start z, fine grid (float64)."""
    g = torch.Generator().manual_seed(1234)
    centres = torch.tensor([[2.0] * d, [-2.0] * d], dtype=torch.float64)
    x0 = centres[torch.arange(m) % 2] + 0.3 * torch.randn(m, d, generator=g, dtype=torch.float64)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    return x0, z, time_grid(steps, t_end=1e-2)


def _save(obj: object, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    if isinstance(obj, dict) and path.suffix == ".json":
        tmp.write_text(json.dumps(obj))
    else:
        torch.save(obj, tmp)
    os.replace(tmp, path)


def case_parareal(ctx: distributed.DistContext, out: Path) -> None:
    x0, z, ts = problem()
    results: dict[str, object] = {}
    grid = distributed.make_grid(shard_size=1)  # 4 slices x 1 shard
    score = lambda zz, t: mixture_score(zz, x0, t, SCHEDULE)  # noqa: E731
    for method in ("euler", "heun"):
        for tol in (1e-30, 0.1):
            res, info = parareal(score, z, ts, SCHEDULE,
                                 config=ParallelConfig(n_slices=grid.n_slices, tol=tol,
                                                       mode="distributed", fine_method=method,
                                                       slice_group=grid.slice_group))
            results[f"full/{method}/{tol}"] = (res, info)
    res0, info0 = parareal(score, z, ts, SCHEDULE,
                           config=ParallelConfig(n_slices=grid.n_slices, tol=1e-30,
                                                 mode="distributed", slice_group=grid.slice_group,
                                                 result_on=0))
    results["result_on0"] = (res0, info0)
    try:  # more ranks in slice_group than slices: refused before any work
        parareal(score, z, ts, SCHEDULE,
                 config=ParallelConfig(n_slices=2, mode="distributed",
                                       slice_group=grid.slice_group))
        results["mismatch"] = ""
    except ValueError as err:
        results["mismatch"] = str(err)
    # 2 slices x 2 feature shards: the score all_reduces over shard_group.
    sgrid = distributed.make_grid(shard_size=2, state_size=z.shape[1])
    sl = distributed.shard_range(z.shape[1], 2, sgrid.shard_index)
    xs = x0[:, sl].contiguous()
    sscore = lambda zz, t: mixture_score(zz, xs, t, SCHEDULE, group=sgrid.shard_group)  # noqa: E731
    res, info = parareal(sscore, z[:, sl].contiguous(), ts, SCHEDULE,
                         config=ParallelConfig(n_slices=2, tol=1e-30, mode="distributed",
                                               slice_group=sgrid.slice_group,
                                               shard_group=sgrid.shard_group))
    results["sharded"] = (res, info, sl.start, sl.stop)
    _save(results, out / f"rank{ctx.rank}.pt")
    case_context(ctx, out)


def case_kill(ctx: distributed.DistContext, out: Path, *, hang: bool = False) -> None:
    x0, z, ts = problem(steps=400)
    grid = distributed.make_grid(shard_size=1)

    def score(zz: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        if ctx.rank == 2:
            if hang:  # alive but silent: only the timeout can free the others
                time.sleep(6 * KILL_TIMEOUT_S)
            os._exit(3)  # dies in its first fine solve, without a word to the others
        return mixture_score(zz, x0, t, SCHEDULE)

    start = time.monotonic()
    try:
        parareal(score, z, ts, SCHEDULE,
                 config=ParallelConfig(n_slices=grid.n_slices, tol=1e-30, mode="distributed",
                                       slice_group=grid.slice_group,
                                       coarse=lambda s, zz, g, sch: zz + 0.0))
        status, message = "finished", ""
    except Exception as err:  # noqa: BLE001 -- the test wants whatever was raised
        status, message = "raised", f"{type(err).__name__}: {err}"
    _save({"status": status, "message": message[:500], "elapsed": time.monotonic() - start},
          out / f"rank{ctx.rank}.json")
    os._exit(0)  # do not wait in shutdown for the dead rank


def case_context(ctx: distributed.DistContext, out: Path) -> None:
    grid = distributed.make_grid(shard_size=2)
    t = torch.tensor([float(ctx.rank)], dtype=torch.float64)
    torch.distributed.all_reduce(t, group=grid.shard_group)
    _save({"rank": ctx.rank, "world_size": ctx.world_size, "local_rank": ctx.local_rank,
           "launcher": ctx.launcher, "backend": ctx.backend, "device": str(ctx.device),
           "slice_index": grid.slice_index, "shard_index": grid.shard_index,
           "slice_ranks": list(grid.slice_ranks), "shard_ranks": list(grid.shard_ranks),
           "shard_sum": float(t)}, out / f"rank{ctx.rank}.json")


def case_hang(ctx: distributed.DistContext, out: Path) -> None:
    case_kill(ctx, out, hang=True)


CASES = {"parareal": case_parareal, "kill": case_kill, "hang": case_hang,
         "context": case_context}


def run(case: str, out: str) -> None:
    timeout = KILL_TIMEOUT_S if case in ("kill", "hang") else 60.0
    ctx = distributed.init(timeout=datetime.timedelta(seconds=timeout))
    torch.set_num_threads(1)
    try:
        CASES[case](ctx, Path(out))
    finally:
        distributed.shutdown()


def spawn_entry(local_rank: int, world_size: int, port: int, case: str, out: str) -> None:
    """torch.multiprocessing.spawn target: torchrun's variables, then :func:`run`."""
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank),
                      WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    run(case, out)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2])
