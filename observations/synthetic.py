"""Synthetic observations: truth + spatially correlated Gaussian perturbations.

The Lee study (Rafid et al., SC'24 workshops, Sec. V) observes every ERA5 state
variable on Days -3, -2, -1 and 0 as truth plus random perturbations whose
correlation reflects how the observations are collected. tfda's model:

    y(t) = x_true(t) + eps(t),   eps ~ N(0, R),   R = D (C_lat kron C_lon) D,

with D = diag(std per variable, broadcast over the grid), variables independent, and
separable correlations on the grid (:class:`CorrelatedGridError`):

    C_lat[i, j] = (exp(-d_ij^2 / (2 L^2)) + nugget delta_ij) / (1 + nugget),
        d_ij = R_E |phi_i - phi_j|                           (meridional arc),
    C_lon[k, l] = (exp(-c_kl^2 / (2 L^2)) + nugget delta_kl) / (1 + nugget),
        c_kl = 2 R_E cos(phi_ref) sin(|lambda_k - lambda_l| / 2) (chord on the parallel
        at phi_ref).

Both kernels are positive definite (the zonal one is exp(kappa cos dlambda), whose
Fourier coefficients are modified Bessel functions I_n(kappa) > 0, so it is also
periodic on a global grid). Separability needs one reference latitude phi_ref for
zonal distances (default: the mean of the grid's latitudes). The nugget (default 1e-2,
a 1 % uncorrelated part) keeps the smallest eigenvalue of C_axis above
nugget / (1 + nugget), so cond(C_axis) <= lambda_max (1 + nugget) / nugget with
lambda_max ~ sqrt(2 pi) L / dx (about 1.8e3 per axis for L = 200 km on the 0.25-degree
grid), which keeps R^{-1} r usable in float32. Marginal variances stay exactly std^2.
R^{-1} r applies the inverse per axis: a matrix product along latitude and, on a
global uniform longitude grid (where C_lon is circulant), an FFT along longitude
(a matrix product on other grids); a sample uses the per-axis Cholesky factor
(latitude) and the circulant square root or Cholesky factor (longitude).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tfda._io import atomic_path
from tfda.da.devices import rand, randn
from tfda.geo import EARTH_RADIUS_KM
from tfda.observations.errors import DiagonalError, ObservationError

LEE_DAY0 = datetime(2023, 9, 8, 0)
"""Day 0 of the Lee study (Rafid et al. 2024, Sec. V)."""

# Per-variable observation-error std in ERA5 units (SI; relative humidity in %).
# Magnitudes of conventional-observation errors assigned in operational DA (ECMWF IFS
# documentation Part II, ch. "Observation errors"; Desroziers et al. 2005 QJRMS
# 131:3385 diagnostics): radiosonde winds ~1.5-2.5 m/s growing with height, SYNOP /
# buoy / scatterometer 10-m winds ~1.5 m/s, temperature ~1 K near the surface and
# ~0.8 K in the mid troposphere, surface and mean-sea-level pressure ~1 hPa,
# geopotential height ~7 m near 1000-850 hPa, ~10 m at 500 hPa and ~20 m at 50 hPa
# (times g = 9.81 for geopotential), relative humidity ~10 %, total column water
# vapour from GNSS / microwave radiometers ~1.5 kg m^-2.
DEFAULT_ERROR_STD: dict[str, float] = {
    "u10m": 1.5, "v10m": 1.5, "t2m": 1.0, "sp": 100.0, "msl": 100.0,
    "t850": 1.0, "u1000": 1.5, "v1000": 1.5, "z1000": 70.0,
    "u850": 1.8, "v850": 1.8, "z850": 70.0,
    "u500": 2.0, "v500": 2.0, "z500": 100.0, "t500": 0.8,
    "z50": 200.0, "r500": 10.0, "r850": 10.0, "tcwv": 1.5,
}  # fmt: skip


def observation_times(day0: datetime = LEE_DAY0, days: Sequence[int] = (-3, -2, -1, 0)) -> list[datetime]:  # noqa: E501
    """The observation times day0 + d days (Lee: 2023-09-05/06/07/08 00 UTC)."""
    return [day0 + timedelta(days=d) for d in days]


def gaussian_correlation(dist_km: torch.Tensor, length_scale_km: float, nugget: float) -> torch.Tensor:  # noqa: E501
    """(exp(-d^2 / 2L^2) + nugget I) / (1 + nugget) for a square distance matrix."""
    c = torch.exp(-0.5 * (dist_km / length_scale_km) ** 2)
    eye = torch.eye(c.shape[0], dtype=c.dtype)
    return (c + nugget * eye) / (1.0 + nugget)


class CorrelatedGridError:
    """N(0, R) on (variable, lat, lon) with R = D (C_lat kron C_lon) D (module docstring).

    ``std_per_variable``: one std per variable (shape (V,)) or a tensor broadcastable to
    (V, lat, lon); ``length_scale_km``: L of the Gaussian correlation; ``lat``, ``lon``
    in degrees. Satisfies :class:`observations.errors.ObservationError`."""

    def __init__(
        self,
        std_per_variable: Sequence[float] | torch.Tensor,
        length_scale_km: float,
        lat: Sequence[float] | np.ndarray | torch.Tensor,
        lon: Sequence[float] | np.ndarray | torch.Tensor,
        *,
        nugget: float = 1e-2,
        ref_lat: float | None = None,
    ) -> None:
        std = torch.as_tensor(std_per_variable, dtype=torch.float64)
        if std.ndim == 0:
            std = std.reshape(1)
        if std.ndim == 1:
            std = std[:, None, None]
        if std.ndim != 3 or not bool(torch.isfinite(std).all()) or bool((std <= 0).any()):
            raise ValueError("std_per_variable must be finite, > 0 and shaped (V,) or "
                             f"broadcastable to (V, lat, lon); got shape {tuple(std.shape)}")
        if not (length_scale_km > 0 and math.isfinite(length_scale_km)):
            raise ValueError(f"length_scale_km must be > 0, got {length_scale_km}")
        if not nugget > 0:
            raise ValueError(f"nugget must be > 0 (it keeps R invertible), got {nugget}")
        lat_t = torch.as_tensor(np.asarray(lat, dtype=np.float64)).ravel()
        lon_t = torch.as_tensor(np.asarray(lon, dtype=np.float64)).ravel()
        if lat_t.numel() < 1 or lon_t.numel() < 1 or bool((lat_t.abs() > 90).any()):
            raise ValueError("lat must lie in [-90, 90] and lat/lon must be non-empty")
        self.length_scale_km = float(length_scale_km)
        self.nugget = float(nugget)
        self.ref_lat = float(lat_t.mean()) if ref_lat is None else float(ref_lat)
        self.lat, self.lon = lat_t, lon_t
        self._std = std
        phi = torch.deg2rad(lat_t)
        lam = torch.deg2rad(lon_t)
        d_lat = EARTH_RADIUS_KM * (phi[:, None] - phi[None, :]).abs()
        d_lon = (2 * EARTH_RADIUS_KM * math.cos(math.radians(self.ref_lat))
                 * torch.sin(0.5 * (lam[:, None] - lam[None, :])).abs())
        self.corr_lat = gaussian_correlation(d_lat, self.length_scale_km, self.nugget)
        self.corr_lon = gaussian_correlation(d_lon, self.length_scale_km, self.nugget)
        self._chol_lat = torch.linalg.cholesky(self.corr_lat)
        self._inv_lat = torch.cholesky_solve(torch.eye(lat_t.numel(), dtype=torch.float64),
                                             self._chol_lat)
        n_lon = lon_t.numel()
        steps = torch.diff(lon_t)
        self.periodic_lon = bool(n_lon >= 3 and torch.allclose(
            steps, torch.full_like(steps, 360.0 / n_lon), rtol=1e-6, atol=1e-9))
        if self.periodic_lon:
            # circulant C_lon = F^-1 diag(eig) F; eig > 0 as C_lon is positive definite
            eig = torch.fft.rfft(self.corr_lon[0]).real
            self._lon_ops = (1.0 / eig, eig.sqrt())
        else:
            chol_lon = torch.linalg.cholesky(self.corr_lon)
            eye_lon = torch.eye(n_lon, dtype=torch.float64)
            self._lon_ops = (torch.cholesky_solve(eye_lon, chol_lon), chol_lon.mT.contiguous())
        self._cache: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, ...]] = {}

    @property
    def std(self) -> torch.Tensor:
        return self._std

    @property
    def obs_shape(self) -> tuple[int, int, int]:
        return (self._std.shape[0], self.lat.numel(), self.lon.numel())

    def _mats(self, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
        key = (dtype, device)
        if key not in self._cache:
            self._cache[key] = tuple(
                m.to(dtype=dtype, device=device)
                for m in (self._std, self._inv_lat, self._chol_lat, *self._lon_ops)
            )
        return self._cache[key]

    def _check(self, shape: tuple[int, ...], what: str) -> None:
        v, ny, nx = self.obs_shape
        ok = len(shape) >= 3 and tuple(shape[-2:]) == (ny, nx) and (v == 1 or shape[-3] == v)
        if not ok:
            raise ValueError(f"{what} must end in (variable={v}, lat={ny}, lon={nx}), "
                             f"got {tuple(shape)}")

    def precision_matvec(self, residual: torch.Tensor) -> torch.Tensor:
        """R^{-1} r = D^{-1} (C_lat^{-1} kron C_lon^{-1}) D^{-1} r, per axis; differentiable."""
        self._check(tuple(residual.shape), "residual")
        std, inv_lat, _, inv_lon, _ = self._mats(residual.dtype, residual.device)
        w = residual / std
        if self.periodic_lon:
            n = w.shape[-1]
            w = torch.fft.irfft(torch.fft.rfft(w, dim=-1) * inv_lon, n=n, dim=-1)
        else:
            w = torch.matmul(w, inv_lon)  # C_lon^{-1} is symmetric
        return torch.matmul(inv_lat, w) / std

    def sample(
        self,
        shape: tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """eps = D L_lat Z S_lon^T with Z ~ N(0, I) and S_lon S_lon^T = C_lon (Cholesky,
        or the symmetric circulant square root on a global grid): Cov = R."""
        shape = tuple(shape)
        self._check(shape, "shape")
        # Z is drawn on the generator's device and moved to ``device`` (da.devices);
        # the correlating products then run where the result is wanted.
        z = randn(shape, generator=generator, dtype=dtype, device=device)
        std, _, chol_lat, _, sqrt_lon = self._mats(dtype, z.device)
        if self.periodic_lon:
            z = torch.fft.irfft(torch.fft.rfft(z, dim=-1) * sqrt_lon, n=shape[-1], dim=-1)
        else:
            z = torch.matmul(z, sqrt_lon)
        return torch.matmul(chol_lat, z) * std

    def __repr__(self) -> str:
        return (f"CorrelatedGridError(variables={self.obs_shape[0]}, grid={self.obs_shape[1:]}, "
                f"length_scale_km={self.length_scale_km:g}, nugget={self.nugget:g}, "
                f"ref_lat={self.ref_lat:g})")


def default_error(
    variables: Sequence[str],
    lat: Sequence[float] | np.ndarray | torch.Tensor,
    lon: Sequence[float] | np.ndarray | torch.Tensor,
    *,
    length_scale_km: float | None = None,
    std: Mapping[str, float] | None = None,
    nugget: float = 1e-2,
) -> ObservationError:
    """:data:`DEFAULT_ERROR_STD` (overridden by ``std``) as a DiagonalError, or as a
    CorrelatedGridError when ``length_scale_km`` is given."""
    table = {**DEFAULT_ERROR_STD, **(std or {})}
    unknown = [v for v in variables if v not in table]
    if unknown:
        raise ValueError(f"variables: no default error std for {unknown}; pass std={{...}}")
    stds = [table[v] for v in variables]
    if length_scale_km is None:
        return DiagonalError(torch.tensor(stds, dtype=torch.float64)[:, None, None])
    return CorrelatedGridError(stds, length_scale_km, lat, lon, nugget=nugget)


@dataclass(frozen=True)
class SyntheticObservations:
    """Observations y (time, variable, lat, lon), NaN where ``mask`` is False."""

    y: torch.Tensor
    mask: torch.Tensor
    error: ObservationError
    times: tuple[datetime, ...]
    variables: tuple[str, ...]
    lat: np.ndarray
    lon: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)

    def residual(self, hx: torch.Tensor, index: int) -> torch.Tensor:
        """y[index] - H(x) for H(x) shaped (batch, variable, lat, lon), 0 where unobserved
        (exact for a diagonal R; with correlated errors it ignores correlations across
        gaps, see :func:`make_observations`)."""
        if tuple(hx.shape[1:]) != tuple(self.y.shape[1:]):
            raise ValueError(f"hx must be (batch, {', '.join(map(str, self.y.shape[1:]))}), "
                             f"got {tuple(hx.shape)}")
        y = self.y[index].to(device=hx.device, dtype=hx.dtype)
        m = self.mask[index].to(hx.device)
        return torch.where(m, y - hx, torch.zeros_like(hx))

    def to_netcdf(self, path: str | os.PathLike[str]) -> Path:
        """Write y, mask and the error std as CF netCDF (temporary name, then renamed)."""
        import xarray as xr

        std = torch.broadcast_to(self.error.std.to(torch.float64), self.y.shape[1:])
        ds = xr.Dataset(
            {
                "y": (("time", "variable", "lat", "lon"), self.y.detach().cpu().numpy(),
                      {"long_name": "synthetic observations (truth + perturbation)"}),
                "mask": (("time", "variable", "lat", "lon"),
                         self.mask.cpu().numpy().astype(np.int8),
                         {"long_name": "1 where observed", "flag_values": "0 1"}),
                "error_std": (("variable", "lat", "lon"), std.cpu().numpy(),
                              {"long_name": "observation-error standard deviation"}),
            },
            coords={
                "time": ("time", np.array(self.times, dtype="datetime64[ns]"),
                         {"standard_name": "time"}),
                "variable": ("variable", np.array(self.variables, dtype=object)),
                "lat": ("lat", self.lat, {"standard_name": "latitude", "units": "degrees_north"}),
                "lon": ("lon", self.lon, {"standard_name": "longitude", "units": "degrees_east"}),
            },
            attrs={"Conventions": "CF-1.8", "error_model": repr(self.error),
                   **{k: str(v) for k, v in self.attrs.items()}},
        )
        final = Path(path)
        with atomic_path(final, suffix=".nc") as tmp:
            ds.to_netcdf(tmp, engine="netcdf4",
                         encoding={"time": {"units": "hours since 1900-01-01 00:00:00"}})
        return final


def make_observations(
    truth: torch.Tensor,
    times: Sequence[datetime],
    *,
    variables: Sequence[str],
    lat: Sequence[float] | np.ndarray | torch.Tensor,
    lon: Sequence[float] | np.ndarray | torch.Tensor,
    error: ObservationError,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    truth_times: Sequence[datetime] | None = None,
) -> SyntheticObservations:
    """y = truth + eps, eps ~ error.sample, at ``times`` (e.g. :func:`observation_times`).

    ``truth`` is (len(times), variable, lat, lon), or any number of rows whose times are
    ``truth_times`` (the rows at ``times`` are picked). ``mask`` (bool, broadcastable to
    y) marks observed points; y is NaN elsewhere. The same ``generator`` state gives the
    same observations. With a mask and correlated errors the exact likelihood of the
    observed points uses the inverse of R restricted to them, which is not separable:
    the filter should then use :func:`default_error` without a length scale or zero the
    masked residuals, an approximation that ignores correlations across gaps."""
    times = tuple(times)
    variables = tuple(variables)
    lat_np = np.asarray(lat, dtype=np.float64).ravel()
    lon_np = np.asarray(lon, dtype=np.float64).ravel()
    if truth_times is not None:
        index = {t: i for i, t in enumerate(truth_times)}
        absent = [t.isoformat() for t in times if t not in index]
        if absent:
            raise ValueError(f"times: truth_times has no rows at {absent}")
        if truth.shape[0] != len(index):
            raise ValueError(f"truth has {truth.shape[0]} rows but truth_times {len(index)}")
        truth = truth[[index[t] for t in times]]
    expected = (len(times), len(variables), lat_np.size, lon_np.size)
    if tuple(truth.shape) != expected:
        raise ValueError(f"truth must be (time, variable, lat, lon) = {expected}, "
                         f"got {tuple(truth.shape)}")
    if not bool(torch.isfinite(truth).all()):
        raise ValueError("truth contains non-finite values")
    noise = error.sample(expected, generator=generator, dtype=truth.dtype, device=truth.device)
    y = truth + noise
    if mask is None:
        full_mask = torch.ones(expected, dtype=torch.bool, device=truth.device)
    else:
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
        try:
            full_mask = torch.broadcast_to(mask.to(truth.device), expected).clone()
        except RuntimeError as exc:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to "
                             f"{expected}") from exc
        y = torch.where(full_mask, y, torch.full_like(y, float("nan")))
    return SyntheticObservations(y=y, mask=full_mask, error=error, times=times,
                                 variables=variables, lat=lat_np, lon=lon_np)


def random_mask(
    shape: tuple[int, ...], fraction: float, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A bool mask observing about ``fraction`` of the points, uniformly at random."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return rand(shape, generator=generator) < fraction
