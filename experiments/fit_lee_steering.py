"""Fit the barotropic analogue's steering field so that its storm follows Hurricane Lee.

``python -m tfda.experiments.fit_lee_steering [--iterations N] [--write]`` prints, per
iteration, the truth-vs-best-track errors on the days with a best-track fix, and
with ``--write`` stores the fitted field in ``experiments/data/lee_steering.json``
(package data; ``tfda lee`` reads it through :func:`load_fitted`).

Procedure (deterministic; 12 analogue runs, about 20 s on one core of a loaded machine):

1. Reference track: Lee's packaged best track (observations.besttrack.lee2023) at
   every 6 h from Day -3 (2023-09-05 00 UTC) to Day 9, linear in time between fixes
   (the gaps Day 4-6 and Day 6-landfall included). Before the first fix (2023-09-05
   18 UTC) it is extrapolated with the mean motion of the first 24 h of fixes, which
   puts the Day -3 start at 11.55N 37.35W; after the landfall fix the last segment's
   motion continues.
2. Knots every ``knot_hours`` (12 h) at the reference positions. The storm moves
   with the steering it feels plus its own beta drift, v = S + d, so the knot
   winds aim at S = v_ref - d + (p_ref - p_model) / ``tau`` at each knot's time.
   Neighbouring knots overlap (the field is their kernel average), so the winds
   are the Tikhonov solution of W s = target (W[k, l]: weight of knot l at knot k).
3. Iterate: run the analogue (models.barotropic with the steering field) from the
   Day -3 start, track it (diagnostics.tracking), re-estimate the drift d at every knot
   time as the model's motion minus the steering its storm felt, and move the winds
   a fraction ``relax`` towards the new solution. The first drift estimate is the
   motion of the unsteered vortex over its first day. Motions (centred 12-h
   differences) and positions are measured on the model's plane (x = R cos(lat0)
   lon, y = R lat), so a wind moves the model storm by exactly the degrees the fit
   expects.
4. Keep the iteration with the smallest largest error (fix days and landfall).

Errors are great-circle distances at 00 UTC of Days -2 .. 4 and 6 (the days on which
the packaged best track has a fix) and at the 2023-09-16 20 UTC landfall, where the
model track is interpolated linearly between its 18 and 00 UTC centres.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tfda._io import write_json
from tfda.diagnostics.tracking import StormTracker, TrackerConfig
from tfda.geo import EARTH_RADIUS_M, great_circle_km
from tfda.models.barotropic import BarotropicConfig, BarotropicModel, vortex_state

FIT_FILE = Path(__file__).resolve().parent / "data" / "lee_steering.json"
COMMAND = "python -m tfda.experiments.fit_lee_steering --write"
DAY0 = datetime(2023, 9, 8)
START_DAY = -3
END_DAY = 9
LANDFALL = datetime(2023, 9, 16, 20)
# The box holds the whole track (11.5N 37W .. 44N 66W) at least 6 degrees from the
# sponge; the zonal/southerly environment is off: all steering is the fitted field.
BOX: dict[str, Any] = {
    "lat_south": 0.0, "lat_north": 60.0, "lon_west": 270.0, "lon_east": 345.0,
    "resolution": 1.0, "steering_u_south": 0.0, "steering_u_north": 0.0, "steering_v": 0.0,
    # 30-min RK4 sub-steps: spectral CFL k_max u dt = (2 pi / 3 dx) 45 m/s 1800 s = 1.8 < 2.8
    "substeps": 12,
}
VORTEX = {"vmax": 40.0, "rmax_km": 150.0}


@dataclass(frozen=True)
class FitSettings:
    """The fit's knobs (see the module docstring)."""

    iterations: int = 12
    knot_hours: float = 12.0
    knot_km: float = 250.0
    relax: float = 0.7
    tau_hours: float = 48.0
    smoothing: float = 0.1


def _plane(lat0: float) -> tuple[float, float]:
    """Metres per degree (east, north) on the model plane with reference latitude lat0."""
    return (EARTH_RADIUS_M * math.cos(math.radians(lat0)) * math.pi / 180.0,
            EARTH_RADIUS_M * math.pi / 180.0)


def reference_track(times: list[datetime]) -> tuple[np.ndarray, np.ndarray]:
    """Lee's best-track (lat, lon 0..360) at ``times``: linear in time between fixes,
    extrapolated before the first fix with the mean motion of its first 24 h and after
    the last with the motion of the last segment."""
    from tfda.observations.besttrack import lee2023

    bt = lee2023()
    t = (bt.time - np.datetime64(DAY0, "m")).astype(np.float64) / 60.0   # hours from Day 0
    lat, lon = bt.lat, bt.lon % 360.0
    want = np.array([(x - DAY0) / timedelta(hours=1) for x in times])
    out_lat, out_lon = np.interp(want, t, lat), np.interp(want, t, lon)
    j = int(np.searchsorted(t, t[0] + 24.0))
    for mask, (a, b) in ((want < t[0], (0, j)), (want > t[-1], (-2, -1))):
        rate_lat = (lat[b] - lat[a]) / (t[b] - t[a])
        rate_lon = (lon[b] - lon[a]) / (t[b] - t[a])
        edge = a if b == j else b
        out_lat[mask] = lat[edge] + rate_lat * (want[mask] - t[edge])
        out_lon[mask] = lon[edge] + rate_lon * (want[mask] - t[edge])
    return out_lat, out_lon


