"""ERA5 for tfda: cdsapi requests, resumable downloads, loading to channel tensors.

ERA5 (Hersbach et al. 2020, QJRMS 146:1999) is the truth of the Lee study
(Rafid et al., SC'24 workshops, Sec. V) and the training data of FourCastNet v1
(Pathak et al. 2022), whose 20 input channels are :data:`FOURCASTNET_CHANNELS`
(docs/design.md section 3, earth2studio spelling).

* :func:`build_requests` turns a list of times into Copernicus Climate Data Store
  requests (``reanalysis-era5-single-levels`` and ``reanalysis-era5-pressure-levels``,
  one pair per calendar day, netCDF).
* :func:`download` retrieves them through ``cdsapi`` (or any object with
  ``retrieve(dataset, request, target)``), writing to ``<name>.part`` and renaming
  when done, skipping complete files and retrying with exponential back-off.
* :func:`load_era5` reads the legacy (``time``/``level``) and the 2024 CDS
  (``valid_time``/``pressure_level``) netCDF layouts into a tensor
  (time, channel, lat, lon), latitude 90 -> -90, longitude 0..360.
* :func:`write_netcdf` / :func:`load_prepared` store that tensor as tidy CF netCDF.
"""

from __future__ import annotations

import os
import time as _time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import xarray as xr

FOURCASTNET_CHANNELS: tuple[str, ...] = (
    "u10m", "v10m", "t2m", "sp", "msl", "t850", "u1000", "v1000", "z1000", "u850",
    "v850", "z850", "u500", "v500", "z500", "t500", "z50", "r500", "r850", "tcwv",
)  # fmt: skip

SINGLE_LEVELS = "reanalysis-era5-single-levels"
PRESSURE_LEVELS = "reanalysis-era5-pressure-levels"
CDS_URL = "https://cds.climate.copernicus.eu/api"

# earth2studio name -> (CDS request name, netCDF short name, units, long name)
_SURFACE: dict[str, tuple[str, str, str, str]] = {
    "u10m": ("10m_u_component_of_wind", "u10", "m s-1", "10 metre U wind component"),
    "v10m": ("10m_v_component_of_wind", "v10", "m s-1", "10 metre V wind component"),
    "t2m": ("2m_temperature", "t2m", "K", "2 metre temperature"),
    "sp": ("surface_pressure", "sp", "Pa", "Surface pressure"),
    "msl": ("mean_sea_level_pressure", "msl", "Pa", "Mean sea level pressure"),
    "tcwv": ("total_column_water_vapour", "tcwv", "kg m-2", "Total column vertically-integrated water vapour"),  # noqa: E501
}
# prefix -> (CDS request name, short name, units, long name)
_UPPER: dict[str, tuple[str, str, str, str]] = {
    "u": ("u_component_of_wind", "u", "m s-1", "U component of wind"),
    "v": ("v_component_of_wind", "v", "m s-1", "V component of wind"),
    "z": ("geopotential", "z", "m2 s-2", "Geopotential"),
    "t": ("temperature", "t", "K", "Temperature"),
    "r": ("relative_humidity", "r", "%", "Relative humidity"),
}


@dataclass(frozen=True)
class ChannelSpec:
    """Where one channel lives in ERA5: ``level`` is None on single levels (hPa otherwise)."""

    name: str
    request_name: str
    short_name: str
    level: int | None
    units: str
    long_name: str


def channel_spec(name: str) -> ChannelSpec:
    """The ERA5 source of a channel such as ``"z500"`` or ``"tcwv"``."""
    if name in _SURFACE:
        req, short, units, long = _SURFACE[name]
        return ChannelSpec(name, req, short, None, units, long)
    prefix, digits = name[:1], name[1:]
    if prefix in _UPPER and digits.isdigit():
        req, short, units, long = _UPPER[prefix]
        return ChannelSpec(name, req, short, int(digits), units, f"{long} at {digits} hPa")
    raise ValueError(f"channel {name!r} is not an ERA5 channel tfda knows")


