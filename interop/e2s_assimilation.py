"""tfda's filters (EnSF, LETKF) as an earth2studio ``AssimilationModel``.

earth2studio 0.19 defines data assimilation models by a protocol
(``earth2studio.models.da.base.AssimilationModel``): ``__call__`` (one stateless
step), ``create_generator`` (a coroutine fed observations with ``send``),
``init_coords`` / ``input_coords`` / ``output_coords`` and ``to``. Observations are
DataFrames in its observation schema, columns time, lat, lon, variable, observation
(its in-situ sources, e.g. ``earth2studio.data.ISD``, have these); tfda adds an
optional ``error`` column, the observation error standard deviation, which
``obs_error`` (a std per variable) supplies when it is absent.

:class:`E2SAssimilation` takes a prior ensemble as an ``xarray.DataArray`` with dims
ensemble, variable, lat, lon (other dims, e.g. time and lead_time, of size one), keeps
the observations valid at the state's time (time + lead_time, within
``time_tolerance``), turns them into :class:`tfda.observations.PointObservations`
(bilinear interpolation, the LETKF's localisation locations) and returns the analysis
ensemble as a DataArray with the prior's dims and coordinates, on the model's device
(cupy-backed on CUDA when cupy is installed, as earth2studio's own models do).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Generator
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr

from tfda.interop._e2s import CoordSystem, FrameSchema
from tfda.observations.points import PointObservations

__all__ = ["E2SAssimilation"]

_STATE_DIMS = ("ensemble", "variable", "lat", "lon")
_OBS_COLUMNS = ("time", "lat", "lon", "variable", "observation")
DEFAULT_TOLERANCE = np.timedelta64(30, "m")


def _tolerance(value: Any) -> tuple[np.timedelta64, np.timedelta64]:
    """(lower, upper) window around the valid time from a timedelta or a pair."""
    if isinstance(value, tuple | list):
        lo, hi = (np.timedelta64(v, "ns") for v in value)
    else:
        hi = np.timedelta64(value, "ns")
        lo = -hi
    if lo > hi:
        raise ValueError(f"time_tolerance: lower bound {lo} exceeds upper bound {hi}")
    return lo, hi


class E2SAssimilation:
    """An earth2studio ``AssimilationModel`` running a tfda analysis.

    Args:
        analysis: a tfda filter (``EnSF(...)``, ``LETKF(...)``) or any callable with
            the :class:`tfda.da.protocols.Analysis` signature.
        variables, lat, lon: the state's variables and 1-D grid (degrees).
        obs_error: observation error std per variable, used when the DataFrame has
            no ``error`` column.
        model: optional tfda forecast model (e.g. an
            :class:`tfda.interop.e2s_prognostic.E2SForecastModel`) that
            ``create_generator`` steps between analyses.
        time_tolerance: keep observations within this of the state's valid time
            (a timedelta, or a (lower, upper) pair).
        seed: seeds the generator the stochastic filters (EnSF) draw from.
        device: where the analysis runs and the output lives.
    """

    def __init__(self, analysis: Any, *, variables: Any, lat: Any, lon: Any,
                 obs_error: dict[str, float] | None = None, model: Any = None,
                 time_tolerance: Any = DEFAULT_TOLERANCE, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        if not callable(analysis):
            raise TypeError(f"analysis must be callable (a tfda filter), got {analysis!r}")
        self.analysis = analysis
        self.variables = tuple(str(v) for v in np.asarray(variables).reshape(-1))
        self.lat = np.asarray(lat, dtype=np.float64).reshape(-1)
        self.lon = np.asarray(lon, dtype=np.float64).reshape(-1)
        self.obs_error = dict(obs_error or {})
        unknown = sorted(set(self.obs_error) - set(self.variables))
        if unknown:
            raise ValueError(f"obs_error: {unknown} are not state variables {self.variables}")
        self.model = model
        self.tolerance = _tolerance(time_tolerance)
        self.seed = int(seed)
        self.to(device)

    # ------------------------------------------------------------------ protocol: coords

    def init_coords(self) -> tuple[CoordSystem]:
        """The initial ensemble ``create_generator`` takes: dims ensemble (any size),
        time, lead_time, variable, lat, lon."""
        return (self._state_coords(),)

    def input_coords(self) -> tuple[CoordSystem, FrameSchema]:
        """What ``__call__`` takes: the prior ensemble and the observation DataFrame."""
        schema = FrameSchema({
            "time": np.empty(0, dtype="datetime64[ns]"),
            "lat": np.empty(0, dtype=np.float32),
            "lon": np.empty(0, dtype=np.float32),
            "observation": np.empty(0, dtype=np.float32),
            "variable": np.array(self.variables, dtype=str),
        })
        if set(self.obs_error) != set(self.variables):
            schema["error"] = np.empty(0, dtype=np.float32)
        return self._state_coords(), schema

    def output_coords(self, input_coords: tuple[Any, ...], *args: Any, **kwargs: Any
                      ) -> tuple[CoordSystem]:
        """The analysis has the prior's coordinates; ValueError naming the dimension
        of the prior's coordinates that does not match the model's."""
        del args, kwargs
        coords = input_coords[0]
        for name in _STATE_DIMS:
            if name not in coords:
                raise ValueError(f"prior ensemble: dimension {name!r} missing (dims "
                                 f"{list(coords)}; needs {list(_STATE_DIMS)})")
        got = tuple(str(v) for v in np.asarray(coords["variable"]))
        if got != self.variables:
            raise ValueError(f"prior ensemble: variable coordinate {list(got)} differs from "
                             f"the model's {list(self.variables)}")
        for name, want in (("lat", self.lat), ("lon", self.lon)):
            have = np.asarray(coords[name], dtype=np.float64)
            if have.shape != want.shape or not np.allclose(have, want, atol=1e-6):
                raise ValueError(f"prior ensemble: {name} coordinate ({have.size} points) "
                                 f"differs from the model's grid ({want.size} points)")
        return (OrderedDict(coords),)

    def _state_coords(self) -> CoordSystem:
        return OrderedDict({"ensemble": np.empty(0), "time": np.empty(0),
                            "lead_time": np.array([np.timedelta64(0, "h")]),
                            "variable": np.array(self.variables), "lat": self.lat,
                            "lon": self.lon})

    # ------------------------------------------------------------------ device

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: torch.device | str) -> E2SAssimilation:
        self._device = torch.device(device)
        self._generator = torch.Generator(device=self._device).manual_seed(self.seed)
        if self.model is not None and hasattr(self.model, "to"):
            self.model = self.model.to(self._device)
        return self

    # ------------------------------------------------------------------ assimilation

    def __call__(self, x: xr.DataArray, obs: pd.DataFrame | None = None) -> xr.DataArray:
        """The analysis ensemble of prior ``x`` given observations ``obs`` (None or no
        observation valid at the state's time: the prior, moved to the device)."""
        coords = OrderedDict((d, x.coords[d].values if d in x.coords else np.arange(n))
                             for d, n in zip(x.dims, x.shape, strict=True))
        self.output_coords((coords,))
        extra = [d for d in x.dims if d not in _STATE_DIMS]
        for d in extra:
            if x.sizes[d] != 1:
                raise ValueError(f"prior ensemble: dimension {d!r} has {x.sizes[d]} entries; "
                                 "one state per call (loop over it)")
        ordered = x.transpose(*extra, *_STATE_DIMS)
        prior = torch.as_tensor(ordered.data).to(self.device).reshape(
            x.sizes["ensemble"], len(self.variables), self.lat.size, self.lon.size)
        frame = None if obs is None else self._valid(obs, x)
        if frame is not None and len(frame):
            op, y = PointObservations.from_dataframe(
                frame, grid_lat=self.lat, grid_lon=self.lon, variables=self.variables,
                dtype=prior.dtype)
            post = self.analysis(prior, y.to(self.device), op, generator=self._generator)
        else:
            post = prior
        data = post.detach().reshape(ordered.shape)
        return self._to_dataarray(data, ordered).transpose(*x.dims)

    def _valid(self, obs: Any, x: xr.DataArray) -> pd.DataFrame:
        """The rows of ``obs`` valid at ``x``'s time, with an error column."""
        frame = obs.to_pandas() if hasattr(obs, "to_pandas") else obs
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"observations must be a pandas DataFrame, got "
                            f"{type(obs).__name__}")
        missing = [c for c in _OBS_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"observations: DataFrame lacks column(s) {missing} (has "
                             f"{list(frame.columns)})")
        if "time" in x.coords:
            valid = np.datetime64(np.asarray(x["time"].values).reshape(-1)[0], "ns")
            if "lead_time" in x.coords:
                valid = valid + np.asarray(x["lead_time"].values).reshape(-1)[0]
            t = pd.to_datetime(frame["time"]).to_numpy(dtype="datetime64[ns]")
            lo, hi = self.tolerance
            frame = frame[(t >= valid + lo) & (t <= valid + hi)]
        if "error" not in frame.columns:
            names = frame["variable"].astype(str)
            absent = sorted(set(names) - set(self.obs_error))
            if absent:
                raise ValueError(f"observations: no 'error' column and no obs_error for "
                                 f"variable(s) {absent}")
            frame = frame.assign(error=names.map(self.obs_error).astype(np.float64))
        return frame

    def _to_dataarray(self, data: torch.Tensor, like: xr.DataArray) -> xr.DataArray:
        if data.device.type == "cuda":
            try:
                import cupy as cp
            except ImportError:  # no cupy: earth2studio's models fall back to host memory too
                array = data.cpu().numpy()
            else:
                array = cp.asarray(data)
        else:
            array = data.cpu().numpy()
        return xr.DataArray(array, dims=like.dims, coords=like.coords, attrs=like.attrs)

    def create_generator(self, x: xr.DataArray | None = None
                         ) -> Generator[xr.DataArray | None, Any, None]:
        """A coroutine of cycles: yields ``x`` first, then for each ``send``:

        * ``send(obs)`` (a DataFrame or None): forecast the last state with ``model``
          by its ``dt`` (lead_time advances) and yield the analysis given ``obs``;
        * ``send((prior, obs))``: yield the analysis of ``prior`` given ``obs`` (a cycle
          whose forecast runs elsewhere, e.g. an earth2studio model's iterator).
        """
        state = x
        sent = yield x
        while True:
            if isinstance(sent, tuple):
                if len(sent) != 2:
                    raise ValueError(f"send((prior, obs)): got a tuple of {len(sent)} items")
                state = self(*sent)
            else:
                if state is None or self.model is None:
                    raise ValueError("send(obs) forecasts the last state: give "
                                     "create_generator(x) an initial ensemble and the "
                                     "model= a forecast model (or send (prior, obs))")
                state = self(self.forecast(state), sent)
            sent = yield state

    def forecast(self, x: xr.DataArray) -> xr.DataArray:
        """``x`` advanced one step of ``model``, lead_time (or time) moved by its dt."""
        extra = [d for d in x.dims if d not in _STATE_DIMS]
        ordered = x.transpose(*extra, *_STATE_DIMS)
        prior = torch.as_tensor(ordered.data).to(self.device)
        out = self.model.step(prior.reshape(-1, *prior.shape[-3:])).reshape(prior.shape)
        da = self._to_dataarray(out, ordered)
        dt = np.timedelta64(self.model.dt)
        if "lead_time" in da.coords:
            da = da.assign_coords(lead_time=da["lead_time"].values + dt)
        elif "time" in da.coords:
            da = da.assign_coords(time=da["time"].values + dt)
        return da.transpose(*x.dims)
