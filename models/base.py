"""Forecast-model interface, registry, rollout and the normalised-module wrapper.

docs/design.md section 3: a forecast model exposes ``variables`` (channel names),
``lat`` (descending), ``lon`` (0..360 east or the model's own ring index),
``dt`` (a :class:`datetime.timedelta`), ``step(x) -> x`` on tensors shaped
(batch, variable, lat, lon) and ``to(device) -> self``. Everything in tfda that
runs a model (the filters, the cycle, the Lee study) talks to this protocol
only, so FourCastNet, the barotropic analogue and Lorenz-96 are interchangeable.

Models are found by name: ``models.load("barotropic")``,
``models.load("fourcastnet", weights="/path/to/dir")``, ``models.load("lorenz96")``;
with the optional extra, any earth2studio prognostic model: ``models.load("earth2studio:SFNO")``
(tfda.interop.e2s_prognostic; docs/earth2studio.md).
Entries are stored as ``"module:attribute"`` strings and imported on first use,
so registering a model costs nothing and a model whose module is absent only
fails when it is asked for.
"""

from __future__ import annotations

import datetime as _dt
import functools
import importlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from tfda.da.protocols import Dynamics


@runtime_checkable
class ForecastModel(Dynamics, Protocol):
    """What a forecast model provides (docs/design.md section 3): the cycle's
    :class:`tfda.da.protocols.Dynamics` (``step``) plus its coordinates."""

    variables: tuple[str, ...]
    lat: torch.Tensor
    lon: torch.Tensor
    dt: _dt.timedelta

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """Advance a (batch, variable, lat, lon) state by ``dt``."""
        ...

    def to(self, device: torch.device | str) -> ForecastModel:
        """Move the model's tensors to ``device`` and return the model."""
        ...


# --------------------------------------------------------------------------- validation


def check_state(model: ForecastModel, x: torch.Tensor, *, name: str = "x") -> None:
    """Raise ValueError unless ``x`` is a (batch, variable, lat, lon) state of ``model``.

    The message names the dimension that differs and both sizes, e.g.
    ``x: variable dimension (1) has 19 entries, model expects 20 (u10m, ...)``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(
            f"{name} must be 4-D (batch, variable, lat, lon), got shape {tuple(x.shape)}"
        )
    expected = {1: ("variable", len(model.variables)), 2: ("lat", model.lat.numel()),
                3: ("lon", model.lon.numel())}
    for dim, (label, size) in expected.items():
        if x.shape[dim] != size:
            extra = ""
            if label == "variable":
                extra = f" ({', '.join(model.variables)})"
            raise ValueError(
                f"{name}: {label} dimension ({dim}) has {x.shape[dim]} entries, "
                f"model expects {size}{extra}"
            )
    if x.shape[0] == 0:
        raise ValueError(f"{name}: batch dimension (0) is empty")


def check_variables(model: ForecastModel, names: Sequence[str], *, name: str = "variables"
                    ) -> None:
    """Raise ValueError unless ``names`` is exactly ``model.variables``, in order."""
    names = tuple(names)
    want = tuple(model.variables)
    if names == want:
        return
    missing = [v for v in want if v not in names]
    unknown = [v for v in names if v not in want]
    if missing or unknown:
        raise ValueError(f"{name}: missing {missing}, not in the model {unknown}; "
                         f"model expects {list(want)}")
    k = next(i for i, (a, b) in enumerate(zip(names, want, strict=True)) if a != b)
    raise ValueError(f"{name}: variable order differs at position {k}: got {names[k]!r}, "
                     f"model expects {want[k]!r} (model order {list(want)})")


def check_grid(model: ForecastModel, lat: torch.Tensor, lon: torch.Tensor, *,
               atol: float = 1e-6) -> None:
    """Raise ValueError unless ``lat``/``lon`` equal the model's grid (to ``atol`` degrees)."""
    for label, got, want in (("lat", lat, model.lat), ("lon", lon, model.lon)):
        got = torch.as_tensor(got, dtype=torch.float64).reshape(-1).cpu()
        want = want.to(dtype=torch.float64).reshape(-1).cpu()
        if got.numel() != want.numel():
            raise ValueError(f"{label}: {got.numel()} points, model grid has {want.numel()}")
        bad = torch.nonzero((got - want).abs() > atol)
        if bad.numel():
            k = int(bad[0])
            raise ValueError(f"{label}: grid differs from the model's at index {k}: "
                             f"got {float(got[k])}, model has {float(want[k])}")


