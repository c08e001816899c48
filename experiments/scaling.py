"""Strong and weak scaling of the sharded score (Rafid et al., Figure 3), bytes and memory.

One launch of W ranks measures every P = 1..W on the groups of the first P ranks:

* strong scaling: fixed d (default 1e6, the paper's value), time-to-solution of a
  full probability-flow ODE sampling run (Euler, ``--steps`` steps) versus P;
* weak scaling: fixed d per rank, the same run;
* bytes per score evaluation, counted from the payload of the collectives the run
  actually makes (:class:`da.sharding.CountingComm`), next to the ring all_reduce's
  wire bytes per rank and to the paper's Algorithm 2, which scatters the chunks of
  Z_t and Z_0 from rank 0 and gathers the score back
  (:func:`da.sharding.algorithm2_bytes`);
* peak memory per rank of one score evaluation at d = 1e6 for P in ``--memory-ranks``:
  the exact size of the rank's input shards plus the rise of the resident set's
  high-water mark over the evaluation (Linux VmHWM, reset through
  /proc/self/clear_refs just before it; on a GPU, torch.cuda's peak allocated
  bytes): inputs + output + temporaries, set against the model (N + M) d/P + N d/P
  numbers plus the temporaries of one feature chunk and the N x M logits.

Every rank generates only its own shard of the data (counter-based
:class:`da.sharding.BlockNoise`), so nothing of size d is ever built whole.

Launch: ``python -m tfda.experiments.scaling`` spawns ``--ranks`` gloo processes with
torch.multiprocessing; under ``mpirun -n W``, ``srun`` or ``torchrun`` the launched
ranks are used instead (da.distributed.init), on GPUs with NCCL/RCCL when present.
Writes a CSV and a PNG (atomically).
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from tfda._io import atomic_path, timed
from tfda.da.sampler import sample_ode, time_grid
from tfda.da.schedule import Schedule
from tfda.da.score import DEFAULT_CHUNK
from tfda.da.sharding import BlockNoise, CountingComm, ShardLayout, algorithm2_bytes, sharded_score
from tfda.experiments._errors import ArgumentParser, command, description

SCHEDULE = Schedule(eps_a=1e-3, eps_b=1e-3)
FIELDS = ("kind", "ranks", "d", "d_per_rank", "n", "m", "steps", "dtype", "time_s",
          "score_evals", "allreduce_calls", "payload_bytes_per_eval",
          "ring_wire_bytes_per_eval", "algorithm2_bytes_per_eval", "peak_mib_per_rank",
          "model_mib_per_rank")


@dataclass(frozen=True)
class Config:
    """Options of one scaling study (see ``--help``)."""

    n: int = 20
    m: int = 20
    steps: int = 10
    strong_d: int = 1_000_000
    weak_d: int = 250_000
    memory_d: int = 1_000_000
    memory_ranks: tuple[int, ...] = (1, 2, 4)
    repeats: int = 2
    dtype: str = "float32"
    threads: int = 1
    progress: bool = True
    parts: tuple[str, ...] = ("strong", "weak", "memory")


@dataclass(frozen=True)
class Row:
    kind: str
    ranks: int
    d: int
    d_per_rank: int
    n: int
    m: int
    steps: int
    dtype: str
    time_s: float = math.nan
    score_evals: int = 0
    allreduce_calls: int = 0
    payload_bytes_per_eval: float = math.nan
    ring_wire_bytes_per_eval: float = math.nan
    algorithm2_bytes_per_eval: float = math.nan
    peak_mib_per_rank: float = math.nan
    model_mib_per_rank: float = math.nan


def _local_problem(d: int, size: int, rank: int, cfg: Config, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's shards of a prior ensemble (M, d) and of N(0, I) start points (N, d)."""
    dtype = getattr(torch, cfg.dtype)
    sl = ShardLayout(d, size).slice(rank)
    like_x = torch.empty(cfg.m, sl.stop - sl.start, dtype=dtype, device=device)
    like_z = torch.empty(cfg.n, sl.stop - sl.start, dtype=dtype, device=device)
    mean = 3.0 * BlockNoise(1, offset=sl.start)(0, like_x[:1])
    x0 = mean + 0.7 * BlockNoise(2, offset=sl.start)(0, like_x)
    return x0, BlockNoise(3, offset=sl.start)(0, like_z)


