"""Any earth2studio ``PrognosticModel`` as a tfda forecast model.

:class:`E2SForecastModel` wraps a prognostic model of earth2studio (0.19: FourCastNet,
SFNO, Pangu, GraphCast, FuXi, ``Persistence``, ...; its ``input_coords`` /
``output_coords`` / ``__call__(x, coords)``) behind tfda's
:class:`tfda.models.ForecastModel` protocol: ``variables``, ``lat``, ``lon``, ``dt``
and ``step`` on (member, variable, lat, lon). Members travel as earth2studio's
leading "ensemble" dimension, which its ``batch_func`` folds into the batch, so one
call advances the whole ensemble. Variable names are earth2studio's lexicon, the
spelling tfda uses too (docs/design.md section 3).

The coordinate handshake at construction names the dimension that does not fit:
the model's input must end with (variable, lat, lon) on a 1-D lat/lon grid, take
one lead time (no history), and produce the variables it reads, on the same grid,
one positive lead-time step later.

:func:`load_model` builds a model by its earth2studio class name through
earth2studio's own loader (``cls.load_model(cls.load_default_package())``, i.e.
``from_pretrained``), which downloads weights on first use; classes without a
package (``Persistence``) are constructed from ``model_options``. It is registered
in :mod:`tfda.models` as ``"earth2studio"``, and ``models.load("earth2studio:SFNO")``
is the same as ``models.load("earth2studio", model="SFNO")``.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import inspect
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from tfda.interop._e2s import CoordSystem, PrognosticModel
from tfda.models.base import check_grid, check_state

__all__ = ["E2SForecastModel", "load_model", "model_class"]

_STATE_DIMS = ("variable", "lat", "lon")
_LEADING = ("time", "lead_time")  # the per-state dims a tfda state holds one of
EPOCH = np.datetime64("2000-01-01T00:00", "ns")
E2S_INSTALL_DOC = ("https://nvidia.github.io/earth2studio/userguide/about/install.html"
                   "#optional-dependencies")


def _leading_dims(coords: CoordSystem) -> tuple[str, ...]:
    """The model's dims between its batch dim and (variable, lat, lon); ValueError naming
    the dimension that a tfda state cannot fill."""
    dims = tuple(coords)
    if dims[-3:] != _STATE_DIMS:
        raise ValueError(f"earth2studio model: input dimensions {list(dims)} do not end with "
                         f"{list(_STATE_DIMS)}; tfda states are (member, variable, lat, lon) "
                         "on a lat/lon grid")
    if dims[0] != "batch":
        raise ValueError(f"earth2studio model: input dimensions {list(dims)} have no leading "
                         "'batch' dimension, where the adapter passes the members")
    middle = dims[1:-3]
    for name in middle:
        if name not in _LEADING:
            raise ValueError(f"earth2studio model: input dimension {name!r} has no tfda "
                             f"counterpart (tfda fills {list(_LEADING)} with one entry)")
    if "lead_time" in middle and np.asarray(coords["lead_time"]).size != 1:
        raise ValueError(f"earth2studio model: lead_time takes "
                         f"{np.asarray(coords['lead_time']).size} history steps; a tfda "
                         "state holds one")
    for name in ("lat", "lon"):
        values = np.asarray(coords[name])
        if values.ndim != 1 or values.size < 2:
            raise ValueError(f"earth2studio model: {name} coordinate has shape {values.shape}; "
                             "tfda needs a 1-D grid of at least 2 points")
    return middle


def _timedelta(value: Any) -> _dt.timedelta:
    return _dt.timedelta(microseconds=int(np.timedelta64(value, "us").astype(np.int64)))


class E2SForecastModel:
    """A ForecastModel (tfda.models.base) around an earth2studio ``PrognosticModel``.

    Args:
        model: the earth2studio prognostic model (on any device; see :meth:`to`).
        time: the analysis time given to models that read a ``time`` coordinate
            (solar forcing); every step sees this same time, so set it per cycle
            (``adapter.time = ...``) for models whose forcing depends on it.
        initial_state: optional netCDF file with a (time,) variable, lat, lon field of
            the model's variables (``tfda era5 prepare``'s output, or a DataArray
            saved with those dims); :meth:`spin_up` starts from it.
        initial_time: which time of ``initial_state`` (default: its first).

    Raises ValueError naming the dimension (variable, lat, lon, lead_time, or an
    input dimension tfda cannot fill) whose coordinates do not fit.
    """

    def __init__(self, model: Any, *, time: Any = None, initial_state: str | None = None,
                 initial_time: str | None = None) -> None:
        if not isinstance(model, PrognosticModel):
            missing = [m for m in ("__call__", "create_iterator", "input_coords",
                                   "output_coords", "to") if not hasattr(model, m)]
            raise TypeError(f"model must be an earth2studio PrognosticModel, got "
                            f"{type(model).__name__} (missing {missing})")
        self.model = model
        coords = model.input_coords()
        self._leading = _leading_dims(coords)
        self._input_coords = coords
        self.variables = tuple(str(v) for v in np.asarray(coords["variable"]))
        self.lat = torch.as_tensor(np.asarray(coords["lat"], dtype=np.float64))
        self.lon = torch.as_tensor(np.asarray(coords["lon"], dtype=np.float64))
        self.time = EPOCH if time is None else np.datetime64(time, "ns")
        self.dt = self._handshake_output()
        self.initial_state = None if initial_state is None else str(initial_state)
        self.initial_time = initial_time

    def _call_coords(self, members: int) -> CoordSystem:
        coords = OrderedDict({"ensemble": np.arange(members)})
        for name in self._leading:
            coords[name] = (np.array([self.time]) if name == "time"
                            else np.asarray(self._input_coords[name]))
        for name in _STATE_DIMS:
            coords[name] = np.asarray(self._input_coords[name])
        return coords

    def _handshake_output(self) -> _dt.timedelta:
        """Check the model's output coordinates against its input; return the step."""
        given = self._call_coords(1)
        out = self.model.output_coords(given)
        for name in _STATE_DIMS:
            if name not in out:
                raise ValueError(f"earth2studio model: output has no {name!r} dimension "
                                 f"(output dims {list(out)})")
        got = tuple(str(v) for v in np.asarray(out["variable"]))
        if got != self.variables:
            missing = [v for v in self.variables if v not in got]
            extra = [v for v in got if v not in self.variables]
            raise ValueError(f"earth2studio model: variable coordinates differ between input "
                             f"and output (not produced {missing}, produced only {extra}); "
                             "a cycled model must return the variables it reads, in order")
        for name in ("lat", "lon"):
            a, b = np.asarray(out[name], dtype=np.float64), np.asarray(given[name], np.float64)
            if a.shape != b.shape or not np.allclose(a, b, atol=1e-9):
                raise ValueError(f"earth2studio model: {name} grid of the output "
                                 f"({a.size} points) differs from the input's ({b.size})")
        if "lead_time" not in out:
            raise ValueError("earth2studio model: output has no 'lead_time' dimension, so "
                             "its time step is unknown")
        start = np.asarray(given.get("lead_time", [np.timedelta64(0, "h")]))[-1]
        lead = np.asarray(out["lead_time"])
        if lead.size != 1:
            raise ValueError(f"earth2studio model: output lead_time has {lead.size} steps; "
                             "the adapter advances one step per call")
        dt = _timedelta(lead[-1] - start)
        if dt <= _dt.timedelta(0):
            raise ValueError(f"earth2studio model: lead_time does not advance (step {dt})")
        return dt

    def to(self, device: torch.device | str) -> E2SForecastModel:
        self.model = self.model.to(device)
        return self

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """Advance (member, variable, lat, lon) by ``dt`` with one call of the model."""
        check_state(self, x)
        m = x.shape[0]
        shape = (m, *([1] * len(self._leading)), *x.shape[1:])
        dtype = self._weights_dtype()
        xin = x if dtype is None else x.to(dtype)
        with torch.no_grad():
            out, _ = self.model(xin.reshape(shape), self._call_coords(m))
        if out.numel() != x.numel():
            raise ValueError(f"earth2studio model returned shape {tuple(out.shape)} for an "
                             f"input of {tuple(shape)}")
        out = out.reshape(x.shape).to(x.dtype)
        # models run under torch.inference_mode return inference tensors, which autograd
        # (the EnSF's score) cannot use; clone makes an ordinary tensor with the same bits
        return out.clone() if out.is_inference() else out

    def _weights_dtype(self) -> torch.dtype | None:
        """The dtype of the model's first floating-point weight (None: no weights)."""
        params = getattr(self.model, "parameters", None)
        first = next(iter(params()), None) if callable(params) else None
        return first.dtype if first is not None and first.is_floating_point() else None

    def spin_up(self, n_steps: int = 0, *, generator: torch.Generator | None = None
                ) -> torch.Tensor:
        """The state (1, variable, lat, lon) of ``initial_state`` after ``n_steps`` steps.

        ``tfda cycle`` builds its truth this way for a model with ``spin_up``."""
        del generator  # deterministic: the initial state is data
        if self.initial_state is None:
            raise ValueError("earth2studio model: initial_state (a netCDF file) is needed "
                             "to start a truth run")
        x = read_state(self.initial_state, self, time=self.initial_time)
        for _ in range(int(n_steps)):
            x = self.step(x)
        return x

    def __repr__(self) -> str:
        return (f"E2SForecastModel({type(self.model).__name__}, {len(self.variables)} "
                f"variables, {self.lat.numel()}x{self.lon.numel()}, dt={self.dt})")