# --------------------------------------------------------------------------- rollout


def rollout(model: ForecastModel, x: torch.Tensor, n_steps: int, *, check: bool = True
            ) -> Iterator[torch.Tensor]:
    """Yield x_0 = ``x``, then x_1 = step(x_0), ..., x_n (n_steps + 1 states in all).

    Lazy: each state is computed when the consumer asks for it, so an 8-day
    forecast does not hold 33 copies of a FourCastNet state unless you keep them.
    """
    if int(n_steps) != n_steps or n_steps < 0:
        raise ValueError(f"n_steps must be a non-negative integer, got {n_steps}")
    if check:
        check_state(model, x)
    yield x
    for _ in range(int(n_steps)):
        x = model.step(x)
        yield x


# --------------------------------------------------------------------------- wrapper


class NormalisedModule:
    """Turn a ``torch.nn.Module`` working in normalised space into a ForecastModel.

    step(x) = x + std * (core(xn) - xn), xn = (x - mean) / std,
    which equals ``std * core(xn) + mean`` but is exact for a core that returns
    its input (persistence) and loses no digits on small increments.

    ``core_rows``: when set, the core sees only the first ``core_rows`` latitude
    rows (FourCastNet v1: 720 of ERA5's 721, the -90 row dropped). The rows it
    does not see are re-padded on output by ``pad``:
    ``"persist"`` (default) keeps their input values, so nothing is invented
    for a row the network never saw and persistence stays exact;
    ``"nearest"`` copies the core's last output row into them.

    ``autocast``: run the core under ``torch.autocast`` in ``autocast_dtype``
    (bfloat16) when the model lives on a CUDA device; ignored on CPU.
    Members are one batch: the core is called once per step for all of them.
    """

    def __init__(
        self,
        core: torch.nn.Module,
        mean: torch.Tensor,
        std: torch.Tensor,
        *,
        variables: Sequence[str],
        lat: torch.Tensor,
        lon: torch.Tensor,
        dt: _dt.timedelta,
        core_rows: int | None = None,
        pad: str = "persist",
        autocast: bool = False,
        autocast_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        self.variables = tuple(variables)
        n = len(self.variables)
        mean = torch.as_tensor(mean, dtype=torch.float32)
        std = torch.as_tensor(std, dtype=torch.float32)
        for label, t in (("mean", mean), ("std", std)):
            if t.numel() != n:
                raise ValueError(f"{label} has {t.numel()} entries, expected one per "
                                 f"variable ({n})")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{label} holds non-finite values")
        if bool((std <= 0).any()):
            raise ValueError("std must be positive for every variable")
        if pad not in ("persist", "nearest"):
            raise ValueError(f"pad must be 'persist' or 'nearest', got {pad!r}")
        lat = torch.as_tensor(lat, dtype=torch.float64)
        if core_rows is not None and not 0 < core_rows <= lat.numel():
            raise ValueError(f"core_rows={core_rows} must lie in 1..{lat.numel()}")
        if not isinstance(dt, _dt.timedelta):
            raise TypeError(f"dt must be a datetime.timedelta, got {type(dt).__name__}")
        self.core = core.eval()
        self.mean = mean.reshape(1, n, 1, 1)
        self.std = std.reshape(1, n, 1, 1)
        self.lat = lat
        self.lon = torch.as_tensor(lon, dtype=torch.float64)
        self.dt = dt
        self.core_rows = core_rows
        self.pad = pad
        self.autocast = bool(autocast)
        self.autocast_dtype = autocast_dtype

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def to(self, device: torch.device | str) -> NormalisedModule:
        self.core.to(device)
        self.mean = self.mean.to(device)
        self.std = self.std.to(device)
        return self

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def denormalise(self, xn: torch.Tensor) -> torch.Tensor:
        return xn * self.std.to(xn.dtype) + self.mean.to(xn.dtype)

    def _core(self, xn: torch.Tensor) -> torch.Tensor:
        use_autocast = self.autocast and xn.device.type == "cuda"
        prm = next(self.core.parameters(), None)
        inp = xn if prm is None or not prm.is_floating_point() else xn.to(prm.dtype)
        with torch.no_grad(), torch.autocast(device_type=xn.device.type,
                                             dtype=self.autocast_dtype, enabled=use_autocast):
            out = self.core(inp)
        return out.to(xn.dtype)

    def step_normalised(self, xn: torch.Tensor) -> torch.Tensor:
        """One step on a normalised full-grid state (crop, core, re-pad)."""
        rows = self.core_rows
        if rows is None or rows == xn.shape[2]:
            return self._core(xn)
        out = self._core(xn[:, :, :rows])
        if self.pad == "persist":
            tail = xn[:, :, rows:]
        else:
            tail = out[:, :, -1:].expand(-1, -1, xn.shape[2] - rows, -1)
        return torch.cat([out, tail], dim=2)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        check_state(self, x)
        xn = self.normalise(x)
        return x + self.std.to(x.dtype) * (self.step_normalised(xn) - xn)


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, str | Callable[..., Any]] = {
    "fourcastnet": "tfda.models.fourcastnet:load_fourcastnet",
    "barotropic": "tfda.models.barotropic:BarotropicModel",
    "lorenz96": "tfda.models.lorenz96:Lorenz96",
    # the optional extra: any earth2studio prognostic model (tfda.interop, not the core)
    "earth2studio": "tfda.interop.e2s_prognostic:load_model",
}
E2S_PREFIX = "earth2studio:"


