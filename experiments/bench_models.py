"""Forecast-model benchmark: ``tfda bench-models [--threads N] ...``.

Prints one table:

* barotropic analogue: one 8-day (32 x 6 h) forecast of ``--members`` (20)
  members on CPU with ``--threads`` (2) threads, default configuration, wall
  and CPU seconds;
* FourCastNet v1 full size (720 x 1440, 20 channels, 74.7 M parameters),
  random weights, ``--members`` members, one 6-hour step in float32 and in
  bf16 autocast: time and peak GPU memory -- when CUDA is present, otherwise
  the rows say "skipped (no CUDA)";
* ``--bf16-days N``: the relative RMS difference between a float32 and a bf16
  autocast FourCastNet rollout over N days (CUDA only).
"""

from __future__ import annotations

import functools
import math
import time

import torch

from tfda._io import time_repeats
from tfda.experiments._errors import ArgumentParser, command, description
from tfda.geo import EARTH_RADIUS_M
from tfda.models.barotropic import BarotropicConfig, BarotropicModel, vortex_state
from tfda.models.base import rollout
from tfda.models.fourcastnet import load_fourcastnet


def bench_barotropic(members: int, days: int, *, progress: bool) -> tuple[float, float, str]:
    model = BarotropicModel()
    x = vortex_state(model, 17.0, 308.0, members=members)
    steps = days * 4
    wall, cpu = time.perf_counter(), time.process_time()
    states = rollout(model, x, steps)
    if progress:
        from tqdm import tqdm

        states = tqdm(states, total=steps + 1, desc="barotropic", leave=False)
    for state in states:
        x = state
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    ok = "finite" if bool(torch.isfinite(x).all()) else "NON-FINITE"
    return wall, cpu, ok


def vortex_centre(model: BarotropicModel, x: torch.Tensor) -> tuple[float, float]:
    """(lat, lon): centroid of 850 hPa vorticity above 30% of its peak within 5 degrees."""
    z = model.vorticity(x[:1])[0].double()
    iy, ix = divmod(int(z.argmax()), z.shape[1])
    lat, lon = model.lat[:, None], model.lon[None, :]
    near = ((lat - model.lat[iy]).abs() <= 5) & ((lon - model.lon[ix]).abs() <= 5)
    w = torch.where(near & (z > 0.3 * z.max()), z, torch.zeros_like(z))
    return float((w * lat).sum() / w.sum()), float((w * lon).sum() / w.sum())


def print_track(days: int) -> None:
    """Daily centre and minimum msl of the default vortex (17N 52W) in the default model."""
    model = BarotropicModel()
    x = vortex_state(model, 17.0, 308.0)
    print("day  lat(N)  lon(W)  min msl (hPa)")
    for n, state in enumerate(rollout(model, x, 4 * days)):
        if n % 4 == 0:
            lat, lon = vortex_centre(model, state)
            msl = float(state[0, 2].min()) / 100
            print(f"{n // 4:>3}  {lat:6.1f}  {360 - lon:6.1f}  {msl:8.1f}")


def bench_fourcastnet(members: int, *, autocast: bool, repeats: int) -> tuple[float, float]:
    model = load_fourcastnet(None, device="cuda", autocast=autocast)
    x = torch.randn(members, 20, 721, 1440, device="cuda")
    model.step(x[:1])                                  # warm-up: cuFFT plans, kernels
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    y, times = time_repeats(functools.partial(model.step, x), repeats, device="cuda")
    assert bool(torch.isfinite(y).all())
    peak = torch.cuda.max_memory_allocated() / 2**30
    del model, x, y
    torch.cuda.empty_cache()
    return min(times), peak