@dataclass(frozen=True)
class Era5Request:
    """One CDS retrieval: ``client.retrieve(dataset, request, target=out_dir/filename)``."""

    dataset: str
    request: dict[str, Any]
    filename: str
    times: tuple[datetime, ...]
    short_names: tuple[str, ...]


class RetrieveClient(Protocol):
    """What :func:`download` needs of a client: ``cdsapi.Client`` satisfies it."""

    def retrieve(self, name: str, request: dict[str, Any], target: str | None = None) -> Any: ...


class Era5AccessError(RuntimeError):
    """No CDS credentials, or the dataset licence is not accepted: retrying cannot help."""


def _check_times(times: Iterable[datetime]) -> list[datetime]:
    out = sorted(set(times))
    if not out:
        raise ValueError("times is empty")
    for t in out:
        if not isinstance(t, datetime) or t.minute or t.second or t.microsecond:
            raise ValueError(f"times must be datetimes on whole hours, got {t!r}")
    return out


def build_requests(
    times: Iterable[datetime], *, channels: Sequence[str] = FOURCASTNET_CHANNELS
) -> list[Era5Request]:
    """CDS requests for ``channels`` at ``times``: one single-level and one
    pressure-level request per calendar day (the CDS queues per request, so a day of
    6-hourly fields costs one queue slot, not four). A pressure-level request is the
    product of its variables and levels, so it holds the union of the needed levels."""
    specs = [channel_spec(c) for c in channels]
    surface = [s for s in specs if s.level is None]
    upper = [s for s in specs if s.level is not None]
    by_day: dict[tuple[int, int, int], list[datetime]] = {}
    for t in _check_times(times):
        by_day.setdefault((t.year, t.month, t.day), []).append(t)
    out: list[Era5Request] = []
    for (year, month, day), day_times in by_day.items():
        base = {
            "product_type": ["reanalysis"],
            "year": [f"{year:04d}"],
            "month": [f"{month:02d}"],
            "day": [f"{day:02d}"],
            "time": [f"{t.hour:02d}:00" for t in day_times],
            "data_format": "netcdf",
            "download_format": "unarchived",
        }
        stem = f"{year:04d}{month:02d}{day:02d}_" + "-".join(f"{t.hour:02d}" for t in day_times)
        if surface:
            req = {"product_type": base["product_type"],
                   "variable": list(dict.fromkeys(s.request_name for s in surface))}
            req.update({k: v for k, v in base.items() if k != "product_type"})
            shorts = tuple(dict.fromkeys(s.short_name for s in surface))
            out.append(Era5Request(SINGLE_LEVELS, req, f"era5_single_{stem}.nc",
                                   tuple(day_times), shorts))
        if upper:
            levels = sorted({s.level for s in upper if s.level is not None})
            req = {"product_type": base["product_type"],
                   "variable": list(dict.fromkeys(s.request_name for s in upper)),
                   "pressure_level": [str(lev) for lev in levels]}
            req.update({k: v for k, v in base.items() if k != "product_type"})
            shorts = tuple(dict.fromkeys(s.short_name for s in upper))
            out.append(Era5Request(PRESSURE_LEVELS, req, f"era5_pressure_{stem}.nc",
                                   tuple(day_times), shorts))
    return out


def is_complete(path: Path, request: Era5Request) -> bool:
    """True when ``path`` opens as netCDF and holds every variable and time asked for."""
    import netCDF4

    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        with netCDF4.Dataset(path) as nc:
            if any(name not in nc.variables for name in request.short_names):
                return False
            tdim = next((d for d in ("valid_time", "time") if d in nc.dimensions), None)
            return tdim is not None and len(nc.dimensions[tdim]) == len(request.times)
    except OSError:
        return False