def _max_over(value: float, group: dist.ProcessGroup, device: torch.device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return float(t)


def _sampling_run(kind: str, d: int, group: dist.ProcessGroup, cfg: Config,
                  device: torch.device) -> Row:
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    x0, z = _local_problem(d, size, rank, cfg, device)
    grid = time_grid(cfg.steps, t_start=1.0, t_end=1e-2)
    comm = CountingComm(group)
    best = math.inf
    for _ in range(cfg.repeats + 1):  # the first run warms up allocator and collectives
        comm.reset()
        dist.barrier(group=group)
        _, seconds = timed(lambda: sample_ode(sharded_score(x0, group=comm, schedule=SCHEDULE),
                                              z, grid, SCHEDULE, progress=False), device=device)
        best = min(best, _max_over(seconds, group, device))
    evals = comm.calls
    itemsize = x0.element_size()
    return Row(kind, size, d, ShardLayout(d, size).sizes[0], cfg.n, cfg.m, cfg.steps,
               cfg.dtype, best, evals, comm.calls, comm.payload_bytes / evals,
               comm.ring_wire_bytes() / evals,
               algorithm2_bytes(n=cfg.n, m=cfg.m, d=d, n_ranks=size, itemsize=itemsize))


def _status_kib(key: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def _reset_peak() -> bool:
    try:
        libc = ctypes.CDLL("libc.so.6")
        # glibc raises its mmap threshold after large frees and then keeps freed blocks
        # resident, where the score would reuse them without raising VmHWM: pin the
        # threshold (M_MMAP_THRESHOLD = -3) at 1 MiB and hand free pages back first
        libc.mallopt(-3, 1 << 20)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS
        return True
    except OSError:
        return False


def _memory_run(d: int, group: dist.ProcessGroup, cfg: Config, device: torch.device) -> Row:
    """Peak memory of one score evaluation on this rank: its input shards plus the rise.

    The shards are generated first (their generation has temporaries of its own that
    are not the score's) and the score is evaluated once to warm up; then the
    high-water mark is reset and the rise over a second evaluation (output +
    temporaries) is added to the exact size of the inputs.
    """
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    local = ShardLayout(d, size).sizes[rank]
    x0, z = _local_problem(d, size, rank, cfg, device)
    inputs = (x0.numel() * x0.element_size() + z.numel() * z.element_size()) / 2**20
    score_fn = sharded_score(x0, group=group, schedule=SCHEDULE)
    # a first evaluation maps in the library code it runs (resident pages too) and
    # sets up the collective's buffers: measure the second one
    score_fn(z, 0.5)
    dist.barrier(group=group)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device)
    ok = _reset_peak()
    base = _status_kib("VmRSS")
    score = score_fn(z, 0.5)
    if device.type == "cuda":
        rise = (torch.cuda.max_memory_allocated(device) - base_cuda) / 2**20
    elif ok and base is not None:
        rise = (_status_kib("VmHWM") - base) / 2**10  # type: ignore[operator]
    else:
        rise = math.nan
    del score, score_fn, x0, z
    itemsize = torch.empty((), dtype=getattr(torch, cfg.dtype)).element_size()
    chunk = min(local, DEFAULT_CHUNK)
    # shards of X and z, the score, and per chunk the centred X, z and the weighted mean
    model = ((cfg.m + cfg.n) * local + cfg.n * local
             + (cfg.m + 2 * cfg.n) * chunk) * itemsize + 3 * cfg.n * cfg.m * 8
    return Row("memory", size, d, local, cfg.n, cfg.m, 0, cfg.dtype,
               peak_mib_per_rank=_max_over(inputs + rise, group, device),
               model_mib_per_rank=model / 2**20)


def run(cfg: Config, device: torch.device) -> list[Row]:
    """Every measurement on the groups of the first P ranks, P = 1..world size."""
    world, rank = dist.get_world_size(), dist.get_rank()
    torch.set_num_threads(cfg.threads)
    plan = [("strong", p, cfg.strong_d) for p in range(1, world + 1)]
    plan += [("weak", p, cfg.weak_d * p) for p in range(1, world + 1)]
    plan += [("memory", p, cfg.memory_d) for p in cfg.memory_ranks if p <= world]
    plan = [step for step in plan if step[0] in cfg.parts]
    rows = []
    groups = {p: dist.new_group(list(range(p))) for p in range(1, world + 1)}  # collective
    for kind, p, d in tqdm(plan, disable=not cfg.progress or rank != 0, desc="scaling"):
        if rank < p:
            if kind == "memory":
                row = _memory_run(d, groups[p], cfg, device)
            else:
                row = _sampling_run(kind, d, groups[p], cfg, device)
            rows.append(row)
        dist.barrier()
    return rows


def _write_csv(rows: list[Row], path: Path) -> None:
    with atomic_path(path, suffix=".csv") as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v)
                             for k, v in asdict(row).items()})


