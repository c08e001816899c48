"""Benchmark: the softmax-weighted score as two matrix products against the paper's
broadcast form (Rafid et al., Algorithm 2: an N x M x d subtraction).

The broadcast form is kept here (and in the tests) only as a reference. Prints a
table of median wall time and peak extra memory per evaluation, and the ratios::

    python -m experiments.bench_score                       # CPU, d = 1e4, 1e5, 1e6
    python -m experiments.bench_score --dims 1e4 1e5 1e6 1e7 --device cuda

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` minus the inputs; on CPU,
the process's peak resident set (VmHWM, reset through /proc/self/clear_refs before
each call) minus the resident set before the call, so it counts every temporary.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from da.schedule import Schedule
from da.score import mixture_score
from experiments._errors import ArgumentParser, command, description

SCHEDULE = Schedule(eps_a=0.025)


def broadcast_score(z: torch.Tensor, x0: torch.Tensor, t: float) -> torch.Tensor:
    """Eq. (8) as the paper's Algorithm 2 computes it: materialise z_i - alpha x_j.

    Unlike Algorithm 2 this keeps the softmax weights, so it is the same estimator as
    :func:`da.score.mixture_score` and the comparison is one of cost only.
    """
    diff = z[:, None, :] - SCHEDULE.alpha(t) * x0[None, :, :]
    w = torch.softmax(-diff.square().sum(-1) / (2 * SCHEDULE.beta2(t)), dim=1)
    return -(w[:, :, None] * diff).sum(1) / SCHEDULE.beta2(t)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_bytes(fn: Callable[[], torch.Tensor], device: torch.device) -> int:
    """Peak memory above what was allocated before ``fn`` ran (its output included)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        base = _rss_kib("VmRSS")
        out = fn()
        peak = (_rss_kib("VmHWM") - base) * 1024
    del out
    return peak


def median_seconds(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> float:
    fn()  # warm-up: allocator, kernels
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fits(bytes_needed: float, device: torch.device) -> bool:
    """Whether a reference computation of that size leaves room on the device."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return bytes_needed < 0.8 * free
    available_kib = int(Path("/proc/meminfo").read_text().split("MemAvailable:")[1].split()[0])
    return bytes_needed < 0.5 * available_kib * 1024


def measure(
    d: int, n: int, m: int, device: torch.device, dtype: torch.dtype, repeats: int, t: float
) -> dict[str, float | str]:
    """One table row: both forms at feature size ``d``."""
    g = torch.Generator(device=device).manual_seed(0)
    x0 = torch.randn(m, d, generator=g, device=device, dtype=dtype)
    z = torch.randn(n, d, generator=g, device=device, dtype=dtype)
    methods = {
        "matmul": lambda: mixture_score(z, x0, t, SCHEDULE, check_inputs=False),
        "broadcast": lambda: broadcast_score(z, x0, t),
    }
    row: dict[str, float | str] = {"d": d, "device": device.type}
    for name, fn in methods.items():
        if name == "broadcast" and not fits(3 * n * m * d * x0.element_size(), device):
            row[f"{name}_s"], row[f"{name}_peak_mb"] = float("nan"), float("nan")
            continue
        row[f"{name}_s"] = median_seconds(fn, device, repeats)
        row[f"{name}_peak_mb"] = peak_extra_bytes(fn, device) / 2**20
    return row


def format_table(rows: list[dict[str, float | str]], n: int, m: int, dtype: torch.dtype) -> str:
    head = (
        f"mixture score, N = {n}, M = {m}, {str(dtype).removeprefix('torch.')}: median time "
        "per evaluation and peak extra memory (output included)"
    )
    cols = (
        "device",
        "d",
        "matmul s",
        "broadcast s",
        "speed-up",
        "matmul MB",
        "broadcast MB",
        "memory ratio",
    )
    lines = [head, "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        speed = r["broadcast_s"] / r["matmul_s"]
        mem = r["broadcast_peak_mb"] / max(r["matmul_peak_mb"], 1e-9)
        lines.append(
            f"| {r['device']} | {int(r['d']):.0e} | {r['matmul_s']:.4f} | "
            f"{r['broadcast_s']:.4f} | {speed:.1f}x | {r['matmul_peak_mb']:.0f} | "
            f"{r['broadcast_peak_mb']:.0f} | {mem:.1f}x |"
        )
    return "\n".join(lines)


@command("tfda bench-score")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="tfda bench-score", description=description(__doc__))
    parser.add_argument("--dims", type=float, nargs="+", default=[1e4, 1e5, 1e6])
    parser.add_argument("--members", type=int, default=20, help="N = M")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--t", type=float, default=0.5)
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    rows = [
        measure(int(d), args.members, args.members, device, dtype, args.repeats, args.t)
        for d in args.dims
    ]
    print(format_table(rows, args.members, args.members, dtype))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
