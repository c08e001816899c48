"""ERA5 through an earth2studio ``DataSource`` (ARCO): the Lee inputs without a CDS key.

``tfda era5 download --source arco`` calls :func:`download_arco`, which asks an
earth2studio data source (default ``earth2studio.data.ARCO``, Google's
analysis-ready cloud-optimised ERA5, Carver & Merose 2023; no key needed) for the
channels and writes the same prepared netCDF as ``tfda era5 prepare`` does on the
CDS route (:func:`tfda.observations.era5.write_netcdf`: variable ``state``, dims
time, variable, lat, lon, latitude 90 -> -90, longitude 0..360), which the Lee study
reads with :func:`tfda.observations.era5.load_prepared`.

ARCO has no relative humidity; a channel ``r<level>`` (FourCastNet's r500, r850) is
derived from ``t<level>`` and ``q<level>`` with earth2studio's ``DerivedRH``, the IFS
mixed-phase saturation formula (IFS Cy48r1 documentation, Part IV, Eq. 7.98 ff.)
ECMWF uses for ERA5's own relative humidity, so the two routes agree to the
rounding of the stored fields.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from tfda.interop._e2s import DataSource
from tfda.observations import era5

__all__ = ["DataSource", "download_arco", "fetch_era5", "source_variables"]

_RH = re.compile(r"^r(\d+)$")


def source_variables(channels: Sequence[str]) -> list[str]:
    """The variables to ask the source for: each channel, with ``r<level>`` replaced by
    ``t<level>`` and ``q<level>``; no duplicates, first-seen order."""
    wanted: list[str] = []
    for c in channels:
        m = _RH.match(c)
        for v in ((f"t{m[1]}", f"q{m[1]}") if m else (c,)):
            if v not in wanted:
                wanted.append(v)
    return wanted


def _relative_humidity(data: xr.DataArray, level: str) -> np.ndarray:
    """r<level> (%) from t<level> (K) and q<level> (kg/kg) via earth2studio's DerivedRH."""
    from earth2studio.models.dx.derived import DerivedRH

    rh = DerivedRH(levels=[int(level)])
    x = torch.as_tensor(np.stack([data.sel(variable=f"t{level}").values,
                                  data.sel(variable=f"q{level}").values], axis=1))
    coords = OrderedDict({"time": data["time"].values,
                          "variable": np.array([f"t{level}", f"q{level}"]),
                          "lat": data["lat"].values, "lon": data["lon"].values})
    out, _ = rh(x.to(torch.float64), coords)
    return out[:, 0].cpu().numpy()


def fetch_era5(source: Any, times: Sequence[datetime],
               channels: Sequence[str] = era5.FOURCASTNET_CHANNELS, *,
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, dict[str, Any]]:
    """(time, channel, lat, lon) and coords ``{"time", "channel", "lat", "lon"}`` from
    an earth2studio data source, in the layout of :func:`tfda.observations.era5.load_era5`
    (latitude descending, longitude 0..360 ascending)."""
    if not callable(source):
        raise TypeError(f"source must be an earth2studio DataSource, got {type(source)}")
    times = list(times)
    if not times:
        raise ValueError("times: empty")
    for c in channels:
        era5.channel_spec(c)  # ValueError naming a channel tfda does not know
    data = source(times, source_variables(channels))
    if not isinstance(data, xr.DataArray):
        raise TypeError(f"the data source returned {type(data).__name__}, not a DataArray")
    dims = ("time", "variable", "lat", "lon")
    if set(data.dims) != set(dims):
        raise ValueError(f"the data source returned dims {list(data.dims)}, expected "
                         f"{list(dims)} (a lat/lon source such as ARCO)")
    data = data.transpose(*dims)
    data = data.assign_coords(lon=np.mod(data["lon"].values, 360.0))
    data = data.sortby("lat", ascending=False).sortby("lon")
    layers = []
    for c in channels:
        m = _RH.match(c)
        layers.append(_relative_humidity(data, m[1]) if m
                      else data.sel(variable=c).values)
    tensor = torch.as_tensor(np.stack(layers, axis=1)).to(dtype)
    coords = {"time": np.asarray(data["time"].values, dtype="datetime64[ns]"),
              "channel": tuple(channels), "lat": data["lat"].values.astype(np.float64),
              "lon": data["lon"].values.astype(np.float64)}
    return tensor, coords


def download_arco(times: Sequence[datetime], out: str | os.PathLike[str], *,
                  channels: Sequence[str] = era5.FOURCASTNET_CHANNELS,
                  source: Any = None, check_grid: bool = True,
                  validate: Callable[[torch.Tensor, dict[str, Any]], None] | None = None
                  ) -> tuple[Path, torch.Tensor, dict[str, Any]]:
    """Fetch ``channels`` at ``times`` from ``source`` (default ARCO) and write the
    prepared netCDF ``out``; return its path, the tensor and the coords.

    ``check_grid``: refuse a grid other than FourCastNet's 0.25-degree ERA5 grid;
    ``validate(tensor, coords)``: a further check, run before anything is written."""
    if source is None:
        from earth2studio.data import ARCO

        source = ARCO(cache=False, verbose=False)
    tensor, coords = fetch_era5(source, times, channels)
    if check_grid:
        era5.check_fourcastnet_grid(coords["lat"], coords["lon"])
    if validate is not None:
        validate(tensor, coords)
    name = type(source).__name__
    path = era5.write_netcdf(out, tensor, coords,
                             attrs={"source": f"ERA5 (Hersbach et al. 2020) via earth2studio "
                                              f"{name}"})
    return path, tensor, coords
