"""Reading ERA5: CDS netCDF files and prepared files to (time, channel, lat, lon) tensors.

* :func:`load_era5` reads the legacy (``time``/``level``) and the 2024 CDS
  (``valid_time``/``pressure_level``) netCDF layouts, latitude 90 -> -90,
  longitude 0..360.
* :func:`load_prepared` reads back what :func:`tfda.observations.era5.write_netcdf`
  wrote; :func:`check_fourcastnet_grid` checks the grid FourCastNet v1 needs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from tfda.observations.era5.channels import FOURCASTNET_CHANNELS, channel_spec

_RENAME = {"valid_time": "time", "pressure_level": "level", "isobaricInhPa": "level",
           "latitude": "lat", "longitude": "lon"}


def _normalise(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.rename({k: v for k, v in _RENAME.items() if k in ds.variables or k in ds.dims})
    if "expver" in ds.dims:  # legacy ERA5/ERA5T mixes: each time is valid in one expver
        ds = ds.isel(expver=0).combine_first(ds.isel(expver=1))
    ds = ds.drop_vars([c for c in ("number", "expver") if c in ds.coords and c not in ds.dims])
    for need in ("time", "lat", "lon"):
        if need not in ds.dims:
            raise ValueError(f"no {need!r} dimension (dims {tuple(ds.dims)})")
    ds = ds.assign_coords(lon=np.mod(ds["lon"].values.astype(np.float64), 360.0),
                          lat=ds["lat"].values.astype(np.float64))
    ds = ds.sortby("lon").sortby("lat", ascending=False)
    if "level" in ds.dims:
        lev = ds["level"].values.astype(np.float64)
        if str(ds["level"].attrs.get("units", "")).lower() == "pa" or lev.max() > 2000:
            lev = lev / 100.0  # some tools store pressure in Pa
        ds = ds.assign_coords(level=lev)
    return ds


def _files(paths_or_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(paths_or_dir, (str, os.PathLike)):
        p = Path(paths_or_dir)
        if p.is_dir():
            files = sorted(f for f in p.glob("*.nc") if f.is_file())
            if not files:
                raise ValueError(f"paths_or_dir: no *.nc files in {p}")
            return files
        paths: list[Path] = [p]
    else:
        paths = [Path(x) for x in paths_or_dir]
    odd = [str(p) for p in paths if p.exists() and not p.is_file()]
    if odd:  # a directory among files, /dev/zero, a FIFO: there, but not a file
        raise ValueError(f"paths_or_dir: not a regular file: {odd}")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing or not paths:
        raise ValueError(f"paths_or_dir: files not found: {missing or '(empty list)'}")
    return paths


def _check_channels_arg(channels: Any, dtype: Any) -> None:
    if isinstance(channels, str) or not all(isinstance(c, str) for c in channels):
        raise TypeError(f"channels must be a sequence of channel names, got {channels!r}")
    twice = sorted({c for c in channels if list(channels).count(c) > 1})
    if twice:
        raise ValueError(f"channels: {twice} given more than once")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")


def load_era5(
    paths_or_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    times: Sequence[datetime | np.datetime64] | None = None,
    *,
    channels: Sequence[str] = FOURCASTNET_CHANNELS,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Load ERA5 netCDF files (legacy or 2024 CDS layout) into (time, channel, lat, lon).

    Levels are selected by value; latitude is made descending (90 -> -90) and longitude
    0..360. ``times`` selects times (all times common to the files by default). Returns the
    tensor and ``{"time": datetime64[ns] array, "channel": tuple, "lat", "lon"}``. A channel
    whose variable or level is absent from every file raises ValueError naming it."""
    _check_channels_arg(channels, dtype)
    files = _files(paths_or_dir)
    specs = [channel_spec(c) for c in channels]
    pieces: dict[str, list[xr.DataArray]] = {s.name: [] for s in specs}
    seen_vars: set[str] = set()
    grid: tuple[np.ndarray, np.ndarray] | None = None
    for path in files:
        try:
            raw = xr.open_dataset(path, engine="netcdf4")
        except Exception as exc:
            raise ValueError(f"{path}: cannot open as netCDF ({exc})") from exc
        with raw:
            try:
                ds = _normalise(raw)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from exc
            for s in specs:
                if s.short_name not in ds.data_vars:
                    continue
                da = ds[s.short_name]
                has_level = "level" in da.dims
                if (s.level is None) == has_level:
                    continue  # e.g. 't' on levels vs a surface field of the same name
                seen_vars.add(s.short_name)
                if s.level is not None:
                    idx = np.flatnonzero(np.isclose(ds["level"].values, s.level))
                    if idx.size == 0:
                        continue
                    da = da.isel(level=int(idx[0]))
                da = da.drop_vars([c for c in da.coords if c not in ("time", "lat", "lon")])
                da = da.transpose("time", "lat", "lon").load()
                g = (da["lat"].values, da["lon"].values)
                if grid is None:
                    grid = g
                elif g[0].shape != grid[0].shape or g[1].shape != grid[1].shape or not (
                    np.allclose(g[0], grid[0]) and np.allclose(g[1], grid[1])
                ):
                    raise ValueError(f"{path}: grid {g[0].size}x{g[1].size} differs from the "
                                     f"other files' {grid[0].size}x{grid[1].size}")
                pieces[s.name].append(da)
    problems = []
    for s in specs:
        if pieces[s.name]:
            continue
        if s.short_name not in seen_vars:
            problems.append(f"variable {s.short_name!r} (for {s.name})")
        else:
            problems.append(f"level {s.level} hPa of {s.short_name!r} (for {s.name})")
    if problems:
        raise ValueError(f"ERA5 files {[p.name for p in files]} lack: " + "; ".join(problems))
    merged: dict[str, xr.DataArray] = {}
    for name, das in pieces.items():
        da = xr.concat(das, dim="time") if len(das) > 1 else das[0]
        _, first = np.unique(da["time"].values, return_index=True)
        merged[name] = da.isel(time=np.sort(first)).sortby("time")
    if times is None:
        common = set(merged[specs[0].name]["time"].values.tolist())
        for da in merged.values():
            common &= set(da["time"].values.tolist())
        want = np.array(sorted(common), dtype="datetime64[ns]")
        if want.size == 0:
            raise ValueError(
                f"ERA5 files {[p.name for p in files]}: no time common to all channels"
            )
    else:
        want = np.array([np.datetime64(t, "ns") for t in times], dtype="datetime64[ns]")
    arrays = []
    for name, da in merged.items():
        have = da["time"].values
        absent = [str(t) for t in want if t not in have]
        if absent:
            raise ValueError(f"times: channel {name} has no data at {absent}")
        values = da.sel(time=want).values
        inf = np.isinf(values)
        if inf.any():  # NaN may mean "not defined here"; Inf is a broken file
            k = int(np.flatnonzero(inf.any(axis=(1, 2)))[0])
            raise ValueError(f"channel {name} holds Inf values at {str(want[k])[:16]} "
                             f"({int(inf.sum())} values): check the files")
        arrays.append(values)
    assert grid is not None
    tensor = torch.from_numpy(np.stack(arrays, axis=1)).to(dtype)
    coords = {"time": want, "channel": tuple(channels), "lat": grid[0].copy(),
              "lon": grid[1].copy()}
    return tensor, coords


