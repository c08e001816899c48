"""Point observations: a gridded state bilinearly interpolated to scattered locations.

:class:`PointObservations` is an observation operator (``observations.operators``)
for a state shaped (member, variable, lat, lon): observation i reads variable
``variable[i]`` at (``lat[i]``, ``lon[i]``) degrees by bilinear interpolation in
(lat, lon) between the four grid points of the cell holding it (e.g. Press et al.,
*Numerical Recipes*, 3rd ed., Sec. 3.6, Eq. 3.6.5)::

    H_i(x) = (1 - s)(1 - t) x[v, r, c] + (1 - s) t x[v, r, c + 1]
             + s (1 - t) x[v, r + 1, c] + s t x[v, r + 1, c + 1],

with s, t the fractional positions of the point between rows r, r + 1 and columns
c, c + 1. On a global grid (its columns span 360 degrees) the last column's cell
wraps to the first, so a point at 359.9 E on a 0..358 E grid is interpolated
between 358 E and 0 E. Latitude may ascend or descend. H is linear in x: the corner
indices and weights are computed once, and a call is one gather and a weighted sum,
differentiable and batched over members. ``locations`` (n_obs, 2) = (lat, lon)
degrees serve localisation with :func:`da.filters.grid_distance`.

:meth:`PointObservations.from_dataframe` reads a table in earth2studio's
observation schema (columns lat, lon, variable, observation, error; others such as
time are ignored) and returns the operator and the observation vector y;
:func:`read_point_table` reads such a table from CSV, Parquet or netCDF.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tfda.observations.operators import ErrorLike, as_error

__all__ = ["PointObservations", "COLUMNS", "read_point_table"]

#: the columns :meth:`PointObservations.from_dataframe` needs
COLUMNS: tuple[str, ...] = ("lat", "lon", "variable", "observation", "error")
_TOL = 1e-9  # degrees: points on a grid edge up to round-off count as inside


def _vector(name: str, values: Any) -> np.ndarray:
    """A finite 1-D float64 array from ``values``; ValueError naming ``name``."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    try:
        arr = np.array(values, dtype=np.float64).reshape(-1)  # a writable copy
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers") from None
    if arr.size and not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(f"{name}[{bad}] is not finite ({arr[bad]})")
    return arr