def read_state(path: str | Path, model: Any, *, time: str | None = None) -> torch.Tensor:
    """(1, variable, lat, lon) float32 of ``model``'s variables from a netCDF file.

    The file holds a data variable (``state`` if there are several) with dims variable,
    lat, lon and optionally time; ``time`` picks one (default: the first)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"initial_state {path}: no such file")
    with xr.open_dataset(path) as ds:
        names = list(ds.data_vars)
        name = "state" if "state" in names else (names[0] if len(names) == 1 else None)
        if name is None:
            raise ValueError(f"initial_state {path}: several variables {names} and none "
                             "named 'state'")
        da = ds[name]
        if "time" in da.dims:
            da = da.isel(time=0) if time is None else da.sel(time=np.datetime64(time, "ns"))
        if set(da.dims) != set(_STATE_DIMS):
            raise ValueError(f"initial_state {path}: dims {list(da.dims)}, expected "
                             f"{list(_STATE_DIMS)} (and optionally time)")
        have = [str(v) for v in da["variable"].values]
        missing = [v for v in model.variables if v not in have]
        if missing:
            raise ValueError(f"initial_state {path}: variable(s) {missing} absent "
                             f"(file has {have})")
        da = da.sel(variable=list(model.variables)).transpose(*_STATE_DIMS)
        check_grid(model, torch.tensor(np.array(da["lat"].values, dtype=np.float64)),
                   torch.tensor(np.array(da["lon"].values, dtype=np.float64)))
        return torch.as_tensor(np.asarray(da.values, dtype=np.float32))[None]


def model_class(name: str | type) -> type:
    """earth2studio's prognostic class ``name`` ("SFNO", "Persistence", ...), a
    ``"package.module:Class"`` of the user's own, or the class itself."""
    if isinstance(name, type):
        return name
    if ":" in name:
        module_name, attr = name.split(":", 1)
        module = importlib.import_module(module_name)
    else:
        module, attr = importlib.import_module("earth2studio.models.px"), name
    cls = getattr(module, attr, None)
    if not isinstance(cls, type):
        known = sorted(n for n in dir(module) if n[:1].isupper())
        raise ValueError(f"model: {name!r} is not a class of {module.__name__} "
                         f"(available: {', '.join(known)})")
    return cls