def check_fourcastnet_grid(lat: np.ndarray | torch.Tensor, lon: np.ndarray | torch.Tensor) -> None:
    """Raise ValueError unless (lat, lon) is ERA5's 0.25-degree grid that FourCastNet
    v1 expects: 721 latitudes 90 -> -90 and 1440 longitudes 0 .. 359.75 (docs/design.md 4)."""
    la = np.asarray(lat, dtype=np.float64).ravel()
    lo = np.asarray(lon, dtype=np.float64).ravel()
    ok = (la.size == 721 and lo.size == 1440
          and np.allclose(la, np.linspace(90.0, -90.0, 721), atol=1e-6)
          and np.allclose(lo, np.arange(1440) * 0.25, atol=1e-6))
    if ok:
        return

    def describe(v: np.ndarray) -> str:
        if v.size < 2:
            return f"{v.size} point(s)"
        d = np.diff(v)
        step = f"{abs(d[0]):g} degrees" if np.allclose(d, d[0]) else "non-uniform spacing"
        return f"{v.size} points {v[0]:g}..{v[-1]:g}, {step}"

    raise ValueError(
        "grid is not FourCastNet's: it needs 0.25-degree ERA5, lat 721 points 90..-90 and lon "
        f"1440 points 0..359.75; got lat {describe(la)}, lon {describe(lo)}"
    )


def load_prepared(
    path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read a file written by :func:`write_netcdf` back as (tensor, coords)."""
    with xr.open_dataset(path, engine="netcdf4") as ds:
        if "state" not in ds:
            raise ValueError(f"{path}: no 'state' variable (not written by tfda era5 prepare)")
        da = ds["state"].transpose("time", "variable", "lat", "lon")
        coords = {"time": da["time"].values,
                  "channel": tuple(str(v) for v in da["variable"].values),
                  "lat": da["lat"].values, "lon": da["lon"].values}
        return torch.from_numpy(da.values).to(dtype), coords
