"""Benchmark: the softmax-weighted score as two matrix products against the paper's
broadcast form (Rafid et al., Algorithm 2: an N x M x d subtraction).

The broadcast form is kept here (and in the tests) only as a reference. Prints a
table of median wall time, bandwidth (GB/s and percent of the device's peak: the
data-sheet HBM figure on CUDA, a measured memory copy on CPU) and peak extra memory
per evaluation, for the matrix form on the raw and on the prepared prior
(:func:`da.score.prepare_prior`), the broadcast form and the paired estimator::

    python -m tfda.experiments.bench_score                       # CPU, d = 1e4, 1e5, 1e6
    python -m tfda.experiments.bench_score --dims 1e4 1e5 1e6 1e7 --device cuda

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` minus the inputs; on CPU,
the process's peak resident set (VmHWM, reset through /proc/self/clear_refs before
each call) minus the resident set before the call, so it counts every temporary.
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from tfda._io import time_repeats
from tfda.da.schedule import Schedule
from tfda.da.score import mixture_score, paired_score, prepare_prior
from tfda.experiments._errors import ArgumentParser, command, description

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


def _release_heap() -> None:
    """Make the CPU resident set follow the allocations: glibc raises its mmap threshold
    after every large free and then keeps such blocks in the heap, where a later
    call's temporaries reuse them unseen by VmHWM. Pinning the threshold (128 KiB)
    and trimming the heap before each measurement keeps small sizes measurable."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD; fixing it also stops the adjustment
    libc.malloc_trim(0)


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
        _release_heap()
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        base = _rss_kib("VmRSS")
        out = fn()
        peak = (_rss_kib("VmHWM") - base) * 1024
    del out
    return peak