def register(name: str, factory: str | Callable[..., Any], *, overwrite: bool = False) -> None:
    """Register a model factory under ``name``.

    ``factory`` is a callable returning a ForecastModel, or a ``"module:attribute"``
    string imported on first :func:`load` (so optional dependencies stay optional).
    """
    if not isinstance(name, str) or not name:
        raise ValueError("name must be a non-empty string")
    if isinstance(factory, str):
        if factory.count(":") != 1:
            raise ValueError(f"factory string must look like 'package.module:Attr', "
                             f"got {factory!r}")
    elif not callable(factory):
        raise TypeError(f"factory must be callable or a 'module:attr' string, got {factory!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"a model named {name!r} is already registered (overwrite=True to "
                         "replace it)")
    _REGISTRY[name] = factory


def available() -> tuple[str, ...]:
    """Names known to the registry (their modules are not imported)."""
    return tuple(sorted(_REGISTRY))


def is_registered(name: str) -> bool:
    """Whether :func:`load` knows ``name``: a registry entry, or ``earth2studio:NAME``
    (the optional extra; whether NAME exists is known only when it is loaded)."""
    return name in _REGISTRY or (name.startswith(E2S_PREFIX) and len(name) > len(E2S_PREFIX))


def _resolve(name: str) -> Callable[..., Any]:
    if not isinstance(name, str):
        raise TypeError(f"name must be a registered model name (a str), got {name!r}")
    if name.startswith(E2S_PREFIX) and len(name) > len(E2S_PREFIX):
        # "earth2studio:SFNO" = the "earth2studio" entry with model="SFNO"
        return functools.partial(_resolve("earth2studio"), name[len(E2S_PREFIX):])
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(available())}")
    factory = _REGISTRY[name]
    if callable(factory):
        return factory
    module_name, attr = factory.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise ImportError(f"model {name!r} is registered as {factory!r}, but module "
                          f"{module_name!r} cannot be imported: {err}") from err
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise ImportError(f"model {name!r}: module {module_name!r} has no {attr!r}") from err


def load(name: str, /, **kwargs: Any) -> ForecastModel:
    """Build the model registered as ``name`` with keyword arguments ``kwargs``."""
    model = _resolve(name)(**kwargs)
    missing = [a for a in ("variables", "lat", "lon", "dt", "step", "to") if not hasattr(model, a)]
    if missing:
        raise TypeError(f"model {name!r} does not satisfy ForecastModel: missing {missing}")
    return model