def fix_days() -> list[int]:
    """Days (relative to Day 0) whose 00 UTC has a best-track fix, from the start day on."""
    from tfda.observations.besttrack import lee2023

    bt = lee2023()
    days = []
    for d in range(START_DAY, END_DAY + 1):
        if np.any(bt.time == np.datetime64(DAY0 + timedelta(days=d), "m")):
            days.append(d)
    return days


def run_track(model_cfg: BarotropicConfig, start: tuple[float, float], n_steps: int, *,
              vmax: float = VORTEX["vmax"], rmax_km: float = VORTEX["rmax_km"]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tracked (lat, lon) every model step of one analogue run from ``start``, and the
    steering wind (step, 2) the storm felt (models.barotropic.BarotropicModel.steering)."""
    model = BarotropicModel(model_cfg)
    x = vortex_state(model, start[0], start[1], vmax=vmax, rmax=rmax_km * 1e3)
    tracker = StormTracker(model.lat, model.lon, start, 1,
                           hours_per_step=model.dt / timedelta(hours=1), config=TrackerConfig())
    felt = []
    with torch.no_grad():
        for k in range(n_steps + 1):
            if k:
                x = model.step(x)
            tracker.update(x[:, 2], x[:, 3], x[:, 4])
            us, vs = model.steering(model._ifft(model.analyse(x)[0]))
            felt.append((float(us.reshape(-1)[0]), float(vs.reshape(-1)[0])))
    res = tracker.result()
    return res.lat[0], res.lon[0], np.array(felt)


def daily_errors(lat: np.ndarray, lon: np.ndarray, *, steps_per_day: int = 4
                 ) -> dict[str, float]:
    """Great-circle error (km) against the best track on the fix days (keys "Day d") and
    at landfall, for a 6-hourly track starting on Day -3."""
    from tfda.observations.besttrack import lee2023

    bt = lee2023()
    out: dict[str, float] = {}
    for d in fix_days():
        k = (d - START_DAY) * steps_per_day
        if k >= lat.size:
            break
        row = bt.at(DAY0 + timedelta(days=d))
        out[f"Day {d}"] = float(great_circle_km(lat[k], lon[k], row["lat"], row["lon"] % 360))
    h = (LANDFALL - DAY0) / timedelta(hours=1) - START_DAY * 24.0
    k, frac = int(h // 6), (h % 6) / 6.0
    if k + 1 < lat.size:
        la = (1 - frac) * lat[k] + frac * lat[k + 1]
        lo = (1 - frac) * lon[k] + frac * lon[k + 1]
        row = bt.at(LANDFALL)
        out["landfall"] = float(great_circle_km(la, lo, row["lat"], row["lon"] % 360))
    return out


def _motion(lat: np.ndarray, lon: np.ndarray, k: np.ndarray, mx: float, my: float
            ) -> np.ndarray:
    """Centred 12-h motion (m/s, plane metres) at 6-hourly indices ``k`` (one-sided at ends)."""
    a = np.clip(k - 1, 0, lat.size - 1)
    b = np.clip(k + 1, 0, lat.size - 1)
    dt = (b - a) * 6 * 3600.0
    return np.stack([(lon[b] - lon[a]) * mx / dt, (lat[b] - lat[a]) * my / dt], axis=-1)


def _overlap(lat: np.ndarray, lon: np.ndarray, lat0: float, knot_km: float) -> np.ndarray:
    """W[k, l]: weight of knot l in the steering field at knot k (models.barotropic)."""
    mx, my = _plane(lat0)
    x, y = lon * mx, lat * my
    d2 = (x[:, None] - x[None, :]) ** 2 + (y[:, None] - y[None, :]) ** 2
    logits = -d2 / (2 * (knot_km * 1e3) ** 2)
    w = np.exp(logits - logits.max(1, keepdims=True))
    return w / w.sum(1, keepdims=True)


def _solve(overlap: np.ndarray, target: np.ndarray, smoothing: float) -> np.ndarray:
    """Knot winds s with W s ~ target: argmin |W s - t|^2 + smoothing |s - t|^2 (Tikhonov),
    so the field *at the knots* takes the wanted values though neighbouring knots overlap."""
    k = overlap.shape[0]
    lhs = overlap.T @ overlap + smoothing * np.eye(k)
    return np.linalg.solve(lhs, overlap.T @ target + smoothing * target)


def fit(settings: FitSettings = FitSettings(), *, verbose: bool = True) -> dict[str, Any]:
    """Run the procedure of the module docstring; returns the JSON-ready result."""
    n_steps = (END_DAY - START_DAY) * 4
    times = [DAY0 + timedelta(days=START_DAY, hours=6 * k) for k in range(n_steps + 1)]
    ref_lat, ref_lon = reference_track(times)
    base = BarotropicConfig(**BOX, steering_knot_km=settings.knot_km)
    lat0 = 0.5 * (base.lat_north + base.lat_south)
    mx, my = _plane(lat0)
    start = (float(ref_lat[0]), float(ref_lon[0]))
    every = int(round(settings.knot_hours / 6))
    kidx = np.arange(0, n_steps + 1, every)
    ref_v = _motion(ref_lat, ref_lon, kidx, mx, my)
    d_lat, d_lon, _ = run_track(base, start, 4)                    # no steering: beta drift
    drift = np.broadcast_to(_motion(d_lat, d_lon, np.array([2]), mx, my), ref_v.shape)
    overlap = _overlap(ref_lat[kidx], ref_lon[kidx], lat0, settings.knot_km)
    winds = _solve(overlap, ref_v - drift, settings.smoothing)
    best: dict[str, Any] = {}
    for it in range(settings.iterations):
        knots = [(float(ref_lat[k]), float(ref_lon[k]), float(u), float(v))
                 for k, (u, v) in zip(kidx, winds, strict=True)]
        lat, lon, felt = run_track(replace(base, steering_knots=tuple(knots)), start, n_steps)
        err = daily_errors(lat, lon)
        worst = max(err.values())  # fix days and landfall; NaN once lost
        if verbose:
            print(f"iteration {it:2d}: largest error {worst:6.0f} km; "
                  + ", ".join(f"{k} {v:.0f}" for k, v in err.items()), flush=True)
        if np.isfinite(worst) and (not best or worst < best["largest_error_km"]):
            best = {"largest_error_km": worst, "errors_km": err, "knots": knots,
                    "track": (lat, lon)}
        # the model's own drift at each knot time: its motion minus the steering it felt
        smooth = 0.25 * felt[np.clip(kidx - 1, 0, n_steps)] + 0.5 * felt[kidx] \
            + 0.25 * felt[np.clip(kidx + 1, 0, n_steps)]
        seen = _motion(lat, lon, kidx, mx, my) - smooth
        # knots the lost storm never reached keep the previous drift estimate
        drift = np.where(np.isfinite(seen), seen, drift)
        dp = np.stack([(ref_lon[kidx] - lon[kidx]) * mx, (ref_lat[kidx] - lat[kidx]) * my], -1)
        target = ref_v - drift + np.nan_to_num(dp, nan=0.0) / (settings.tau_hours * 3600.0)
        winds = (1 - settings.relax) * winds + settings.relax * _solve(overlap, target,
                                                                       settings.smoothing)
    if not best:
        raise RuntimeError("the tracker lost the storm in every iteration; lower relax or "
                           "raise tau_hours")
    lat, lon = best.pop("track")
    return {"command": COMMAND, "day0": DAY0.isoformat(timespec="minutes"),
            "start_day": START_DAY, "start_lat": round(start[0], 4),
            "start_lon": round(start[1], 4), "vortex": dict(VORTEX), "box": dict(BOX),
            "steering_knot_km": settings.knot_km, "settings": settings.__dict__,
            **best, "knots": [[round(v, 4) for v in k] for k in best["knots"]],
            "track_6h": {"lat": np.round(lat, 3).tolist(), "lon": np.round(lon, 3).tolist()}}


def load_fitted(path: str | os.PathLike = FIT_FILE) -> dict[str, Any]:
    """The stored fit (written by ``python -m tfda.experiments.fit_lee_steering --write``)."""
    return json.loads(Path(path).read_text())


def analogue_model(fitted: dict[str, Any] | None = None) -> dict[str, Any]:
    """BarotropicConfig keyword arguments of the fitted Lee analogue."""
    fitted = load_fitted() if fitted is None else fitted
    return {**fitted["box"], "steering_knot_km": fitted["steering_knot_km"],
            "steering_knots": [list(k) for k in fitted["knots"]]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tfda.experiments.fit_lee_steering",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=FitSettings.iterations)
    p.add_argument("--write", action="store_true", help=f"store the result in {FIT_FILE.name}")
    args = p.parse_args(argv)
    if args.iterations < 1:
        print("fit_lee_steering: error: --iterations must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    result = fit(FitSettings(iterations=args.iterations))
    print(f"start (Day {START_DAY}): {result['start_lat']:.2f}N "
          f"{360 - result['start_lon']:.2f}W; best iteration's errors (km):")
    for key, value in result["errors_km"].items():
        print(f"  {key:>8}: {value:6.0f}")
    if args.write:
        write_json(FIT_FILE, result)
        print(f"wrote {FIT_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