def _arrays(value: Any) -> Any:
    """TOML/JSON values as earth2studio wants them: lists -> numpy arrays, tables ->
    OrderedDicts of arrays (coordinate systems)."""
    if isinstance(value, Mapping):
        return OrderedDict((k, _arrays(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return np.asarray(value)
    return value


def _check_optional_group(cls: type) -> None:
    """One-line ImportError when ``cls``'s module lacks its earth2studio extra (e.g. SFNO
    needs makani, group 'sfno'), before earth2studio prints its multi-line error box."""
    from earth2studio.utils.imports import OptionalDependencyFailure

    failure = OptionalDependencyFailure.failures.get(inspect.getfile(cls))
    if failure is not None and getattr(failure, "import_exception", None) is not None:
        # some groups need packages from outside PyPI (SFNO's makani): point at
        # earth2studio's own install guide rather than at a pip line that may not work
        url = getattr(failure, "doc_url", None) or E2S_INSTALL_DOC
        raise ImportError(f"model {cls.__name__} needs earth2studio's optional dependency "
                          f"group {failure.group_name!r} ({failure.import_exception}); "
                          f"install it as {url} says")


def _has_own_loader(cls: type, mixin: type) -> bool:
    """True when ``cls`` overrides the mixin's ``load_model`` (which only raises)."""
    return cls.load_model.__func__ is not mixin.__dict__["load_model"].__func__


def load_model(model: str | type, *, package: str | None = None,
               model_options: dict[str, Any] | None = None, time: str | None = None,
               initial_state: str | None = None, initial_time: str | None = None,
               device: str = "cpu") -> E2SForecastModel:
    """Build earth2studio's prognostic ``model`` and wrap it as a tfda forecast model.

    A class with a model package (earth2studio's ``AutoModelMixin``: SFNO, FCN, Pangu,
    ...) is loaded with ``cls.load_model(package)``, the package being ``package`` (a
    local directory or an fsspec/NGC URI) or ``cls.load_default_package()``, with
    ``model_options`` as extra keywords; weights download on first use into
    earth2studio's cache. Other classes (``Persistence``) are constructed as
    ``cls(**model_options)``, lists becoming numpy arrays and tables coordinate systems
    (``domain_coords = {lat = [...], lon = [...]}``).
    """
    from earth2studio.models.auto import AutoModelMixin, Package

    cls = model_class(model)
    _check_optional_group(cls)
    options = _arrays(dict(model_options or {}))
    if issubclass(cls, AutoModelMixin) and _has_own_loader(cls, AutoModelMixin):
        pkg = cls.load_default_package() if package is None else Package(str(package))
        px = cls.load_model(pkg, **options)
    else:
        if package is not None:
            raise ValueError(f"package: {cls.__name__} has no model package to load")
        px = cls(**options)
    return E2SForecastModel(px.to(device), time=time, initial_state=initial_state,
                            initial_time=initial_time)