def _plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    for ax, kind in zip(axes[:2], ("strong", "weak"), strict=True):
        sel = [r for r in rows if r.kind == kind]
        if not sel:
            ax.set_visible(False)
            continue
        ps = [r.ranks for r in sel]
        ax.plot(ps, [r.time_s for r in sel], "o-", label="measured")
        ideal = [sel[0].time_s / p if kind == "strong" else sel[0].time_s for p in ps]
        ax.plot(ps, ideal, "k--", label="ideal")
        d_txt = f"d = {sel[0].d:.0e}" if kind == "strong" else f"d/rank = {sel[0].d_per_rank}"
        ax.set(xlabel="ranks P", ylabel="time to solution [s]", xticks=ps,
               title=f"{kind} scaling ({d_txt})")
        ax.legend()
    sel = [r for r in rows if r.kind == "strong" and r.ranks > 1]
    if sel:
        ps = [r.ranks for r in sel]
        ax = axes[2]
        ax.semilogy(ps, [r.payload_bytes_per_eval for r in sel], "o-", label="all_reduce payload")
        ax.semilogy(ps, [r.ring_wire_bytes_per_eval for r in sel], "s-",
                    label="ring wire bytes / rank")
        ax.semilogy(ps, [r.algorithm2_bytes_per_eval for r in sel], "^-",
                    label="paper Alg. 2 (rank 0)")
        ax.set(xlabel="ranks P", ylabel="bytes per score evaluation", xticks=ps,
               title=f"communication (d = {sel[0].d:.0e})")
        ax.legend(fontsize=8)
    mem = [r for r in rows if r.kind == "memory"]
    if mem:
        ax = axes[3]
        ps = [r.ranks for r in mem]
        ax.plot(ps, [r.peak_mib_per_rank for r in mem], "o-", label="measured: inputs + peak rise")
        ax.plot(ps, [r.model_mib_per_rank for r in mem], "k--", label="(N+M)d/P + Nd/P model")
        ax.set(xlabel="ranks P", ylabel="MiB per rank", xticks=ps,
               title=f"score memory (d = {mem[0].d:.0e})")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _table(rows: list[Row]) -> str:
    def f(v: float, spec: str) -> str:
        return "-" if math.isnan(v) else format(v, spec)

    lines = ["| kind | P | d | time [s] | payload B/eval | ring B/eval/rank | Alg.2 B/eval "
             "| peak MiB/rank | model MiB/rank |", "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r.kind} | {r.ranks} | {r.d} | {f(r.time_s, '.3g')} | "
                     f"{f(r.payload_bytes_per_eval, '.0f')} | "
                     f"{f(r.ring_wire_bytes_per_eval, '.0f')} | "
                     f"{f(r.algorithm2_bytes_per_eval, '.3g')} | "
                     f"{f(r.peak_mib_per_rank, '.1f')} | {f(r.model_mib_per_rank, '.1f')} |")
    return "\n".join(lines)


