"""Benchmark: one local analysis (kernel EnSF, LETKF) from Lorenz-96 to FourCastNet size.

Two problems, one analysis each, every filter with its neighbour search
(:mod:`da.filters.neighbours`):

* ``ring``: a Lorenz-96 ring of Nx variables, M members, arctan observations of every
  component (std 0.05, Bao et al. 2309.00983 Eq. 38), radius 4 (grid units), the
  kernel EnSF of the ``ensf-arctan`` setting (bandwidth 0.95, 10 flow steps each way,
  inflation 1.04) and its LETKF;
* ``fcn``: a FourCastNet-size state (20 channels x 721 x 1440, float32), every channel
  observed at every k-th grid point in latitude and longitude, both filters localised
  per grid column (``grid_sites``) with a Gaspari-Cohn radius in km.

Every case runs in a fresh process, so that its peak memory is its own: on CPU the
process's peak resident set (VmHWM: the inputs, the analysis and the ~0.3 GB of the
Python and torch runtime), on CUDA ``max_memory_allocated``. The table gives seconds,
that peak, the inputs' size, the mean number of observations (or observed grid
columns) within the taper's support per local domain, and the scaling exponent
d log(seconds) / d log(Nx) between consecutive ring sizes::

    tfda bench-analysis --nx 1e3 1e4 1e5 1e6                 # CPU, 1 thread, float64
    tfda bench-analysis --nx --fcn-stride 4                   # the FourCastNet-size case
    tfda bench-analysis --nx 1e4 1e5 1e6 1e7 --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from tfda.da.filters import LETKF, EnSF
from tfda.da.filters.local import grid_distance, grid_sites, periodic_distance, taper_support
from tfda.da.filters.neighbours import Geometry
from tfda.da.gaussian_mixture import compiled_flow_available, flow_backend
from tfda.experiments._errors import ArgumentParser, UserError, command, description
from tfda.experiments.config import parse_device
from tfda.experiments.resources import check_memory, ensemble_bytes
from tfda.observations.operators import Arctan, Subset

FCN_SHAPE = (20, 721, 1440)


@dataclass(frozen=True)
class Case:
    """One analysis to time: ``run()`` returns the analysis ensemble."""

    problem: str
    filter: str
    nx: int
    n_obs: int
    input_bytes: int
    neighbours: float
    run: Callable[[], torch.Tensor]


def mean_neighbours(geometry: Geometry, domains: torch.Tensor, sources: torch.Tensor,
                    radius: float, sample: int = 512) -> float:
    """Mean number of sources within the taper's support (2c) of a sample of domains."""
    from scipy.spatial import cKDTree

    pick = torch.linspace(0, len(domains) - 1, min(sample, len(domains))).long()
    tree = cKDTree(geometry.embed(sources))
    chord = geometry.chord(taper_support(radius))
    return float(np.mean(tree.query_ball_point(geometry.embed(domains[pick]), chord,
                                               return_length=True)))


def ring_cases(nx: int, members: int, filters: list[str], device: torch.device,
               dtype: torch.dtype) -> list[Case]:
    gen = torch.Generator().manual_seed(nx)
    truth = 2.0 + 3.0 * torch.randn(nx, generator=gen, dtype=torch.float64)
    prior = (truth + torch.randn(members, nx, generator=gen, dtype=torch.float64)).to(device,
                                                                                       dtype)
    locations = torch.arange(nx, dtype=torch.float64)
    op = Arctan(0.05, locations=locations)
    y = (torch.atan(truth) + 0.05 * torch.randn(nx, generator=gen, dtype=torch.float64)).to(
        device, dtype)
    ring = periodic_distance(nx)
    filts = {"ensf": EnSF(score="kernel", bandwidth=0.95, radius=4.0, distance=ring, steps=10,
                          inflation=1.04),
             "letkf": LETKF(radius=4.0, distance=ring, inflation=1.04)}
    k = mean_neighbours(ring, locations, locations, 4.0)
    size = prior.numel() * prior.element_size() + 2 * y.numel() * y.element_size()
    return [Case("ring", name, nx, nx, size, k,
                 (lambda f=filts[name]: f(prior, y, op))) for name in filters]


