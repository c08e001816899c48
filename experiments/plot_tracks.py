"""Track-uncertainty plots: ensemble positions and covariance ellipses per lead day.

For every lead day the members' centres are projected onto the local tangent
plane of their mean (x east, y north, km); their sample covariance C defines the
ellipse {d : d^T C^{-1} d <= chi2_2(q)} with chi2_2(q) = -2 ln(1 - q), the
q-quantile of a bivariate Gaussian (q = 0.9 by default; q = 0.8647 is the
"2-sigma" ellipse).  Its area is pi sqrt(det C) chi2_2(q).  Baseline and EnSF
ensembles are drawn side by side on the same map, like Fig. 4 of Rafid et al.
(SC'24 workshops), with the reference track (ERA5-tracked truth) and, where
given, the best track.  Coastlines come from cartopy when it is installed and
its Natural Earth data are on disk (no download is attempted); otherwise a plain
latitude/longitude frame is drawn.

Command line: ``tfda plot-tracks RUN_DIR [--quantile Q]`` re-draws
``RUN_DIR/tracks.nc`` written by ``tfda lee``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments._errors import ArgumentParser, UserError, command  # noqa: E402
from experiments.rundir import atomic_path  # noqa: E402
from models.tracking import KM_PER_DEG  # noqa: E402


@dataclass(frozen=True)
class Ellipse:
    """Quantile ellipse of one ensemble of positions (NaN fields when < 3 members)."""

    lat: float  # ensemble-mean position
    lon: float
    cov_km2: np.ndarray  # (2, 2) covariance in (east, north) km
    quantile: float
    n_members: int

    @property
    def chi2(self) -> float:
        return -2.0 * math.log1p(-self.quantile)

    @property
    def area_km2(self) -> float:
        if self.n_members < 3:
            return math.nan
        det = float(np.linalg.det(self.cov_km2))
        return math.pi * math.sqrt(max(det, 0.0)) * self.chi2

    def to_km(self, lat, lon) -> np.ndarray:
        """Tangent-plane (east, north) km of points relative to the mean, shape (..., 2)."""
        dlon = (np.asarray(lon, float) - self.lon + 180.0) % 360.0 - 180.0
        x = dlon * KM_PER_DEG * math.cos(math.radians(self.lat))
        y = (np.asarray(lat, float) - self.lat) * KM_PER_DEG
        return np.stack([x, y], axis=-1)

    def contains(self, lat, lon) -> bool:
        """Whether (lat, lon) lies inside the ellipse (Mahalanobis distance^2 <= chi2)."""
        if self.n_members < 3 or not (np.isfinite(lat) and np.isfinite(lon)):
            return False
        d = self.to_km(lat, lon)
        try:
            m2 = float(d @ np.linalg.solve(self.cov_km2, d))
        except np.linalg.LinAlgError:
            return False
        return m2 <= self.chi2

    def outline(self, n: int = 121) -> tuple[np.ndarray, np.ndarray]:
        """Boundary (lat, lon) in degrees, longitudes continuous around the mean."""
        vals, vecs = np.linalg.eigh(self.cov_km2)
        theta = np.linspace(0, 2 * np.pi, n)
        circle = np.stack([np.cos(theta), np.sin(theta)])
        pts = vecs @ (np.sqrt(np.clip(vals, 0, None) * self.chi2)[:, None] * circle)
        lat = self.lat + pts[1] / KM_PER_DEG
        lon = self.lon + pts[0] / (KM_PER_DEG * math.cos(math.radians(self.lat)))
        return lat, lon


def ensemble_ellipse(lat, lon, *, quantile: float = 0.9) -> Ellipse:
    """Mean position and covariance ellipse of member positions (member,); NaNs dropped.

    The mean is taken on the unit sphere (mean of 3-D unit vectors), so a seam at
    0/360 degrees or a high-latitude ensemble does not bias it.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    lat, lon = np.asarray(lat, float).ravel(), np.asarray(lon, float).ravel()
    ok = np.isfinite(lat) & np.isfinite(lon)
    lat, lon = lat[ok], lon[ok]
    if lat.size == 0:
        return Ellipse(math.nan, math.nan, np.full((2, 2), np.nan), quantile, 0)
    p, q = np.radians(lat), np.radians(lon)
    v = np.stack([np.cos(p) * np.cos(q), np.cos(p) * np.sin(q), np.sin(p)]).mean(1)
    mlat = math.degrees(math.atan2(v[2], math.hypot(v[0], v[1])))
    mlon = math.degrees(math.atan2(v[1], v[0])) % 360.0
    tmp = Ellipse(mlat, mlon, np.zeros((2, 2)), quantile, lat.size)
    d = tmp.to_km(lat, lon)
    cov = np.cov(d.T) if lat.size >= 2 else np.full((2, 2), np.nan)
    return Ellipse(mlat, mlon, np.atleast_2d(cov), quantile, int(lat.size))


