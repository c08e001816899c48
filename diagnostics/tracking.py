"""Hurricane-centre tracking on regular latitude/longitude grids.

The detector follows TempestExtremes (Ullrich & Zarzycki 2017, GMD 10, 1069;
Zarzycki & Ullrich 2017, GRL 44, 1141): a candidate is the minimum of mean
sea-level pressure (msl); it is kept when a closed contour exists, i.e. a flood
fill from the candidate over points with msl < msl_min + 200 Pa stays within
5.5 great-circle degrees, and -- when u850/v850 are given -- when the 850-hPa
relative vorticity (cyclonic sign) near the centre exceeds a threshold.  The
sub-grid centre is the vertex of a local quadratic fitted to msl by Gaussian-
weighted least squares, re-centred on its own vertex a few times: with weights
symmetric about the estimate, a radially symmetric vortex (Holland 1980) is
located to a few hundredths of a grid spacing when its radius of maximum wind is
between about 0.7 and 6 grid spacings, where a plain 3x3 parabola is biased by
up to 0.3 spacing (its flat-bottomed core is not quadratic).

Stitching starts from a first guess (the known initial position) and searches,
at each later time, within ``max_displacement_km`` per 6 h of the previous
centre.  The default, 500 km per 6 h (23 m/s), exceeds the fastest tropical-
cyclone translation speeds outside extratropical transition (Lee moved at up to
about 15 m/s near New England) while staying below half the typical distance
between two coexisting storms, so a track neither drops a fast storm nor jumps
to a neighbour.  Every step is batched over ensemble members; a member whose
storm is lost gets NaN from then on.  Longitudes are periodic on global grids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tfda.geo import EARTH_RADIUS_M, KM_PER_DEG, central_angle, great_circle_km


@dataclass(frozen=True)
class TrackerConfig:
    """Detection and stitching thresholds (defaults: TempestExtremes' TC settings)."""

    closed_contour_pa: float = 200.0
    closed_contour_radius_deg: float = 5.5
    vorticity_threshold: float = 5e-5  # s^-1, cyclonic 850-hPa relative vorticity
    vorticity_radius_deg: float = 2.0
    max_displacement_km: float = 500.0  # per 6 h; see the module docstring
    fit_halfwidth: int = 3  # stencil half-width (grid points) of the quadratic fit
    fit_sigma: float = 1.0  # Gaussian weight width in grid spacings
    fit_iterations: int = 6

    def __post_init__(self) -> None:
        for name in ("closed_contour_radius_deg", "max_displacement_km", "fit_sigma"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.fit_halfwidth < 1:
            raise ValueError(f"fit_halfwidth must be >= 1, got {self.fit_halfwidth}")


@dataclass(frozen=True)
class Track:
    """Centres per member and time: lat, lon, msl_min (Pa) shaped (member, time); NaN = lost."""

    lat: np.ndarray
    lon: np.ndarray
    msl_min: np.ndarray


def _gc_deg(lat1: torch.Tensor, lon1: torch.Tensor, lat2: torch.Tensor, lon2: torch.Tensor):
    return torch.rad2deg(central_angle(lat1, lon1, lat2, lon2))


def bearing_deg(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Initial bearing (degrees clockwise from north) from point 1 to point 2."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dl = np.radians(np.asarray(lon2) - np.asarray(lon1))
    y = np.sin(dl) * np.cos(p2)
    x = np.cos(p1) * np.sin(p2) - np.sin(p1) * np.cos(p2) * np.cos(dl)
    return np.degrees(np.arctan2(y, x))


def along_cross_track_error(lat, lon, ref_lat, ref_lon) -> tuple[np.ndarray, np.ndarray]:
    """Along- and cross-track errors (km) of positions against a reference track.

    ``lat``/``lon`` are shaped (..., time) like ``ref_lat``/``ref_lon`` (time,).
    The reference heading at each time is the bearing of the centred difference of
    the reference track (one-sided at the ends); along-track error is positive
    ahead of the reference, cross-track error positive to the right of its motion.
    """
    ref_lat, ref_lon = np.asarray(ref_lat, float), np.asarray(ref_lon, float)
    if ref_lat.ndim != 1 or ref_lat.size < 2:
        raise ValueError("ref_lat/ref_lon must be 1-D with at least two times")
    nxt = np.r_[np.arange(1, ref_lat.size), ref_lat.size - 1]
    prv = np.r_[0, np.arange(ref_lat.size - 1)]
    heading = bearing_deg(ref_lat[prv], ref_lon[prv], ref_lat[nxt], ref_lon[nxt])
    dist = great_circle_km(ref_lat, ref_lon, lat, lon)
    angle = np.radians(bearing_deg(ref_lat, ref_lon, lat, lon) - heading)
    return dist * np.cos(angle), dist * np.sin(angle)


def _grid(lat: torch.Tensor, lon: torch.Tensor) -> tuple[float, float, bool]:
    dlat = (lat[1:] - lat[:-1]).double()
    dlon = (lon[1:] - lon[:-1]).double()
    if lat.numel() < 3 or lon.numel() < 3:
        raise ValueError("lat and lon need at least 3 points each")
    for name, d in (("lat", dlat), ("lon", dlon)):
        if not bool(torch.allclose(d, d[0], rtol=1e-4, atol=1e-6)) or float(d[0]) == 0:
            raise ValueError(f"{name} must be regularly spaced (tracker works on regular grids)")
    if float(dlon[0]) < 0:
        raise ValueError("lon must increase")
    periodic = abs(float(dlon[0]) * lon.numel() - 360.0) < 1e-3 * abs(float(dlon[0]))
    return float(dlat[0]), float(dlon[0]), periodic


def relative_vorticity(u: torch.Tensor, v: torch.Tensor, lat, lon) -> torch.Tensor:
    """Relative vorticity (s^-1) on the sphere, zeta = (dv/dlambda - d(u cos phi)/dphi)/(a cos phi).

    ``u``, ``v`` shaped (..., lat, lon) in m/s; centred differences, periodic in
    longitude on global grids, one-sided at the other edges.
    """
    lat = torch.as_tensor(lat, dtype=u.dtype)
    lon = torch.as_tensor(lon, dtype=u.dtype)
    dlat, dlon, periodic = _grid(lat, lon)
    a = EARTH_RADIUS_M
    coslat = torch.cos(torch.deg2rad(lat)).clamp_min(1e-6)[:, None]
    dl, dp = math.radians(dlon), math.radians(dlat)
    if periodic:
        dvdl = (torch.roll(v, -1, -1) - torch.roll(v, 1, -1)) / (2 * dl)
    else:
        dvdl = torch.gradient(v, spacing=dl, dim=-1)[0]
    ducos = torch.gradient(u * coslat, spacing=dp, dim=-2)[0]
    return (dvdl - ducos) / (a * coslat)


def _window(field: torch.Tensor, i0: torch.Tensor, j0: torch.Tensor, ki: int, kj: int,
            periodic: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather (M, 2ki+1, 2kj+1) windows of field (M, H, W) centred on (i0, j0)."""
    m, h, w = field.shape
    ii = i0[:, None] + torch.arange(-ki, ki + 1, device=field.device)
    jj = j0[:, None] + torch.arange(-kj, kj + 1, device=field.device)
    valid_i = (ii >= 0) & (ii < h)
    if periodic:
        jj = jj % w
        valid_j = torch.ones_like(jj, dtype=torch.bool)
    else:
        valid_j = (jj >= 0) & (jj < w)
    ii, jj = ii.clamp(0, h - 1), jj.clamp(0, w - 1)
    rows = torch.arange(m, device=field.device)[:, None, None]
    out = field[rows, ii[:, :, None], jj[:, None, :]]
    return out, valid_i[:, :, None] & valid_j[:, None, :], ii, jj


def _half_widths(radius_deg: float, dlat: float, dlon: float, max_abs_lat: float, w: int):
    ki = math.ceil(radius_deg / abs(dlat)) + 1
    coslat = max(math.cos(math.radians(min(max_abs_lat + radius_deg, 89.0))), 0.05)
    kj = min(math.ceil(radius_deg / (dlon * coslat)) + 1, (w - 1) // 2)
    return ki, kj


def _quadratic_vertex(win: torch.Tensor, valid: torch.Tensor, config: TrackerConfig):
    """Vertex (dy, dx) in grid units of a Gaussian-weighted quadratic fit, iterated."""
    k = config.fit_halfwidth
    off = torch.arange(-k, k + 1, dtype=torch.float64, device=win.device)
    y = off[:, None].expand(2 * k + 1, 2 * k + 1).reshape(-1)
    x = off[None, :].expand(2 * k + 1, 2 * k + 1).reshape(-1)
    design = torch.stack([torch.ones_like(x), x, y, x * x, y * y, x * y], dim=1)  # (P, 6)
    f = win.reshape(win.shape[0], -1).double()
    vmask = valid.reshape(valid.shape[0], -1).double()
    f = f - (f * vmask).sum(1, keepdim=True) / vmask.sum(1, keepdim=True)  # conditioning
    centre = torch.zeros(win.shape[0], 2, dtype=torch.float64, device=win.device)
    eye = 1e-9 * torch.eye(6, dtype=torch.float64, device=win.device)
    for _ in range(config.fit_iterations):
        r2 = (y[None] - centre[:, :1]) ** 2 + (x[None] - centre[:, 1:]) ** 2
        wts = torch.exp(-r2 / (2 * config.fit_sigma**2)) * vmask
        ata = torch.einsum("mp,pi,pj->mij", wts, design, design) + eye
        atb = torch.einsum("mp,pi,mp->mi", wts, design, f)
        c = torch.linalg.solve(ata, atb[..., None])[..., 0]
        hess = torch.stack([torch.stack([2 * c[:, 4], c[:, 5]], -1),
                            torch.stack([c[:, 5], 2 * c[:, 3]], -1)], -2)  # (y, x) order
        grad = torch.stack([c[:, 2], c[:, 1]], -1)
        det = hess[:, 0, 0] * hess[:, 1, 1] - hess[:, 0, 1] ** 2
        ok = (det > 0) & (hess[:, 0, 0] > 0)
        safe = torch.where(ok[:, None, None], hess,
                           torch.eye(2, dtype=hess.dtype, device=hess.device)[None])
        step = -torch.linalg.solve(safe, grad[..., None])[..., 0]
        centre = torch.where(ok[:, None], step.clamp(-1.0, 1.0), torch.zeros_like(step))
    return centre


def find_centres(msl: torch.Tensor, lat, lon, guess_lat, guess_lon, *,
                 search_km: float, u850: torch.Tensor | None = None,
                 v850: torch.Tensor | None = None, config: TrackerConfig = TrackerConfig()):
    """Storm centres (lat, lon, msl_min), each (member,), NaN where none passes the tests.

    ``msl`` (member, lat, lon) in Pa; guesses (member,) in degrees (NaN = already
    lost). The candidate is the msl minimum within ``search_km`` of the guess.
    """
    if msl.ndim != 3:
        raise ValueError(f"msl must be (member, lat, lon), got shape {tuple(msl.shape)}")
    lat = torch.as_tensor(lat, dtype=torch.float64, device=msl.device)
    lon = torch.as_tensor(lon, dtype=torch.float64, device=msl.device)
    dlat, dlon, periodic = _grid(lat, lon)
    m, h, w = msl.shape
    g_lat = torch.as_tensor(guess_lat, dtype=torch.float64, device=msl.device).reshape(m)
    g_lon = torch.as_tensor(guess_lon, dtype=torch.float64, device=msl.device).reshape(m)
    alive = torch.isfinite(g_lat) & torch.isfinite(g_lon)
    g_lat, g_lon = torch.nan_to_num(g_lat), torch.nan_to_num(g_lon)
    field = msl.double()
    # nearest grid point to each guess, then the masked minimum in a search window
    i0 = ((g_lat - lat[0]) / dlat).round().long().clamp(0, h - 1)
    j0 = torch.remainder(g_lon - lon[0], 360.0) if periodic else g_lon - lon[0]
    j0 = (j0 / dlon).round().long()
    j0 = j0 % w if periodic else j0.clamp(0, w - 1)
    max_lat = float(g_lat.abs().max()) if m else 0.0
    ki, kj = _half_widths(search_km / KM_PER_DEG, dlat, dlon, max_lat, w)
    win, valid, ii, jj = _window(field, i0, j0, ki, kj, periodic)
    dist = _gc_deg(g_lat[:, None, None], g_lon[:, None, None], lat[ii][:, :, None],
                   lon[jj][:, None, :]) * KM_PER_DEG
    cand = torch.where(valid & (dist <= search_km), win, torch.full_like(win, math.inf))
    flat = cand.reshape(m, -1).argmin(1)
    ci = ii[torch.arange(m), flat // win.shape[2]]
    cj = jj[torch.arange(m), flat % win.shape[2]]
    alive &= torch.isfinite(cand.reshape(m, -1).min(1).values)
    pmin = field[torch.arange(m), ci, cj]
    c_lat, c_lon = lat[ci], lon[cj]
    alive &= _closed_contour(field, ci, cj, c_lat, c_lon, pmin, lat, lon, dlat, dlon,
                             periodic, config)
    if (u850 is None) != (v850 is None):
        raise ValueError("give both u850 and v850, or neither")
    if u850 is not None:
        zeta = relative_vorticity(u850.double(), v850.double(), lat, lon)
        kvi, kvj = _half_widths(config.vorticity_radius_deg, dlat, dlon, max_lat, w)
        zw, zvalid, zi, zj = _window(zeta, ci, cj, kvi, kvj, periodic)
        zd = _gc_deg(c_lat[:, None, None], c_lon[:, None, None], lat[zi][:, :, None],
                     lon[zj][:, None, :])
        sign = torch.where(c_lat >= 0, 1.0, -1.0).double()[:, None, None]
        cyclonic = torch.where(zvalid & (zd <= config.vorticity_radius_deg), zw * sign,
                               torch.full_like(zw, -math.inf))
        alive &= cyclonic.reshape(m, -1).max(1).values > config.vorticity_threshold
    k = config.fit_halfwidth
    fw, fvalid, _, _ = _window(field, ci, cj, k, k, periodic)
    off = _quadratic_vertex(fw, fvalid, config)
    out_lat = c_lat + off[:, 0] * dlat
    out_lon = torch.remainder(c_lon + off[:, 1] * dlon, 360.0)
    nan = torch.full_like(out_lat, math.nan)
    return (torch.where(alive, out_lat, nan), torch.where(alive, out_lon, nan),
            torch.where(alive, pmin, nan))


def _closed_contour(field, ci, cj, c_lat, c_lon, pmin, lat, lon, dlat, dlon, periodic,
                    config: TrackerConfig) -> torch.Tensor:
    """TempestExtremes' closed-contour test, a flood fill done by repeated 3x3 dilation."""
    m, _, w = field.shape
    radius = config.closed_contour_radius_deg
    max_lat = float(c_lat.abs().max()) if m else 0.0
    ki, kj = _half_widths(radius, dlat, dlon, max_lat, w)
    ki, kj = ki + 1, kj + 1
    if periodic:
        kj = min(kj, (w - 1) // 2)
    win, valid, ii, jj = _window(field, ci, cj, ki, kj, periodic)
    dist = _gc_deg(c_lat[:, None, None], c_lon[:, None, None], lat[ii][:, :, None],
                   lon[jj][:, None, :])
    # outside the domain counts as open: a storm at the edge of a regional box is not closed
    passable = (win < pmin[:, None, None] + config.closed_contour_pa) | ~valid
    region = torch.zeros_like(passable)
    region[:, ki, kj] = True
    for _ in range(win.shape[1] * win.shape[2]):
        grown = F.max_pool2d(region[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0
        grown &= passable
        if bool((grown == region).all()):
            break
        region = grown
    escaped = region & ((dist > radius) | ~valid)
    return ~escaped.reshape(m, -1).any(1)


class StormTracker:
    """Incremental, member-batched stitching: feed one time at a time with :meth:`update`.

    Memory stays one time level, so long ensemble forecasts on 0.25-degree grids
    can be tracked while they run. The first update searches within
    ``max_displacement_km`` of ``first_guess`` (lat, lon in degrees), each later one
    within ``max_displacement_km * hours_per_step / 6`` of the previous centre;
    a member once lost stays NaN.
    """

    def __init__(self, lat, lon, first_guess: tuple[float, float], members: int, *,
                 hours_per_step: float = 6.0, config: TrackerConfig = TrackerConfig()) -> None:
        if hours_per_step <= 0:
            raise ValueError(f"hours_per_step must be > 0, got {hours_per_step}")
        if members < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        self.lat = torch.as_tensor(lat, dtype=torch.float64).cpu()
        self.lon = torch.as_tensor(lon, dtype=torch.float64).cpu()
        _grid(self.lat, self.lon)
        self.config = config
        self.step_km = config.max_displacement_km * hours_per_step / 6.0
        self._guess = (torch.full((members,), float(first_guess[0]), dtype=torch.float64),
                       torch.full((members,), float(first_guess[1]) % 360.0,
                                  dtype=torch.float64))
        self._rows: list[np.ndarray] = []
        self._grid_on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, msl: torch.Tensor, u850: torch.Tensor | None = None,
               v850: torch.Tensor | None = None) -> np.ndarray:
        """Add one time, fields (member, lat, lon); returns (3, member) lat, lon, msl_min."""
        search = self.config.max_displacement_km if not self._rows else self.step_km
        uv = {} if u850 is None else {"u850": u850, "v850": v850}
        dev = msl.device
        if dev not in self._grid_on:  # the grid goes to the fields' device once
            self._grid_on[dev] = (self.lat.to(dev), self.lon.to(dev))
        res = find_centres(msl, *self._grid_on[dev],
                           self._guess[0].to(msl.device), self._guess[1].to(msl.device),
                           search_km=search, config=self.config, **uv)
        row = np.stack([r.detach().cpu().numpy() for r in res])
        self._guess = (res[0].cpu(), res[1].cpu())
        self._rows.append(row)
        return row

    def result(self) -> Track:
        if not self._rows:
            raise ValueError("no time has been added yet")
        out = np.stack(self._rows, axis=-1)  # (3, member, time)
        return Track(lat=out[0], lon=out[1], msl_min=out[2])


def track_storm(msl: torch.Tensor, lat, lon, first_guess: tuple[float, float], *,
                hours_per_step: float = 6.0, u850: torch.Tensor | None = None,
                v850: torch.Tensor | None = None,
                config: TrackerConfig = TrackerConfig()) -> Track:
    """Track one storm through ``msl`` (member, time, lat, lon), batched over members
    (see :class:`StormTracker` for the stitching rule)."""
    if msl.ndim != 4:
        raise ValueError(f"msl must be (member, time, lat, lon), got {tuple(msl.shape)}")
    tracker = StormTracker(lat, lon, first_guess, msl.shape[0],
                           hours_per_step=hours_per_step, config=config)
    for t in range(msl.shape[1]):
        tracker.update(msl[:, t], None if u850 is None else u850[:, t],
                       None if v850 is None else v850[:, t])
    return tracker.result()


def track_states(states: torch.Tensor, variables, lat, lon, first_guess, *,
                 hours_per_step: float = 6.0, config: TrackerConfig = TrackerConfig()) -> Track:
    """Track from model states (member, time, variable, lat, lon) holding "msl" (and
    "u850"/"v850" when present, which switches the vorticity test on)."""
    names = list(variables)
    if "msl" not in names:
        raise ValueError(f"variables must include 'msl', got {names}")
    uv = {}
    if "u850" in names and "v850" in names:
        uv = {"u850": states[:, :, names.index("u850")],
              "v850": states[:, :, names.index("v850")]}
    return track_storm(states[:, :, names.index("msl")], lat, lon, first_guess,
                       hours_per_step=hours_per_step, config=config, **uv)