def fcn_cases(stride: int, members: int, radius_km: float, filters: list[str],
              device: torch.device) -> list[Case]:
    n_var, n_lat, n_lon = FCN_SHAPE
    lat = torch.linspace(90.0, -90.0, n_lat, dtype=torch.float64)
    lon = torch.arange(n_lon, dtype=torch.float64) * 0.25
    gen = torch.Generator().manual_seed(0)
    prior = torch.randn(members, *FCN_SHAPE, generator=gen).to(device)
    rows, cols = torch.arange(0, n_lat, stride), torch.arange(0, n_lon, stride)
    column = (rows[:, None] * n_lon + cols[None, :]).flatten()
    index = (torch.arange(n_var)[:, None] * (n_lat * n_lon) + column[None, :]).flatten()
    la, lo = torch.meshgrid(lat[rows], lon[cols], indexing="ij")
    where = torch.stack([la.flatten(), lo.flatten()], dim=1).repeat(n_var, 1)
    op = Subset(1.0, indices=index.tolist(), locations=where)
    y = prior.reshape(members, -1)[0, index].clone() + 0.5
    dist = grid_distance(lat, lon)
    sites = grid_sites(lat, lon, n_var, obs_index=index)
    filts = {"ensf": EnSF(score="kernel", bandwidth=0.95, radius=radius_km, distance=dist,
                          sites=sites, steps=10),
             "letkf": LETKF(radius=radius_km, distance=dist, sites=sites)}
    k = mean_neighbours(dist, sites.locations, where[: len(column)], radius_km)
    size = prior.numel() * prior.element_size() + 2 * y.numel() * y.element_size()
    return [Case(f"fcn/{stride}", name, prior[0].numel(), len(index), size, k,
                 (lambda f=filts[name]: f(prior, y, op))) for name in filters]


def measure(case: Case, device: torch.device) -> tuple[float, int]:
    """(seconds, peak bytes) of one analysis in this process (see the module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    case.run()
    if device.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter() - start, torch.cuda.max_memory_allocated()
    seconds = time.perf_counter() - start
    status = Path("/proc/self/status").read_text()
    return seconds, int(status.split("VmHWM:")[1].split()[0]) * 1024


def run_case(problem: str, size: int, name: str, args: argparse.Namespace) -> tuple[Case, float,
                                                                                     int]:
    """One case in a fresh interpreter (its own peak memory); the case's row back."""
    cmd = [sys.executable, "-m", "tfda.experiments.bench_analysis", "--one", problem, str(size),
           name, "--members", str(args.members), "--device", args.device, "--dtype",
           args.dtype, "--threads", str(args.threads), "--radius-km", str(args.radius_km),
           "--flow", args.flow]
    # numpy's OpenBLAS (the small batched products, da.batched) reads its thread count
    # when it loads: the child gets the same count as torch
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:  # the child's own one-line error (exit 2: a user error)
        why = (done.stderr.strip().splitlines() or ["?"])[-1]
        error = UserError if done.returncode == 2 else RuntimeError
        raise error(f"case {problem} {size} {name} failed: {why}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    case = Case(row["problem"], name, row["nx"], row["n_obs"], row["input_bytes"],
                row["neighbours"], lambda: torch.empty(0))
    return case, row["seconds"], row["peak"]


def one(problem: str, size: int, name: str, args: argparse.Namespace) -> None:
    """The child's side of :func:`run_case`: build, analyse, print one JSON line."""
    device = parse_device(args.device)
    if problem == "ring":
        (case,) = ring_cases(size, args.members, [name], device, getattr(torch, args.dtype))
    else:
        (case,) = fcn_cases(size, args.members, args.radius_km, [name], device)
    seconds, peak = measure(case, device)
    print(json.dumps({"problem": case.problem, "nx": case.nx, "n_obs": case.n_obs,
                      "input_bytes": case.input_bytes, "neighbours": case.neighbours,
                      "seconds": seconds, "peak": peak}))