def _display_lon(lon, ref: float) -> np.ndarray:
    """Longitudes unwrapped to within 180 degrees of ``ref`` and shown in -180..180 style."""
    lon = np.asarray(lon, float)
    return ref + (lon - ref + 180.0) % 360.0 - 180.0


def _coastline_axes(fig, pos, extent):
    """A cartopy axes with offline coastlines, or None when that is not possible."""
    try:
        import cartopy
        import cartopy.crs as ccrs
        import cartopy.feature as cfeature
    except ImportError:
        return None
    roots = [cartopy.config.get("pre_existing_data_dir", ""), cartopy.config.get("data_dir", "")]
    shp = Path("shapefiles", "natural_earth", "physical", "ne_50m_coastline.shp")
    if not any(r and (Path(r) / shp).exists() for r in roots):
        return None  # drawing would trigger a download
    ax = fig.add_subplot(*pos, projection=ccrs.PlateCarree())
    ax.set_extent(extent, crs=ccrs.PlateCarree())
    ax.add_feature(cfeature.COASTLINE.with_scale("50m"), linewidth=0.6)
    ax.gridlines(draw_labels=True, linewidth=0.3)
    return ax


def plot_track_uncertainty(
    ensembles: Mapping[str, tuple[np.ndarray, np.ndarray]],
    days: Sequence[float],
    out_path: str | os.PathLike,
    *,
    truth: tuple[np.ndarray, np.ndarray] | None = None,
    best_track: tuple[np.ndarray, np.ndarray] | None = None,
    quantile: float = 0.9,
    title: str = "",
) -> list[Path]:
    """Draw one panel per ensemble (e.g. {"Baseline": (lat, lon), "EnSF": (lat, lon)},
    each (member, day)) on a shared map; write ``out_path`` + ".png" and ".pdf".

    Returns the written paths. Files are written to a temporary name and renamed.
    """
    if not ensembles:
        raise ValueError("ensembles must not be empty")
    days = list(days)
    all_lat = [np.asarray(a, float) for a, _ in ensembles.values()]
    all_lon = [np.asarray(o, float) for _, o in ensembles.values()]
    for a, o in zip(all_lat, all_lon, strict=True):
        if a.shape != o.shape or a.ndim != 2 or a.shape[1] != len(days):
            raise ValueError(f"ensemble lat/lon must be (member, {len(days)}), got {a.shape}")
    pool = [o.ravel() for o in all_lon]
    pool += [np.asarray(tr[1], float).ravel() for tr in (truth, best_track) if tr is not None]
    finite = np.concatenate(pool)
    finite = finite[np.isfinite(finite)]
    ref = float(np.median(finite)) if finite.size else 0.0  # lost storms leave only NaN
    ref = ((ref + 180.0) % 360.0) - 180.0
    ells = {k: [ensemble_ellipse(a[:, d], o[:, d], quantile=quantile) for d in range(len(days))]
            for k, (a, o) in ensembles.items()}
    lat_pts = [*(a.ravel() for a in all_lat)]
    lon_pts = [*(_display_lon(o.ravel(), ref) for o in all_lon)]
    for es in ells.values():
        for e in es:
            if e.n_members >= 3:
                ea, eo = e.outline()
                lat_pts.append(ea)
                lon_pts.append(_display_lon(eo, ref))
    for tr in (truth, best_track):
        if tr is not None:
            lat_pts.append(np.asarray(tr[0], float))
            lon_pts.append(_display_lon(tr[1], ref))
    la, lo = np.concatenate(lat_pts), np.concatenate(lon_pts)
    la, lo = la[np.isfinite(la)], lo[np.isfinite(lo)]
    pad = 2.0
    if la.size == 0 or lo.size == 0:
        la, lo = np.array([-90.0 + pad, 90.0 - pad]), np.array([ref - 178.0, ref + 178.0])
    extent = [float(lo.min()) - pad, float(lo.max()) + pad,
              float(la.min()) - pad, float(la.max()) + pad]
    n = len(ensembles)
    fig = plt.figure(figsize=(5.2 * n, 5.0), constrained_layout=True)
    cmap = plt.get_cmap("viridis")
    colours = [cmap(i / max(len(days) - 1, 1)) for i in range(len(days))]
    for k, (name, (a, o)) in enumerate(ensembles.items()):
        ax = _coastline_axes(fig, (1, n, k + 1), extent)
        if ax is None:
            ax = fig.add_subplot(1, n, k + 1)
            ax.set_xlim(extent[:2])
            ax.set_ylim(extent[2:])
            ax.set_aspect(1.0 / math.cos(math.radians(0.5 * (extent[2] + extent[3]))))
            ax.grid(True, linewidth=0.3)
            ax.set_xlabel("longitude (degrees east)")
            ax.set_ylabel("latitude (degrees north)")
        a, o = np.asarray(a, float), _display_lon(o, ref)
        for d, e in enumerate(ells[name]):
            ax.scatter(o[:, d], a[:, d], s=6, color=colours[d], alpha=0.6, linewidths=0)
            if e.n_members >= 3:
                ea, eo = e.outline()
                ax.fill(_display_lon(eo, ref), ea, color="0.5", alpha=0.25, linewidth=0)
                ax.plot(_display_lon(eo, ref), ea, color=colours[d], linewidth=0.8)
            if np.isfinite(e.lat):
                ax.plot(_display_lon(e.lon, ref), e.lat, marker="o", color=colours[d],
                        markeredgecolor="k", markersize=5,
                        label=f"day {days[d]:g}" if k == 0 else None)
        if truth is not None:
            ax.plot(_display_lon(truth[1], ref), truth[0], "k-", marker="x", markersize=5,
                    linewidth=1.2, label="truth (tracked)")
        if best_track is not None:
            ax.plot(_display_lon(best_track[1], ref), best_track[0], "r--", linewidth=1.0,
                    label="best track")
        ax.set_title(f"{name}: members, mean, {100 * quantile:g}% ellipse")
        ax.legend(fontsize=6, loc="best")
    if title:
        fig.suptitle(title)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in (".png", ".pdf"):
        final = out.with_name(out.name + suffix)
        with atomic_path(final, suffix=suffix) as tmp:
            fig.savefig(tmp, dpi=150)
        written.append(final)
    plt.close(fig)
    return written


