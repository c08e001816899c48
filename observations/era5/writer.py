"""Writing ERA5 tensors as tidy CF-1.8 netCDF (read back by ``load_prepared``)."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from tfda._io import atomic_path
from tfda.observations.era5.channels import channel_spec


def write_netcdf(
    path: str | os.PathLike[str],
    tensor: torch.Tensor,
    coords: dict[str, Any],
    *,
    attrs: dict[str, str] | None = None,
) -> Path:
    """Write (time, channel, lat, lon) to a tidy CF-1.8 netCDF (variable ``state``, dims
    time/variable/lat/lon, per-channel units and long names); written to a temporary
    name and renamed."""
    channels = list(coords["channel"])
    if tensor.ndim != 4 or tensor.shape[1] != len(channels):
        raise ValueError(
            f"tensor must be (time, {len(channels)}, lat, lon), got {tuple(tensor.shape)}"
        )
    specs = [channel_spec(c) for c in channels]
    ds = xr.Dataset(
        {"state": (("time", "variable", "lat", "lon"), tensor.detach().cpu().numpy(),
                   {"long_name": "ERA5 fields in FourCastNet channel order",
                    "units_by_variable": "see the 'units' coordinate"})},
        coords={
            "time": ("time", np.asarray(coords["time"], dtype="datetime64[ns]"),
                     {"standard_name": "time", "axis": "T"}),
            "variable": ("variable", np.array(channels, dtype=object)),
            "units": ("variable", np.array([s.units for s in specs], dtype=object)),
            "long_name": ("variable", np.array([s.long_name for s in specs], dtype=object)),
            "lat": ("lat", np.asarray(coords["lat"], dtype=np.float64),
                    {"standard_name": "latitude", "units": "degrees_north", "axis": "Y"}),
            "lon": ("lon", np.asarray(coords["lon"], dtype=np.float64),
                    {"standard_name": "longitude", "units": "degrees_east", "axis": "X"}),
        },
        attrs={"Conventions": "CF-1.8", "source": "ERA5 (Hersbach et al. 2020) via the CDS",
               "history": f"{datetime.now():%Y-%m-%dT%H:%M:%S} written by tfda", **(attrs or {})},
    )
    final = Path(path)
    with atomic_path(final, suffix=".nc") as tmp:
        ds.to_netcdf(tmp, engine="netcdf4",
                     encoding={"time": {"units": "hours since 1900-01-01 00:00:00",
                                        "calendar": "proleptic_gregorian"}})
    return final