def _bracket(grid: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cell index i (grid[i] <= p <= grid[i + 1]) and fraction for an ascending grid."""
    i = np.clip(np.searchsorted(grid, p, side="right") - 1, 0, grid.size - 2)
    frac = (p - grid[i]) / (grid[i + 1] - grid[i])
    return i, np.clip(frac, 0.0, 1.0)


def _lat_rows(grid_lat: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray]:
    """Rows r0, r1 and the weight of r1 for each point; ascending or descending grid."""
    lo, hi = float(grid_lat.min()), float(grid_lat.max())
    outside = (lat < lo - _TOL) | (lat > hi + _TOL)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(f"lat[{i}] = {lat[i]} is outside the grid's latitude range "
                         f"[{lo}, {hi}]")
    if grid_lat[0] < grid_lat[-1]:
        i, s = _bracket(grid_lat, lat)
        return i, i + 1, s
    # descending: bracket on the reversed grid, then map the rows back
    i, s = _bracket(grid_lat[::-1].copy(), lat)
    n = grid_lat.size
    return n - 1 - i, n - 2 - i, s


def _lon_columns(grid_lon: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray]:
    """Columns c0, c1 and the weight of c1 for each point; wraps on a global grid."""
    n, start = grid_lon.size, float(grid_lon[0])
    p = start + np.mod(lon - start, 360.0)  # the same meridian, in [start, start + 360)
    spacing = np.diff(grid_lon)
    gap = start + 360.0 - float(grid_lon[-1])  # the cell across the seam
    periodic = abs(gap - float(np.median(spacing))) <= 1e-6 * 360.0
    if periodic:
        i, t = _bracket(np.append(grid_lon, start + 360.0), p)
        return i, (i + 1) % n, t
    # a point just west of the first column, within round-off, sits on it
    p = np.where(p > start + 360.0 - _TOL, p - 360.0, p)
    outside = p > float(grid_lon[-1]) + _TOL
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(f"lon[{i}] = {lon[i]} is outside the grid's longitude range "
                         f"[{grid_lon[0]}, {grid_lon[-1]}] (the grid is not global)")
    i, t = _bracket(grid_lon, np.maximum(p, start))
    return i, i + 1, t


def _check_grid(grid_lat: Any, grid_lon: Any) -> tuple[np.ndarray, np.ndarray]:
    glat, glon = _vector("grid_lat", grid_lat), _vector("grid_lon", grid_lon)
    if glat.size < 2 or glon.size < 2:
        raise ValueError("grid_lat and grid_lon need at least 2 points each for bilinear "
                         f"interpolation, got {glat.size} and {glon.size}")
    d = np.diff(glat)
    if not ((d > 0).all() or (d < 0).all()):
        raise ValueError("grid_lat must be strictly ascending or strictly descending")
    if not (np.diff(glon) > 0).all():
        raise ValueError("grid_lon must be strictly ascending")
    if glon[-1] - glon[0] > 360.0 + _TOL:
        raise ValueError(f"grid_lon spans {glon[-1] - glon[0]} > 360 degrees")
    return glat, glon


def _variable_index(variable: str | Sequence[str], variables: Sequence[str],
                    n_obs: int) -> np.ndarray:
    names = [variable] * n_obs if isinstance(variable, str) else [str(v) for v in variable]
    if len(names) != n_obs:
        raise ValueError(f"variable has {len(names)} entries for {n_obs} points")
    known = {name: k for k, name in enumerate(variables)}
    for name in names:
        if name not in known:
            raise ValueError(f"variable {name!r} is not among the state's variables "
                             f"{list(variables)}")
    return np.asarray([known[name] for name in names], dtype=np.int64)


class PointObservations:
    """Bilinear interpolation of a (member, variable, lat, lon) state to points.

    Args:
        lat, lon: (n_obs,) point positions in degrees (any longitude convention).
        variable: the observed variable per point, or one name for all points.
        error: observation error std (a float, an (n_obs,) tensor) or error model.
        grid_lat: (n_lat,) grid latitudes, ascending or descending.
        grid_lon: (n_lon,) grid longitudes, ascending; global when they span 360
            degrees at a uniform step (the seam cell then wraps).
        variables: names of the state's variables, in state order.

    Raises ValueError naming the point, variable or argument at fault.
    """

    def __init__(self, lat: Any, lon: Any, variable: str | Sequence[str], error: ErrorLike,
                 *, grid_lat: Any, grid_lon: Any, variables: Sequence[str]) -> None:
        glat, glon = _check_grid(grid_lat, grid_lon)
        plat, plon = _vector("lat", lat), _vector("lon", lon)
        if (np.abs(plat) > 90.0).any():
            bad = int(np.flatnonzero(np.abs(plat) > 90.0)[0])
            raise ValueError(f"lat[{bad}] = {plat[bad]} is not within -90 .. 90")
        if isinstance(variables, str) or not all(isinstance(v, str) for v in variables):
            raise TypeError(f"variables must be a sequence of names, got {variables!r}")
        if not isinstance(variable, str) and not all(isinstance(v, str) for v in variable):
            raise TypeError(f"variable must be a name or a sequence of names, got {variable!r}")
        if plat.size != plon.size:
            raise ValueError(f"lat has {plat.size} points but lon has {plon.size}")
        if plat.size == 0:
            raise ValueError("PointObservations: no points given")
        self.variables = tuple(str(v) for v in variables)
        self.state_shape = (len(self.variables), glat.size, glon.size)
        v = _variable_index(variable, self.variables, plat.size)
        self.variable = tuple(self.variables[i] for i in v)  # per observation
        r0, r1, s = _lat_rows(glat, plat)
        c0, c1, t = _lon_columns(glon, plon)
        base = v * glat.size * glon.size
        corners = np.stack([r0 * glon.size + c0, r0 * glon.size + c1,
                            r1 * glon.size + c0, r1 * glon.size + c1], axis=1)
        weights = np.stack([(1 - s) * (1 - t), (1 - s) * t, s * (1 - t), s * t], axis=1)
        self.indices = torch.as_tensor(base[:, None] + corners).reshape(-1)  # (n_obs * 4,)
        self.weights = torch.as_tensor(weights)  # (n_obs, 4) float64
        self.n_obs = plat.size
        self.error = as_error(error)
        n_std = torch.as_tensor(self.error.std).numel()
        if n_std not in (1, self.n_obs):
            raise ValueError(f"error has {n_std} values for {self.n_obs} points")
        self.locations = torch.as_tensor(np.stack([plat, plon], axis=1))
        # indices per device and weights per (dtype, device), copied once: a call inside
        # a GPU sampler loop then makes no host-to-device copy
        self._indices_on: dict[torch.device, torch.Tensor] = {}
        self._weights_on: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """H(x) for x (member, variable, lat, lon) -> (member, n_obs)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.state_shape:
            raise ValueError(f"PointObservations: state shape {tuple(x.shape)} is not "
                             f"(member, {', '.join(map(str, self.state_shape))})")
        if x.device not in self._indices_on:
            self._indices_on[x.device] = self.indices.to(x.device)
        key = (x.dtype, x.device)
        if key not in self._weights_on:
            self._weights_on[key] = self.weights.to(dtype=x.dtype, device=x.device)
        corners = x.reshape(x.shape[0], -1).index_select(1, self._indices_on[x.device])
        return (corners.reshape(x.shape[0], self.n_obs, 4) * self._weights_on[key]).sum(-1)

    @classmethod
    def from_arrays(cls, lat: Any, lon: Any, variable: str | Sequence[str],
                    observation: Any, error: Any, *, grid_lat: Any, grid_lon: Any,
                    variables: Sequence[str], dtype: torch.dtype = torch.float64
                    ) -> tuple[PointObservations, torch.Tensor]:
        """The operator and y (n_obs,) from per-point arrays (NaN y = not observed)."""
        if isinstance(observation, torch.Tensor):
            observation = observation.detach().cpu().numpy()
        try:
            y = torch.as_tensor(np.array(observation, dtype=np.float64).reshape(-1))
        except (TypeError, ValueError):
            raise ValueError("observation must be numbers") from None
        std = _vector("error", error)
        op = cls(lat, lon, variable, torch.as_tensor(std if std.size > 1 else std[0]),
                 grid_lat=grid_lat, grid_lon=grid_lon, variables=variables)
        if y.numel() != op.n_obs:
            raise ValueError(f"observation has {y.numel()} values for {op.n_obs} points")
        return op, y.to(dtype)

    @classmethod
    def from_dataframe(cls, frame: Any, *, grid_lat: Any, grid_lon: Any,
                       variables: Sequence[str], dtype: torch.dtype = torch.float64
                       ) -> tuple[PointObservations, torch.Tensor]:
        """The operator and y from a pandas DataFrame with columns :data:`COLUMNS`."""
        missing = [c for c in COLUMNS if c not in getattr(frame, "columns", ())]
        if missing:
            raise ValueError(f"observation table lacks column(s) {missing}; it needs "
                             f"{list(COLUMNS)}")
        columns = {}
        for name in ("lat", "lon", "observation", "error"):
            try:
                columns[name] = np.array(frame[name], dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"column {name!r} must be numbers") from None
        return cls.from_arrays(columns["lat"], columns["lon"],
                               [str(v) for v in frame["variable"]], columns["observation"],
                               columns["error"], grid_lat=grid_lat, grid_lon=grid_lon,
                               variables=variables, dtype=dtype)

    def __repr__(self) -> str:
        return f"PointObservations(n_obs={self.n_obs}, error={self.error!r})"


def read_point_table(path: str | os.PathLike[str], *, required: Sequence[str] = ("lat", "lon",
                     "variable", "error")) -> Any:
    """A pandas DataFrame of point observations from ``path``: ``.csv``, ``.parquet``
    (needs pyarrow) or ``.nc`` (one-dimensional variables along one dimension, one per
    column). ``required`` columns must be present; ValueError names the file."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: not found" if not p.exists() else f"{p}: not a regular file")
    suffix = p.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(p)
        elif suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(p)
        elif suffix in (".nc", ".nc4", ".netcdf"):
            import xarray as xr

            with xr.open_dataset(p) as ds:
                if len(ds.dims) != 1:
                    raise ValueError(f"needs variables along one dimension, got dims "
                                     f"{dict(ds.sizes)}")
                frame = ds.to_dataframe().reset_index(drop=True)
        else:
            raise ValueError(f"unknown format {suffix!r} (use .csv, .parquet or .nc)")
    except ImportError as exc:
        raise ValueError(f"{p}: reading {suffix} needs {exc.name} (pip install pyarrow)"
                         ) from None
    except ValueError as exc:
        raise ValueError(f"{p}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - parser errors of three libraries
        raise ValueError(f"{p}: not a readable {suffix[1:]} table ({exc})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"{p}: lacks column(s) {missing}; columns are {list(frame.columns)}")
    if len(frame) == 0:
        raise ValueError(f"{p}: no rows")
    for column in ("lat", "lon", "error", "observation", "cycle"):
        if column in frame.columns:
            values = pd.to_numeric(frame[column], errors="coerce")
            bad = values.isna() & frame[column].notna()
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise ValueError(f"{p}: column {column!r} must be numbers, row {row} holds "
                                 f"{frame[column].iloc[row]!r}")
            frame[column] = values
            numbers = values.to_numpy(dtype=np.float64)
            # Inf is never a value; NaN only an absent observation (the row says nothing)
            bad = np.isinf(numbers) | (np.isnan(numbers) if column != "observation" else False)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise ValueError(f"{p}: column {column!r} row {row} holds {numbers[row]}, "
                                 "not a finite number")
    if "lat" in frame.columns and not frame["lat"].between(-90, 90).all():
        row = int(np.flatnonzero(~frame["lat"].between(-90, 90).to_numpy())[0])
        raise ValueError(f"{p}: column 'lat' row {row} holds {frame['lat'].iloc[row]}, "
                         "not within -90 .. 90")
    return frame