def plot_run(run_dir: str | os.PathLike, *, quantile: float = 0.9) -> list[Path]:
    """Re-draw the figure of a ``tfda lee`` run directory from its tracks.nc."""
    import xarray as xr

    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"RUN_DIR {run}: {'not a directory' if run.exists() else 'not found'}")
    path = run / "tracks.nc"
    if not path.is_file():
        raise UserError(f"RUN_DIR {run}: not a `tfda lee` run directory (no tracks.nc; "
                        f"run `tfda lee --out {run}` first)")
    with xr.open_dataset(path) as ds:
        ens = {name: (ds[f"{key}_lat"].values, ds[f"{key}_lon"].values)
               for key, name in (("baseline", "Baseline"), ("ensf", "EnSF"))}
        truth = (ds["truth_lat"].values, ds["truth_lon"].values)
        best = None
        if "best_lat" in ds:
            best = (ds["best_lat"].values, ds["best_lon"].values)
        days = ds["day"].values.tolist()
    return plot_track_uncertainty(ens, days, Path(run_dir) / "tracks", truth=truth,
                                  best_track=best, quantile=quantile)


@command("tfda plot-tracks")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="tfda plot-tracks", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a `tfda lee` run directory")
    parser.add_argument("--quantile", type=float, default=0.9,
                        help="ellipse quantile in (0, 1) (default 0.9)")
    args = parser.parse_args(argv)
    if not 0 < args.quantile < 1:
        raise UserError(f"--quantile must lie in (0, 1), got {args.quantile}")
    for p in plot_run(args.run_dir, quantile=args.quantile):
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
