"""Parareal speed-up of the probability-flow ODE sampler (Rafid et al., Algorithm 1).

For two sampling problems -- a 2-D Gaussian-mixture target and a d = 1e5 ensemble
(N = M = 20) -- prints, for each n_c and mode: Parareal iterations K to the tolerance,
fine score evaluations in total and on the critical path, wall time against the serial
fine solve, the ideal speed-up n_c / K, and the error against the serial fine solve.

    python -m tfda.experiments.parareal_speedup                      # batched mode, one process
    mpirun -n 4 python -m tfda.experiments.parareal_speedup          # + distributed with n_c = 4
    tfda parareal_speedup --problem ensemble --slices 8 --device cuda

Distributed mode runs for n_c equal to the number of ranks (one slice a rank); the
serial and batched runs happen on rank 0 alone so they are timed without competition.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from tfda._io import time_repeats, write_json
from tfda.da import distributed
from tfda.da.parareal import ParallelConfig, parareal
from tfda.da.sampler import sample_ode, time_grid
from tfda.da.schedule import Schedule
from tfda.da.score import mixture_score
from tfda.experiments._errors import ArgumentParser, command, description

SCHEDULE = Schedule(eps_a=1e-3)


def make_problem(name: str, *, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """(score, z, label): the mixture target or the d = 1e5 ensemble problem."""
    g = torch.Generator().manual_seed(seed)
    if name == "mixture":
        centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
        m, n = 1000, 500
        x0 = centres[torch.arange(m) % 3] + 0.5 * torch.randn(m, 2, generator=g,
                                                               dtype=torch.float64)
        label = f"mixture d=2 M={m} N={n}"
    elif name == "ensemble":
        d, m = 100_000, 20
        n = m
        base = torch.sin(torch.linspace(0, 40 * torch.pi, d, dtype=torch.float64))
        x0 = base + 0.3 * torch.randn(m, d, generator=g, dtype=torch.float64)
        label = f"ensemble d={d} M=N={m}"
    else:
        raise ValueError(f"--problem must be mixture, ensemble or all, got {name!r}")
    z = torch.randn(n, x0.shape[1], generator=g, dtype=torch.float64)
    x0, z = x0.to(device, dtype), z.to(device, dtype)

    def score(zz: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        return mixture_score(zz, x0, t, SCHEDULE, check_inputs=False)

    return score, z, label


def _timed(fn: Callable[[], object], device: torch.device, repeat: int) -> tuple[object, float]:
    out, seconds = time_repeats(fn, repeat, device=device)
    return out, min(seconds)


def run_problem(name: str, args: argparse.Namespace, ctx: distributed.DistContext) -> list[dict]:
    device = ctx.device if args.device is None else torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    score, z, label = make_problem(name, device=device, dtype=dtype)
    ts = time_grid(args.steps, t_end=args.t_end).to(device)
    rows: list[dict] = []
    lead = ctx.rank == 0
    ref, t_serial = None, float("nan")
    if lead:
        sample_ode(score, z, ts[:3], SCHEDULE, method=args.method, progress=False)  # warm-up
        ref, t_serial = _timed(lambda: sample_ode(score, z, ts, SCHEDULE, method=args.method,
                                                  progress=False), device, args.repeat)
    for n_c in args.slices:
        for mode in args.modes:
            if mode == "distributed" and n_c != ctx.world_size:
                continue
            if mode == "batched" and not lead:
                continue
            group = None
            if mode == "distributed":
                group = distributed.make_grid(shard_size=1).slice_group
            config = ParallelConfig(n_slices=n_c, tol=args.tol, mode=mode,
                                    fine_method=args.method, coarse_steps=args.coarse_steps,
                                    slice_group=group)
            (out, info), wall = _timed(
                lambda config=config: parareal(score, z, ts, SCHEDULE, config=config),
                device, args.repeat)
            if not lead:
                continue
            per_step = 2 if args.method == "heun" else 1
            rows.append({
                "problem": label, "mode": mode, "n_c": n_c, "iterations": info.iterations,
                "converged": info.converged,
                "fine_evals": info.fine_evals, "coarse_evals": info.coarse_evals,
                "critical_fine_evals": info.iterations * info.fine_steps_per_slice * per_step,
                "serial_fine_evals": args.steps * per_step,
                "wall_s": wall, "serial_s": t_serial, "speedup": t_serial / wall,
                "ideal": n_c / max(info.iterations, 1),
                "max_err": float((out - ref).abs().max()),
            })
    return rows


def _print(rows: list[dict], args: argparse.Namespace, ctx: distributed.DistContext) -> None:
    print(f"# steps={args.steps} method={args.method} coarse_steps={args.coarse_steps} "
          f"tol={args.tol} dtype={args.dtype} "
          f"device={args.device or ctx.device} "
          f"ranks={ctx.world_size} threads={torch.get_num_threads()}")
    head = ("problem", "mode", "n_c", "K", "fine evals", "critical", "serial evals",
            "wall s", "serial s", "speed-up", "ideal n_c/K", "max|err|")
    print(" | ".join(head))
    for r in rows:
        print(f"{r['problem']} | {r['mode']} | {r['n_c']} | {r['iterations']} | "
              f"{r['fine_evals']} | {r['critical_fine_evals']} | {r['serial_fine_evals']} | "
              f"{r['wall_s']:.3f} | {r['serial_s']:.3f} | {r['speedup']:.2f} | "
              f"{r['ideal']:.2f} | {r['max_err']:.1e}")


@command("tfda parareal")
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="tfda parareal", description=description(__doc__))
    p.add_argument("--problem", default="all", choices=["mixture", "ensemble", "all"])
    p.add_argument("--slices", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--modes", nargs="+", default=["batched", "distributed"],
                   choices=["serial", "batched", "distributed"])
    p.add_argument("--steps", type=int, default=64, help="fine steps of the whole solve")
    p.add_argument("--t-end", type=float, default=1e-2)
    p.add_argument("--tol", type=float, default=1e-2)
    p.add_argument("--coarse-steps", type=int, default=1,
                   help="Euler steps of the coarse propagator per slice")
    p.add_argument("--method", default="euler", choices=["euler", "heun"])
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    p.add_argument("--device", default=None, help="default: the rank's device (cuda or cpu)")
    p.add_argument("--repeat", type=int, default=1, help="best of this many timings")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    for n_c in args.slices:
        if n_c < 1 or args.steps % n_c:
            p.error(f"--steps {args.steps} must split into n_c = {n_c} equal slices")
    ctx = distributed.init()
    try:
        rows: list[dict] = []
        names = ["mixture", "ensemble"] if args.problem == "all" else [args.problem]
        for name in names:
            rows += run_problem(name, args, ctx)
            if dist.is_initialized():
                dist.barrier()
        if ctx.rank == 0:
            _print(rows, args, ctx)
            if args.json is not None:
                write_json(args.json, rows)
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