def table(rows: list[tuple[Case, float, int]]) -> str:
    head = (f"{'problem':<9} {'filter':<6} {'state d':>10} {'obs p':>10} {'nbrs/site':>9} "
            f"{'seconds':>9} {'peak GB':>8} {'inputs GB':>9} {'exponent':>8}")
    lines = [head, "-" * len(head)]
    last: dict[tuple[str, str], tuple[int, float]] = {}
    for case, sec, peak in rows:
        key = (case.problem, case.filter)
        slope = ""
        if key in last and case.problem == "ring":
            n0, s0 = last[key]
            slope = f"{math.log(sec / s0) / math.log(case.nx / n0):.2f}"
        last[key] = (case.nx, sec)
        lines.append(f"{case.problem:<9} {case.filter:<6} {case.nx:>10.3g} {case.n_obs:>10.3g} "
                     f"{case.neighbours:>9.1f} {sec:>9.2f} {peak / 1e9:>8.2f} "
                     f"{case.input_bytes / 1e9:>9.2f} {slope:>8}")
    return "\n".join(lines)


def _size(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--nx: {text!r} is not a number") from None
    if not (math.isfinite(value) and value >= 16 and value == int(value)):
        raise UserError(f"--nx: {text!r} must be a whole number >= 16")
    return int(value)


@command("tfda bench-analysis")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="tfda bench-analysis", description=description(__doc__))
    parser.add_argument("--nx", nargs="*", default=["1e3", "1e4", "1e5"],
                        help="Lorenz-96 ring sizes (default 1e3 1e4 1e5; none to skip)")
    parser.add_argument("--fcn-stride", type=int, default=None, metavar="K",
                        help="also the FourCastNet-size grid, observed every K-th point")
    parser.add_argument("--radius-km", type=float, default=300.0,
                        help="localisation radius of the FourCastNet-size case (km)")
    parser.add_argument("--filters", nargs="+", default=["ensf", "letkf"],
                        choices=("ensf", "letkf"))
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                        help="ring state dtype (the FourCastNet case is float32)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--progress", action="store_true", help="a progress bar over the cases")
    parser.add_argument("--flow", choices=("auto", "torch"), default="auto",
                        help="the kernel EnSF's flow: the compiled CPU code where built "
                             "(auto) or the torch code")
    parser.add_argument("--one", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [_size(v) for v in args.nx]
    if args.fcn_stride is not None and not 1 <= args.fcn_stride <= 720:
        raise UserError(f"--fcn-stride must lie in [1, 720], got {args.fcn_stride}")
    if not 2 <= args.members <= 1000:
        raise UserError(f"--members must lie in [2, 1000], got {args.members}")
    if not (math.isfinite(args.radius_km) and args.radius_km > 0):
        raise UserError(f"--radius-km must be finite and > 0, got {args.radius_km}")
    if args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    itemsize = 4 if args.dtype == "float32" else 8
    for nx in sizes:  # the forecast, its perturbations and the analysis at least
        check_memory("--nx", ensemble_bytes(args.members, nx, 3.0, itemsize),
                     f"{args.members} members of {nx:,} variables")
    if args.fcn_stride is not None:
        check_memory("--fcn-stride", ensemble_bytes(args.members, math.prod(FCN_SHAPE), 3.0, 4),
                     "the FourCastNet-size ensemble")
    torch.set_num_threads(args.threads)
    device = parse_device(args.device)
    if args.one is not None:
        with flow_backend(args.flow):
            one(args.one[0], int(args.one[1]), args.one[2], args)
        return 0
    flow = ("compiled" if args.flow == "auto" and compiled_flow_available() and device.type == "cpu"
            else "torch")
    print(f"device {device}, {args.threads} thread(s), M = {args.members}, ring {args.dtype}, "
          f"{flow} flow; peak GB: the process's peak memory (a fresh process per case)",
          flush=True)
    plan = [("ring", nx, name) for nx in sizes for name in args.filters]
    if args.fcn_stride is not None:
        plan += [("fcn", args.fcn_stride, name) for name in args.filters]
    rows = []
    for problem, size, name in tqdm(plan, desc="cases", disable=not args.progress):
        rows.append(run_case(problem, size, name, args))
        print(table(rows).splitlines()[-1], flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
