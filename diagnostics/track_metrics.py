"""Track-uncertainty metrics: covariance ellipses of ensemble positions per lead day.

For every lead day the members' centres are projected onto the local tangent
plane of their mean (x east, y north, km); their sample covariance C defines the
ellipse {d : d^T C^{-1} d <= chi2_2(q)} with chi2_2(q) = -2 ln(1 - q), the
q-quantile of a bivariate Gaussian (q = 0.9 by default; q = 0.8647 is the
"2-sigma" ellipse). Its area is pi sqrt(det C) chi2_2(q).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfda.geo import KM_PER_DEG, great_circle_km

__all__ = ["Ellipse", "ensemble_ellipse", "lead_day_metrics"]


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


def lead_day_metrics(ens_tracks: Mapping[str, tuple[np.ndarray, np.ndarray]],
                     truth: tuple[np.ndarray, np.ndarray], days: list[int],
                     quantile: float, best: tuple[np.ndarray, np.ndarray] | None = None
                     ) -> list[dict[str, Any]]:
    """Per lead day (columns of the (member, day) tracks): mean-position error, ellipse
    area, truth inside, spread (km), tracked members, and the truth's distance from the
    best track (NaN where the best track has no fix)."""
    rows = []
    for j, day in enumerate(days):
        row: dict[str, Any] = {"day": int(day)}
        row["truth_vs_best_track_km"] = math.nan if best is None else float(
            great_circle_km(truth[0][j], truth[1][j], best[0][j], best[1][j]))
        for key, (lat, lon) in ens_tracks.items():
            e = ensemble_ellipse(lat[:, j], lon[:, j], quantile=quantile)
            dist = great_circle_km(lat[:, j], lon[:, j], e.lat, e.lon)
            row[f"{key}_mean_error_km"] = float(great_circle_km(e.lat, e.lon, truth[0][j],
                                                                truth[1][j]))
            row[f"{key}_ellipse_area_km2"] = e.area_km2
            row[f"truth_in_{key}_ellipse"] = bool(e.contains(truth[0][j], truth[1][j]))
            row[f"{key}_spread_km"] = (float(np.sqrt(np.nanmean(dist**2))) if e.n_members
                                       else math.nan)
            row[f"{key}_tracked_members"] = int(e.n_members)
        rows.append(row)
    return rows