def print_bf16_drift(days: int, device: str = "cuda") -> None:
    """Relative RMS difference, per forecast day, between a float32 and a bf16-autocast
    FourCastNet rollout from the same state (random weights, one member)."""
    torch.manual_seed(0)
    f32 = load_fourcastnet(None, device=device, autocast=False)
    bf16 = load_fourcastnet(None, device=device, autocast=True)
    bf16.core.load_state_dict(f32.core.state_dict())
    x = torch.randn(1, 20, 721, 1440, device=device)
    a, b = x, x
    print("day  rel. RMS difference bf16 vs float32 (random weights, 1 member)")
    for day in range(1, days + 1):
        for _ in range(4):
            a, b = f32.step(a), bf16.step(b)
        diff = float((a - b).square().mean().sqrt() / a.square().mean().sqrt())
        print(f"{day:>3}  {diff:.3e}")


def print_beta_drift(days: int = 3) -> None:
    """Drift of a lone vortex with no steering flow (beta drift): speed and bearing."""
    model = BarotropicModel(
        BarotropicConfig(steering_u_south=0.0, steering_u_north=0.0, steering_v=0.0)
    )
    x = vortex_state(model, 25.5, 305.5)
    (lat0, lon0), (lat1, lon1) = (
        vortex_centre(model, s) for s in (x, list(rollout(model, x, 4 * days))[-1])
    )
    east = math.radians(lon1 - lon0) * EARTH_RADIUS_M * math.cos(math.radians(0.5 * (lat0 + lat1)))
    north = math.radians(lat1 - lat0) * EARTH_RADIUS_M
    speed = math.hypot(east, north) / (days * 86400)
    bearing = math.degrees(math.atan2(east, north)) % 360
    print(f"beta drift over {days} days from 25.5N 54.5W, no steering: "
          f"{speed:.2f} m/s towards {bearing:.0f} degrees")


@command("tfda bench-models")
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="tfda bench-models", description=description(__doc__))
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    ap.add_argument("--members", type=int, default=20)
    ap.add_argument("--days", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="GPU timing repeats (best of)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--skip-barotropic", action="store_true")
    ap.add_argument("--track", action="store_true",
                    help="also print the default analogue vortex track (1 member)")
    ap.add_argument("--beta-drift", action="store_true",
                    help="also print the beta drift of a lone vortex with no steering")
    ap.add_argument("--bf16-days", type=int, default=0,
                    help="also print the bf16-vs-float32 FourCastNet difference over this "
                         "many days (CUDA only)")
    args = ap.parse_args(argv)
    if args.threads < 1 or args.members < 1 or args.days < 1:
        ap.error("--threads, --members and --days must be >= 1")
    torch.set_num_threads(args.threads)
    if args.track:
        print_track(args.days)
    if args.beta_drift:
        print_beta_drift()
    if args.bf16_days > 0:
        if torch.cuda.is_available():
            print_bf16_drift(args.bf16_days)
        else:
            print("bf16 drift: skipped (no CUDA; autocast is CUDA-only here)")
    rows = []
    if not args.skip_barotropic:
        wall, cpu, ok = bench_barotropic(args.members, args.days, progress=not args.no_progress)
        rows.append((f"barotropic {args.days}-day, {args.members} members, CPU "
                     f"{args.threads} thr", f"{wall:.2f} s wall ({cpu:.2f} s CPU)", "-", ok))
    for label, ac in (("float32", False), ("bf16 autocast", True)):
        name = f"FourCastNet full, {args.members} members, 1 step, {label}"
        if not torch.cuda.is_available():
            rows.append((name, "skipped (no CUDA)", "-", ""))
            continue
        t, peak = bench_fourcastnet(args.members, autocast=ac, repeats=args.repeats)
        rows.append((name, f"{t:.3f} s", f"{peak:.1f} GiB", torch.cuda.get_device_name()))
    w = max(len(r[0]) for r in rows)
    print(f"{'benchmark':<{w}}  {'time':<26}  {'peak memory':<11}  note")
    for r in rows:
        print(f"{r[0]:<{w}}  {r[1]:<26}  {r[2]:<11}  {r[3]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