def median_seconds(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> float:
    fn()  # warm-up: allocator, kernels
    return statistics.median(time_repeats(fn, repeats, device=device)[1])


def fits(bytes_needed: float, device: torch.device) -> bool:
    """Whether a reference computation of that size leaves room on the device."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return bytes_needed < 0.8 * free
    available_kib = int(Path("/proc/meminfo").read_text().split("MemAvailable:")[1].split()[0])
    return bytes_needed < 0.5 * available_kib * 1024


# Peak HBM bandwidth in GB/s from the vendors' data sheets, matched against
# torch.cuda.get_device_name() (most specific first).
PEAK_GBS: tuple[tuple[str, float], ...] = (
    ("H200", 4800.0), ("H100 PCIe", 2000.0), ("H100", 3350.0),
    ("A100-SXM4-80GB", 2039.0), ("A100 80GB PCIe", 1935.0), ("A100", 1555.0),
    ("L40S", 864.0), ("V100", 900.0),
)
MEMORY_RESOLUTION_MB = 0.5  # CPU: blocks under the 128 KiB mmap threshold come from the heap


def device_peak_gbs(device: torch.device) -> tuple[float | None, str]:
    """(peak GB/s, what it is): the data-sheet HBM bandwidth on CUDA, a measured
    STREAM-like copy (read + write of 256 MiB, best of 5) on CPU."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, gbs in PEAK_GBS:
            if key in name:
                return gbs, f"{name}, data-sheet peak {gbs:.0f} GB/s"
        return None, f"{name}: peak bandwidth unknown"
    a = torch.ones(2**26)
    b = torch.empty_like(a)
    best = min(time_repeats(lambda: b.copy_(a), 5)[1])
    gbs = 2 * a.numel() * a.element_size() / best / 1e9
    return gbs, f"CPU, measured copy bandwidth {gbs:.1f} GB/s"


def measure(
    d: int, n: int, m: int, device: torch.device, dtype: torch.dtype, repeats: int, t: float,
    *, memory: bool = True,
) -> list[dict[str, float | str]]:
    """Table rows at feature size ``d``: the matrix form on the raw and on the prepared
    prior (prepared once, outside the timing, as an analysis does), the broadcast
    form, and the paired estimator (N = M)."""
    g = torch.Generator(device=device).manual_seed(0)
    x0 = torch.randn(m, d, generator=g, device=device, dtype=dtype)
    z = torch.randn(n, d, generator=g, device=device, dtype=dtype)
    prior = prepare_prior(x0, n_points=n, check_inputs=False)
    itemsize = x0.element_size()
    methods = {
        "matmul": (lambda: mixture_score(z, x0, t, SCHEDULE, check_inputs=False), 2 * n + m),
        "matmul, prepared": (lambda: mixture_score(z, prior, t, SCHEDULE, check_inputs=False),
                             2 * n + m),
        "broadcast": (lambda: broadcast_score(z, x0, t), 2 * n + m),
    }
    if n == m:
        methods["paired"] = (lambda: paired_score(z, x0, t, SCHEDULE, check_inputs=False),
                             3 * n)
    rows = []
    for name, (fn, vectors) in methods.items():
        row: dict[str, float | str] = {"d": d, "device": device.type, "form": name}
        if name == "broadcast" and not fits(3 * n * m * d * itemsize, device):
            row["s"], row["peak_mb"] = float("nan"), float("nan")
        else:
            row["s"] = median_seconds(fn, device, repeats) if repeats else float("nan")
            row["peak_mb"] = peak_extra_bytes(fn, device) / 2**20 if memory else float("nan")
        # the least traffic the estimate needs: read z and x0 once, write the output
        row["gbs"] = vectors * d * itemsize / row["s"] / 1e9
        rows.append(row)
    return rows


def _memory(mb: float, device: torch.device) -> str:
    if mb != mb:
        return "-"
    if device.type != "cuda" and mb < MEMORY_RESOLUTION_MB:
        return "below resolution"
    return f"{mb:.0f}"


def format_table(rows: list[dict[str, float | str]], n: int, m: int, dtype: torch.dtype,
                 device: torch.device, peak: tuple[float | None, str]) -> str:
    peak_gbs, peak_note = peak
    head = (
        f"mixture score, N = {n}, M = {m}, {str(dtype).removeprefix('torch.')}: median time "
        "per evaluation, bandwidth counting one read of z and x0 and one write of the "
        f"output, peak extra memory (output included). {peak_note}"
    )
    pct = "% of peak" if device.type == "cuda" else "% of copy"
    cols = ("device", "d", "form", "s", "GB/s", pct, "peak MB", "vs broadcast")
    lines = [head, "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    broadcast = {r["d"]: r["s"] for r in rows if r["form"] == "broadcast"}
    for r in rows:
        ok = r["s"] == r["s"]
        share = f"{100 * r['gbs'] / peak_gbs:.0f}" if ok and peak_gbs else "n/a"
        ref = broadcast.get(r["d"], float("nan"))
        speed = f"{ref / r['s']:.1f}x" if ok and ref == ref else "-"
        lines.append(
            f"| {r['device']} | {int(r['d']):.0e} | {r['form']} | "
            f"{r['s']:.4f} | {r['gbs']:.1f} | {share} | {_memory(r['peak_mb'], device)} | "
            f"{speed} |" if ok else
            f"| {r['device']} | {int(r['d']):.0e} | {r['form']} | skipped (memory) | - | - | - "
            "| - |"
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
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_score: --device cuda asked but CUDA is not available", file=sys.stderr)
        return 2
    sizes = [int(d) for d in args.dims]
    n = args.members
    # every timing first: the CPU memory measurement changes how glibc allocates
    rows = [row for d in sizes
            for row in measure(d, n, n, device, dtype, args.repeats, args.t, memory=False)]
    for row, mem in zip(rows, [r for d in sizes
                               for r in measure(d, n, n, device, dtype, 0, args.t)],
                        strict=True):
        row["peak_mb"] = mem["peak_mb"]
    print(format_table(rows, args.members, args.members, dtype, device,
                       device_peak_gbs(device)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