def _default_client() -> RetrieveClient:
    rc = Path(os.environ.get("CDSAPI_RC", os.path.expanduser("~/.cdsapirc")))
    key = os.environ.get("CDSAPI_KEY")
    if not key and not rc.is_file():
        raise Era5AccessError(
            f"no CDS credentials: neither {rc} nor the CDSAPI_KEY environment variable is set. "
            f"Create an account at https://cds.climate.copernicus.eu, copy your API key from "
            f"your profile page and write {rc} with the two lines\n  url: {CDS_URL}\n"
            f"  key: <your-api-key>\n(or export CDSAPI_KEY=<key> [CDSAPI_URL={CDS_URL}])."
        )
    import cdsapi

    if key:
        return cdsapi.Client(url=os.environ.get("CDSAPI_URL", CDS_URL), key=key, quiet=True)
    return cdsapi.Client(quiet=True)


def _access_problem(exc: BaseException, dataset: str) -> Era5AccessError | None:
    text = str(exc).lower()
    if "licence" in text or "license" in text:
        return Era5AccessError(
            f"the licence of {dataset} has not been accepted for this CDS account: accept it "
            f"at https://cds.climate.copernicus.eu/datasets/{dataset}?tab=download "
            f"(section 'Terms of use'), then run again. CDS said: {exc}"
        )
    if "401" in text or "unauthorized" in text or "authentication" in text:
        return Era5AccessError(f"CDS rejected the credentials (check the key): {exc}")
    return None


def download(
    times: Iterable[datetime],
    out_dir: str | os.PathLike[str],
    *,
    client: RetrieveClient | None = None,
    channels: Sequence[str] = FOURCASTNET_CHANNELS,
    retries: int = 4,
    backoff_s: float = 30.0,
    sleep: Callable[[float], None] = _time.sleep,
    progress: bool = True,
) -> list[Path]:
    """Retrieve the ERA5 files for ``times`` into ``out_dir``; returns their paths.

    Complete files (:func:`is_complete`) are skipped, so an interrupted run resumes.
    Each file is written as ``<name>.part`` and renamed when the retrieval returns, so
    a final name never holds a partial file. Failures are retried ``retries`` times,
    waiting ``backoff_s * 2**k`` seconds; missing credentials or an unaccepted licence
    raise :class:`Era5AccessError` at once."""
    if retries < 0 or backoff_s < 0:
        raise ValueError(f"retries and backoff_s must be >= 0, got {retries}, {backoff_s}")
    requests = build_requests(times, channels=channels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    todo = [r for r in requests if not is_complete(out / r.filename, r)]
    if todo and client is None:
        client = _default_client()
    from tqdm.auto import tqdm

    for req in tqdm(todo, desc="ERA5", unit="file", disable=not progress):
        final = out / req.filename
        part = final.with_name(final.name + ".part")
        for attempt in range(retries + 1):
            part.unlink(missing_ok=True)
            try:
                assert client is not None
                client.retrieve(req.dataset, dict(req.request), str(part))
                if not is_complete(part, req):
                    raise RuntimeError(f"{part} is not a complete netCDF file for {req.dataset}")
                os.replace(part, final)
                break
            except Exception as exc:
                part.unlink(missing_ok=True)
                access = _access_problem(exc, req.dataset)
                if access is not None:
                    raise access from exc
                if attempt == retries:
                    raise RuntimeError(
                        f"ERA5 retrieval of {final.name} from {req.dataset} failed after "
                        f"{retries + 1} attempts: {exc}"
                    ) from exc
                sleep(backoff_s * 2**attempt)
            except BaseException:
                part.unlink(missing_ok=True)
                raise
    return [out / r.filename for r in requests]


# ----------------------------------------------------------------------------- loading

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
    missing = [str(p) for p in paths if not p.is_file()]
    if missing or not paths:
        raise ValueError(f"paths_or_dir: files not found: {missing or '(empty list)'}")
    return paths


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
        arrays.append(da.sel(time=want).values)
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
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".part")
    try:
        ds.to_netcdf(tmp, engine="netcdf4",
                     encoding={"time": {"units": "hours since 1900-01-01 00:00:00",
                                        "calendar": "proleptic_gregorian"}})
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


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
