"""Track-uncertainty figure (Fig. 4 of Rafid et al., SC'24 workshops).

Ellipses and metrics (q-quantile covariance ellipse of the members' positions per
lead day) come from tfda.diagnostics.track_metrics.

The figure: top row, baseline and EnSF side by side on one map extent (land and
coastlines from GSHHG, offline: experiments.coastlines) with thin member tracks,
the ensemble-mean track, the q-ellipse outline of every lead day, the Day 0
position, the truth ("analogue truth" in the analogue mode: it is not Lee) and
the best track; members the tracker lost end in a cross and are counted in the
legend. Bottom row: ensemble-mean track error, ellipse area and spread against
lead day for both ensembles, filled markers where the truth lies inside the
ellipse. ``tfda lee`` draws it from the files it wrote (tracks.nc, config.json)
through :func:`plot_run`, so ``tfda plot-tracks RUN_DIR`` re-draws the same figure.

Command line: ``tfda plot-tracks RUN_DIR [--quantile Q]`` re-draws
``RUN_DIR/tracks.nc`` written by ``tfda lee``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tfda._io import atomic_path  # noqa: E402
from tfda.diagnostics.track_metrics import ensemble_ellipse, lead_day_metrics  # noqa: E402
from tfda.experiments._errors import ArgumentParser, UserError, command  # noqa: E402

__all__ = ["TrackFigure", "draw_track_figure", "figure_from_run", "plot_run"]


def _display_lon(lon, ref: float) -> np.ndarray:
    """Longitudes unwrapped to within 180 degrees of ``ref`` and shown in -180..180 style."""
    lon = np.asarray(lon, float)
    return ref + (lon - ref + 180.0) % 360.0 - 180.0


@dataclass(frozen=True)
class TrackFigure:
    """What the figure shows. Tracks are (member, step) with step 0 = Day 0 and
    ``steps_per_day`` steps a day; ``best_track`` = (hours from Day 0, lat, lon) fixes."""

    ensembles: Mapping[str, tuple[np.ndarray, np.ndarray]]
    steps_per_day: int
    truth: tuple[np.ndarray, np.ndarray] | None = None
    best_track: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    quantile: float = 0.9
    truth_label: str = "truth"
    title: str = ""

    @property
    def days(self) -> list[int]:
        n = next(iter(self.ensembles.values()))[0].shape[1]
        return list(range(1, (n - 1) // self.steps_per_day + 1))

    def daily(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lead days 1..F of a (..., step) track."""
        k = [d * self.steps_per_day for d in self.days]
        return np.asarray(lat)[..., k], np.asarray(lon)[..., k]

    def best_daily(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self.best_track is None or self.truth is None:
            return None
        hours, lat, lon = (np.asarray(a, float) for a in self.best_track)
        out = np.full((2, len(self.days)), np.nan)
        for j, d in enumerate(self.days):
            hit = np.flatnonzero(np.isclose(hours, 24.0 * d))
            if hit.size:
                out[:, j] = lat[hit[0]], lon[hit[0]]
        return out[0], out[1]

    def metrics(self) -> list[dict[str, Any]]:
        ens = {k.lower(): self.daily(a, o) for k, (a, o) in self.ensembles.items()}
        if self.truth is None:
            raise ValueError("metrics need the truth")
        return lead_day_metrics(ens, self.daily(*self.truth), self.days, self.quantile,
                                self.best_daily())


_COLOURS = ("#1f5fa8", "#c8501e", "#2a8a4a")
_LAND, _SEA, _COAST = "#ebe4d3", "#f2f6f9", "#8a8a8a"


def _degrees(axis: str):
    def fmt(v, _pos=None):
        if axis == "lon":
            v = (v + 180.0) % 360.0 - 180.0
            return f"{abs(v):.0f}°{'W' if v < 0 else 'E' if v > 0 else ''}"
        return f"{abs(v):.0f}°{'N' if v > 0 else 'S' if v < 0 else ''}"
    return matplotlib.ticker.FuncFormatter(fmt)


def _extent(data: TrackFigure, ref: float, ells) -> list[float]:
    lat_pts, lon_pts = [], []
    for a, o in data.ensembles.values():
        lat_pts.append(np.ravel(a))
        lon_pts.append(_display_lon(np.ravel(o), ref))
    for es in ells.values():
        for e in es:
            if e.n_members >= 3:
                ea, eo = e.outline()
                lat_pts.append(ea)
                lon_pts.append(_display_lon(eo, ref))
    if data.truth is not None:
        lat_pts.append(np.asarray(data.truth[0], float))
        lon_pts.append(_display_lon(data.truth[1], ref))
    la, lo = np.concatenate(lat_pts), np.concatenate(lon_pts)
    la, lo = la[np.isfinite(la)], lo[np.isfinite(lo)]
    if la.size == 0:
        return [ref - 30.0, ref + 30.0, 0.0, 50.0]
    west, east = float(lo.min()) - 3, float(lo.max()) + 3
    # open sea east of the tracks holds the legend (storms move west first)
    return [west, east + 0.5 * (east - west), float(la.min()) - 2, float(la.max()) + 2]


def _map_panel(ax, data: TrackFigure, name: str, colour: str, ells, ref: float,
               extent: list[float], day_colours) -> None:
    from tfda.experiments.coastlines import land_polygons

    ax.set_facecolor(_SEA)
    for level, poly in land_polygons((extent[0], extent[1], extent[2], extent[3])):
        ax.fill(_display_lon(poly[:, 0], ref), poly[:, 1], linewidth=0.4, zorder=1,
                facecolor=_SEA if level in (2, 4) else _LAND, edgecolor=_COAST)
    lat, lon = (np.asarray(v, float) for v in data.ensembles[name])
    lon = _display_lon(lon, ref)
    lost = 0
    for a, o in zip(lat, lon, strict=True):
        ax.plot(o, a, color=colour, linewidth=0.45, alpha=0.45, zorder=2)
        ok = np.flatnonzero(np.isfinite(a))
        if ok.size and ok[-1] < a.size - 1:
            lost += 1
            ax.plot(o[ok[-1]], a[ok[-1]], "x", color="crimson", markersize=5, mew=1.2, zorder=5)
    for e, c in zip(ells, day_colours, strict=True):
        if e.n_members >= 3:
            ea, eo = e.outline()
            ax.plot(_display_lon(eo, ref), ea, color=c, linewidth=1.1, zorder=3)
    mlat = [e.lat for e in ells]
    mlon = [_display_lon(e.lon, ref) for e in ells]
    e0 = ensemble_ellipse(lat[:, 0], lon[:, 0], quantile=data.quantile)
    ax.plot([_display_lon(e0.lon, ref), *mlon], [e0.lat, *mlat], "-o", color=colour,
            linewidth=1.8, markersize=3.5, markeredgecolor="k", markeredgewidth=0.4, zorder=4,
            label="ensemble mean (daily)")
    ax.plot([], [], color=colour, linewidth=0.6, alpha=0.6, label=f"{lat.shape[0]} members")
    ax.plot([], [], color=day_colours[-1], linewidth=1.1,
            label=f"{100 * data.quantile:g}% ellipse per lead day")
    if data.best_track is not None:
        hours, blat, blon = (np.asarray(v, float) for v in data.best_track)
        keep = (hours >= 0) & (hours <= 24.0 * (data.days[-1] + 1))
        ax.plot(_display_lon(blon[keep], ref), blat[keep], "--s", color="#d7191c",
                linewidth=1.3, markersize=3, zorder=6, label="Lee best track (NHC fixes)")
    start = None
    if data.truth is not None:
        tlat, tlon = np.asarray(data.truth[0], float), _display_lon(data.truth[1], ref)
        ax.plot(tlon, tlat, "-", color="k", linewidth=1.5, zorder=7, label=data.truth_label)
        dl, do = data.daily(tlat, tlon)
        ax.plot(do, dl, "o", color="k", markersize=3, zorder=7)
        start = (tlat[0], tlon[0])
    if start is not None:
        ax.plot(start[1], start[0], "*", color="gold", markeredgecolor="k", markersize=13,
                zorder=8, label="Day 0")
    ax.plot([], [], "x", color="crimson", mew=1.2, label=f"lost by the tracker: {lost}")
    ax.set_xlim(extent[:2])
    ax.set_ylim(extent[2:])
    ax.set_aspect(1.0 / math.cos(math.radians(0.5 * (extent[2] + extent[3]))))
    ax.xaxis.set_major_formatter(_degrees("lon"))
    ax.yaxis.set_major_formatter(_degrees("lat"))
    ax.grid(True, linewidth=0.3, color="0.6", alpha=0.6)
    ax.tick_params(labelsize=8)
    ax.set_title(name, fontsize=11)
    ax.legend(fontsize=7, loc="upper right", framealpha=0.92)


def _lead_panels(axes, data: TrackFigure, rows: list[dict[str, Any]]) -> None:
    days = [r["day"] for r in rows]
    q = f"{100 * data.quantile:g}%"
    panels = (("mean_error_km", 1.0, "ensemble-mean track error (km)"),
              ("ellipse_area_km2", 1e-5, f"{q} ellipse area (10$^5$ km$^2$)"),
              ("spread_km", 1.0, "spread (km)"))
    for ax, (key, scale, label) in zip(axes, panels, strict=True):
        for (name, _), colour in zip(data.ensembles.items(), _COLOURS, strict=False):
            k = name.lower()
            y = np.array([r[f"{k}_{key}"] for r in rows], float) * scale
            inside = np.array([r[f"truth_in_{k}_ellipse"] for r in rows])
            ax.plot(days, y, "-", color=colour, linewidth=1.4, label=name)
            ax.scatter(np.array(days)[inside], y[inside], s=30, color=colour, zorder=3,
                       edgecolor="k", linewidth=0.5)
            ax.scatter(np.array(days)[~inside], y[~inside], s=30, facecolor="white",
                       edgecolor=colour, linewidth=1.2, zorder=3)
        if key == "mean_error_km":
            tb = np.array([r["truth_vs_best_track_km"] for r in rows], float)
            if np.isfinite(tb).any():
                ok = np.isfinite(tb)
                ax.plot(np.array(days)[ok], tb[ok], "--d", color="0.45", markersize=4,
                        linewidth=1.0, label=f"{data.truth_label} vs best track")
            ax.scatter([], [], s=30, color="0.3", edgecolor="k", label=f"truth inside {q}")
            ax.scatter([], [], s=30, facecolor="white", edgecolor="0.3",
                       label=f"truth outside {q}")
            ax.legend(fontsize=7, loc="upper left")
        ax.set_xlabel("lead day", fontsize=9)
        ax.set_ylabel(label, fontsize=9)
        ax.set_xticks(days)
        ax.set_ylim(bottom=0)
        ax.grid(True, linewidth=0.3, alpha=0.6)
        ax.tick_params(labelsize=8)


def draw_track_figure(data: TrackFigure, out_path: str | os.PathLike) -> list[Path]:
    """Write the figure (module docstring) to ``out_path`` + ".png" and ".pdf" (atomically);
    returns the paths."""
    if not data.ensembles:
        raise ValueError("ensembles must not be empty")
    shapes = {np.shape(a) for a, _ in data.ensembles.values()}
    shapes |= {np.shape(o) for _, o in data.ensembles.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2 or not data.days:
        raise ValueError(f"ensemble lat/lon must be (member, step) of one shape covering at "
                         f"least one day of {data.steps_per_day} steps, got {sorted(shapes)}")
    days = data.days
    ells = {k: [ensemble_ellipse(*(v[:, j] for v in data.daily(a, o)), quantile=data.quantile)
                for j in range(len(days))] for k, (a, o) in data.ensembles.items()}
    pool = np.concatenate([np.ravel(o) for _, o in data.ensembles.values()])
    pool = pool[np.isfinite(pool)]
    ref = (float(np.median(pool)) + 180.0) % 360.0 - 180.0 if pool.size else 0.0
    extent = _extent(data, ref, ells)
    cmap = plt.get_cmap("viridis")
    day_colours = [cmap(0.9 * i / max(len(days) - 1, 1)) for i in range(len(days))]
    n = len(data.ensembles)
    fig = plt.figure(figsize=(5.8 * n, 9.4), constrained_layout=True)
    grid = fig.add_gridspec(2, 3 * n, height_ratios=[2.3, 1.0])
    for k, (name, colour) in enumerate(zip(data.ensembles, _COLOURS, strict=False)):
        ax = fig.add_subplot(grid[0, 3 * k:3 * k + 3])
        _map_panel(ax, data, name, colour, ells[name], ref, extent, day_colours)
    sm = matplotlib.cm.ScalarMappable(cmap=matplotlib.colors.ListedColormap(day_colours),
                                      norm=matplotlib.colors.BoundaryNorm(
                                          np.arange(0.5, len(days) + 1), len(days)))
    cb = fig.colorbar(sm, ax=fig.axes, location="right", shrink=0.6, ticks=days)
    cb.set_label("lead day (ellipse outline)", fontsize=9)
    if data.truth is not None:
        width = 3 * n // 3
        axes = [fig.add_subplot(grid[1, i * width:(i + 1) * width]) for i in range(3)]
        _lead_panels(axes, data, data.metrics())
    if data.title:
        fig.suptitle(data.title, fontsize=12)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in (".png", ".pdf"):
        final = out.with_name(out.name + suffix)
        with atomic_path(final, suffix=suffix) as tmp:
            fig.savefig(tmp, dpi=170)
        written.append(final)
    plt.close(fig)
    return written


def figure_from_run(run_dir: str | os.PathLike, *, quantile: float | None = None
                    ) -> TrackFigure:
    """The figure's content from a ``tfda lee`` run directory (tracks.nc, config.json)."""
    import xarray as xr

    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"RUN_DIR {run}: {'not a directory' if run.exists() else 'not found'}")
    path = run / "tracks.nc"
    if not path.is_file():
        raise UserError(f"RUN_DIR {run}: not a `tfda lee` run directory (no tracks.nc; "
                        f"run `tfda lee --out {run}` first)")
    cfg_path = run / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    with xr.open_dataset(path) as ds:
        ens = {name: (ds[f"{key}_lat_6h"].values, ds[f"{key}_lon_6h"].values)
               for key, name in (("baseline", "Baseline"), ("ensf", "EnSF"))}
        hours = ds["lead_hours"].values
        spd = int(round(24.0 / float(hours[1] - hours[0])))
        truth = (ds["truth_lat_6h"].values, ds["truth_lon_6h"].values)
        best = None
        if "best_fix_hours" in ds:
            best = (ds["best_fix_hours"].values, ds["best_fix_lat"].values,
                    ds["best_fix_lon"].values)
        day0 = ds.attrs.get("day0", cfg.get("day0", ""))
    mode = cfg.get("mode", "")
    members = next(iter(ens.values()))[0].shape[0]
    return TrackFigure(
        ens, spd, truth=truth, best_track=best,
        quantile=float(quantile if quantile is not None else cfg.get("quantile", 0.9)),
        truth_label="analogue truth" if mode == "analogue" else "truth (tracked in ERA5)",
        title=(f"Hurricane Lee{' analogue' if mode == 'analogue' else ''}: {members} members, "
               f"Day 0 = {str(day0).replace('T', ' ')} UTC"))


def plot_run(run_dir: str | os.PathLike, *, quantile: float | None = None) -> list[Path]:
    """Draw ``RUN_DIR/tracks.png`` and ``.pdf`` of a ``tfda lee`` run directory."""
    return draw_track_figure(figure_from_run(run_dir, quantile=quantile),
                             Path(run_dir) / "tracks")


@command("tfda plot-tracks")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="tfda plot-tracks", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a `tfda lee` run directory")
    parser.add_argument("--quantile", type=float, default=None,
                        help="ellipse quantile in (0, 1) (default: the run's, from config.json)")
    args = parser.parse_args(argv)
    if args.quantile is not None and not 0 < args.quantile < 1:
        raise UserError(f"--quantile must lie in (0, 1), got {args.quantile}")
    for p in plot_run(args.run_dir, quantile=args.quantile):
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