def _finish(rows: list[Row], args: argparse.Namespace, launcher: str, world: int) -> None:
    out = Path(args.out_dir)
    _write_csv(rows, out / "scaling.csv")
    png = Path(args.png) if args.png else out / "scaling.png"
    _plot(rows, png, f"sharded score, {launcher}, {world} ranks, "
          f"N = {args.n}, M = {args.m}, {args.steps} ODE steps, {args.dtype}")
    print(_table(rows))
    print(f"wrote {out / 'scaling.csv'} and {png}")


def _spawned(rank: int, world: int, init_file: str, cfg: Config,
             args: argparse.Namespace) -> None:
    torch.set_num_threads(cfg.threads)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        rows = run(cfg, torch.device("cpu"))
        if rank == 0:
            _finish(rows, args, "torch.multiprocessing/gloo", world)
    finally:
        dist.destroy_process_group()


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="tfda scaling", description=description(__doc__))
    p.add_argument("--ranks", type=int, default=4,
                   help="processes to spawn when not launched by mpirun/srun/torchrun")
    p.add_argument("--n", type=int, default=Config.n, help="points (members) N")
    p.add_argument("--m", type=int, default=Config.m, help="prior samples M")
    p.add_argument("--steps", type=int, default=Config.steps, help="Euler ODE steps per run")
    p.add_argument("--strong-d", type=int, default=Config.strong_d)
    p.add_argument("--weak-d", type=int, default=Config.weak_d, help="features per rank")
    p.add_argument("--memory-d", type=int, default=Config.memory_d)
    p.add_argument("--memory-ranks", default="1,2,4", help="comma-separated P values")
    p.add_argument("--repeats", type=int, default=Config.repeats, help="timed runs (min kept)")
    p.add_argument("--dtype", choices=("float32", "float64"), default=Config.dtype)
    p.add_argument("--threads", type=int, default=Config.threads, help="torch threads a rank")
    p.add_argument("--out-dir", default="runs/scaling")
    p.add_argument("--png", default=None, help="plot path (default OUT_DIR/scaling.png)")
    p.add_argument("--parts", default="strong,weak,memory",
                   help="comma-separated subset of strong, weak, memory")
    p.add_argument("--no-progress", action="store_true")
    return p


@command("tfda scaling")
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        memory_ranks = tuple(int(v) for v in args.memory_ranks.split(",") if v)
    except ValueError as err:
        raise SystemExit(f"--memory-ranks must be comma-separated integers: {err}") from err
    for name in ("ranks", "n", "m", "steps", "strong_d", "weak_d", "memory_d", "repeats",
                 "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    parts = tuple(v for v in args.parts.split(",") if v)
    if not parts or not set(parts) <= {"strong", "weak", "memory"}:
        raise SystemExit(f"--parts must name some of strong, weak, memory; got {args.parts!r}")
    cfg = Config(args.n, args.m, args.steps, args.strong_d, args.weak_d, args.memory_d,
                 memory_ranks, args.repeats, args.dtype, args.threads, not args.no_progress,
                 parts)
    from tfda.da import distributed

    launcher = distributed.detect_launcher()
    if launcher == "single":
        import torch.multiprocessing as mp

        with tempfile.TemporaryDirectory() as tmp:
            mp.spawn(_spawned, args=(args.ranks, os.path.join(tmp, "init"), cfg, args),
                     nprocs=args.ranks)
        return 0
    ctx = distributed.init()
    try:
        rows = run(cfg, ctx.device)
        if ctx.rank == 0:
            _finish(rows, args, f"{ctx.launcher}/{ctx.backend}", ctx.world_size)
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
