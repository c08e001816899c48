"""GPU smoke check: ``python -m tfda.experiments.gpu_check`` exercises every GPU path once.

Parts, each in its own process under a time limit (``--budget`` seconds in all,
default 290, shared out by :data:`SHARES`), with a closing table:

* ``lee``: the real-mode Lee pipeline through ``tfda lee --era5 --weights`` at full
  FourCastNet size (721 x 1440, 20 channels): a synthetic ERA5 netCDF (a vortex
  drifting west in msl and the 850-hPa winds over noise) and a random-weight
  checkpoint written by :func:`models.fourcastnet.save_checkpoint`, both made here;
  few members and one forecast day so that it fits the budget;
* ``twin``: the Lorenz-96 twin cycle (arctan observations, float32, 3 cycles) with
  every filter (kernel EnSF, published EnSF, LETKF) at Nx = 1000 and at Nx = 1e6;
* ``ensf``: full-state EnSF analyses, N = 20, d = 20 x 720 x 1440, identity H,
  100 steps: paired/ODE, paired/SDE, mixture/SDE (times and peak memory);
* ``score``: the CUDA rows of ``experiments.bench_score`` (d = 1e6, 1e7, 2.07e7);
* ``models``: the CUDA rows of ``experiments.bench_models`` (FourCastNet, 1 step, 4
  and 20 members) and the bf16-vs-float32 difference over 8 days;
* ``analysis``: the CUDA rows of ``tfda bench-analysis`` (one kernel-EnSF and one LETKF
  analysis, Lorenz-96 Nx = 1e4 .. 1e7 and the FourCastNet-size grid observed every 4th
  point).

Without CUDA it prints one line saying why and exits 0. ``--device cpu --small``
runs the same parts at toy sizes on the CPU (what the test suite does, so that the
code path is exercised without a GPU).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import torch

from tfda._io import timed

PARTS = ("lee", "twin", "ensf", "score", "models", "analysis")
# share of the budget per part (an estimate: none of it has been timed on a GPU yet)
SHARES = {"lee": 0.32, "twin": 0.12, "ensf": 0.15, "score": 0.10, "models": 0.15,
          "analysis": 0.16}


# --------------------------------------------------------------------------- inputs


def synthetic_era5(path: Path, times: list[datetime], lat: np.ndarray, lon: np.ndarray
                   ) -> tuple[Path, np.ndarray, np.ndarray]:
    """A netCDF of the 20 FourCastNet channels at ``times``: noise around 100 and a deep
    vortex drifting west from 17N 52W in msl, u850 and v850; returns (path, per-channel
    mean, per-channel std) for a normalisation that fits these fields."""
    from tfda.geo import great_circle_km
    from tfda.models.fourcastnet import FOURCASTNET_VARIABLES as names
    from tfda.observations.era5 import write_netcdf

    rng = np.random.default_rng(0)
    fields = (100.0 + 5.0 * rng.standard_normal((len(times), len(names), lat.size, lon.size),
                                                 dtype=np.float32))
    lat2, lon2 = np.meshgrid(lat, lon, indexing="ij")
    for k in range(len(times)):
        clat, clon = 17.0 + 0.5 * k, 308.0 - 1.0 * k
        x = (300.0 / np.maximum(great_circle_km(clat, clon, lat2, lon2), 1.0)) ** 1.5
        fields[k, names.index("msl")] = 101000.0 - 5000.0 * (1 - np.exp(-x))
        ang = np.radians(np.degrees(np.arctan2(lon2 - clon, lat2 - clat)) - 90.0)
        speed = 40.0 * np.sqrt(x * np.exp(1 - x))
        fields[k, names.index("u850")] = speed * np.sin(ang)
        fields[k, names.index("v850")] = speed * np.cos(ang)
    coords = {"time": np.array([np.datetime64(t, "ns") for t in times]), "channel": names,
              "lat": lat, "lon": lon}
    out = write_netcdf(path, torch.from_numpy(fields), coords)
    mean = fields.mean(axis=(0, 2, 3), dtype=np.float64)
    std = fields.std(axis=(0, 2, 3), dtype=np.float64)
    return out, mean, np.maximum(std, 1e-3)


def random_weights(folder: Path, afno: dict, mean: np.ndarray, std: np.ndarray) -> Path:
    """backbone.ckpt (random AFNO, official layout) and the two normalisation files."""
    from tfda.models.fourcastnet import AFNOConfig, AFNONet, save_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cfg = AFNOConfig(**{k: tuple(v) if k == "img_size" else v for k, v in afno.items()})
    save_checkpoint(AFNONet(cfg), folder / "backbone.ckpt")
    pad = lambda a, fill: np.concatenate([a, [fill]]).reshape(1, 21, 1, 1)  # noqa: E731
    np.save(folder / "global_means.npy", pad(mean, 0.0))
    np.save(folder / "global_stds.npy", pad(std, 1.0))
    return folder


def _toml(values: dict) -> str:
    import json

    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items() if not isinstance(v, dict)]
    for name, table in ((k, v) for k, v in values.items() if isinstance(v, dict)):
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- parts


def part_lee(device: str, small: bool, work: Path) -> int:
    """Real-mode Lee through the ``tfda lee`` entry point."""
    from tfda.experiments import cli

    afno = ({"img_size": [32, 64], "patch_size": 8, "embed_dim": 16, "depth": 1,
             "num_blocks": 2} if small else {})
    n_lat, n_lon = (33, 64) if small else (721, 1440)
    day0 = datetime(2023, 9, 8)
    # Day -1 and the 6-hourly Day 0 .. Day +1 track times: what the run reads
    times = [day0 - timedelta(days=1)] + [day0 + timedelta(hours=6 * k) for k in range(5)]
    lat = np.linspace(90.0, -90.0, n_lat)
    lon = np.arange(n_lon) * 360.0 / n_lon
    (era5, mean, std), seconds = timed(lambda: synthetic_era5(work / "era5.nc", times, lat, lon))
    weights = random_weights(work / "weights", afno or {}, mean, std)
    print(f"inputs written in {seconds:.1f} s", flush=True)
    cfg = {"members": 3 if small else 4, "forecast_days": 1, "obs_days": [-1, 0],
           "ensf_steps": 4 if small else 20, "progress": False, "best_track": "none",
           "max_displacement_km": 1500.0, "vorticity_threshold": 1e-6, "device": device}
    if afno:
        cfg["afno"] = afno
    (work / "lee.toml").write_text(_toml(cfg))
    rc, seconds = timed(lambda: cli.main(["lee", "--era5", str(era5), "--weights", str(weights),
                                          "--config", str(work / "lee.toml"),
                                          "--out", str(work / "lee")]))
    print(f"tfda lee --era5 --weights: exit {rc} in {seconds:.1f} s")
    return rc


def part_twin(device: str, small: bool, work: Path) -> int:
    from tfda.experiments import l96_twin

    common = ["--device", device, "--dtype", "float32", "--cycles", "3", "--burn-in", "1",
              "--no-progress"]
    # every filter at Nx = 1000 and at Nx = 1e6 (the local filters find their
    # observations with a neighbour search: O(d))
    rc = l96_twin.main(["ensf-arctan" if small else "ensf-arctan-1000", *common,
                        "--out", str(work / "both")])
    if rc or small:
        return rc
    return l96_twin.main(["ensf-arctan-1e6", "--filter", "all", *common,
                          "--out", str(work / "all-1e6")])


def part_ensf(device: str, small: bool, work: Path) -> int:
    """Full-state EnSF analyses (identity H, diagonal R): seconds and peak memory."""
    del work
    from tfda.da.filters import EnSF
    from tfda.observations.operators import Identity

    shape = (20, 8, 16) if small else (20, 720, 1440)
    steps = 5 if small else 100
    g = torch.Generator(device=device).manual_seed(0)
    prior = torch.randn(20, *shape, generator=g, device=device)
    y = prior.mean(0) + 0.1 * torch.randn(shape, generator=g, device=device)
    operator = Identity(0.5)
    print(f"{'score/sampler':<16} {'seconds':>8} {'peak GiB':>9}   (N = 20, d = "
          f"{int(np.prod(shape)):.3g}, {steps} steps)")
    for score, sampler in (("paired", "ode"), ("paired", "sde"), ("mixture", "sde")):
        filt = EnSF(score=score, sampler=sampler, steps=steps, seed=0)
        filt.analysis(prior[:, :1], y[:1], operator)  # warm-up (kernels, allocator)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        post, seconds = timed(lambda f=filt: f.analysis(prior, y, operator), device=device)
        peak = (f"{torch.cuda.max_memory_allocated() / 2**30:9.1f}"
                if device.startswith("cuda") else f"{'n/a':>9}")
        if not bool(torch.isfinite(post).all()):
            print(f"{score}/{sampler}: non-finite analysis")
            return 1
        print(f"{score + '/' + sampler:<16} {seconds:8.2f} {peak}")
    return 0


def part_score(device: str, small: bool, work: Path) -> int:
    del work
    from tfda.experiments import bench_score

    dims = ["1e3"] if small else ["1e6", "1e7", "2.07e7"]
    return bench_score.main(["--dims", *dims, "--device", device,
                             "--repeats", "1" if small else "5"])


def part_models(device: str, small: bool, work: Path) -> int:
    del work
    if small:
        from tfda.experiments import bench_afno_memory

        return bench_afno_memory.main(["--img", "32", "64", "--embed", "16", "--depth", "1",
                                       "--members", "2", "--device", device])
    from tfda.experiments import bench_models

    rc = bench_models.main(["--skip-barotropic", "--members", "4", "--repeats", "3",
                            "--no-progress", "--bf16-days", "8"])
    return rc or bench_models.main(["--skip-barotropic", "--members", "20", "--repeats", "2",
                                    "--no-progress"])


def part_analysis(device: str, small: bool, work: Path) -> int:
    del work
    from tfda.experiments import bench_analysis

    if small:
        return bench_analysis.main(["--nx", "64", "--device", device])
    return bench_analysis.main(["--nx", "1e4", "1e5", "1e6", "1e7", "--fcn-stride", "4",
                                "--dtype", "float32", "--device", device])


RUNNERS = {"lee": part_lee, "twin": part_twin, "ensf": part_ensf, "score": part_score,
           "models": part_models, "analysis": part_analysis}


# --------------------------------------------------------------------------- driver


def _run_part(name: str, args: argparse.Namespace, work: Path, limit: float
              ) -> tuple[str, float, str]:
    """(status, seconds, output) of one part in its own process under ``limit`` s."""
    cmd = [sys.executable, "-m", "tfda.experiments.gpu_check", "--part", name, "--device",
           args.device, "--workdir", str(work / name)] + (["--small"] if args.small else [])
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout
                                                                                 or "")
        return f"TIMEOUT ({limit:.0f} s)", time.perf_counter() - t, out
    status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
    return status, time.perf_counter() - t, proc.stdout + (proc.stderr if proc.returncode
                                                           else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tfda.experiments.gpu_check",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:1, or cpu")
    ap.add_argument("--small", action="store_true", help="toy sizes (the CPU test)")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--budget", type=float, default=290.0, help="seconds for all parts")
    ap.add_argument("--workdir", type=Path, default=None, help="keep inputs and outputs here")
    ap.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # one part, in-process
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: skipped: CUDA is not available (torch {torch.__version__}); "
              "use --device cpu --small to exercise the code path on the CPU")
        return 0
    if args.part:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return int(RUNNERS[args.part](args.device, args.small, args.workdir) or 0)
    if args.budget <= 0:
        ap.error("--budget must be > 0")
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    print(f"gpu_check on {name}, torch {torch.__version__}, "
          f"{datetime.now().isoformat(timespec='seconds')}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as tmp:
        work = args.workdir or Path(tmp)
        total = sum(SHARES[p] for p in args.parts)
        rows = []
        for part in args.parts:
            status, seconds, out = _run_part(part, args, work, args.budget * SHARES[part] / total)
            print(f"\n=== {part}: {status}, {seconds:.1f} s\n{out.rstrip()}", flush=True)
            rows.append((part, status, seconds))
    print("\n| part | status | seconds |\n|---|---|---|")
    for part, status, seconds in rows:
        print(f"| {part} | {status} | {seconds:.1f} |")
    print(f"| total | | {sum(r[2] for r in rows):.1f} |")
    return 0 if all(r[1] == "ok" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
