"""ERA5 from the Copernicus Climate Data Store: requests and resumable downloads.

* :func:`build_requests` turns a list of times into CDS requests
  (``reanalysis-era5-single-levels`` and ``reanalysis-era5-pressure-levels``, one
  pair per calendar day, netCDF).
* :func:`download` retrieves them through ``cdsapi`` (or any object with
  ``retrieve(dataset, request, target)``), writing to ``<name>.part`` and renaming
  when done, skipping complete files and retrying with exponential back-off.
"""

from __future__ import annotations

import os
import time as _time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from tfda._io import atomic_path
from tfda.observations.era5.channels import FOURCASTNET_CHANNELS, channel_spec

SINGLE_LEVELS = "reanalysis-era5-single-levels"
PRESSURE_LEVELS = "reanalysis-era5-pressure-levels"
CDS_URL = "https://cds.climate.copernicus.eu/api"


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


def _retrieve(client: RetrieveClient | None, req: Era5Request, final: Path) -> None:
    """One attempt: retrieve into ``<name>.part``, check it, rename it to ``final``."""
    if client is None:
        raise RuntimeError("no CDS client")
    with atomic_path(final, part=final.name + ".part") as part:
        client.retrieve(req.dataset, dict(req.request), str(part))
        if not is_complete(part, req):
            raise RuntimeError(f"{part} is not a complete netCDF file for {req.dataset}")


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
        for attempt in range(retries + 1):
            try:
                _retrieve(client, req, out / req.filename)
                break
            except Exception as exc:
                access = _access_problem(exc, req.dataset)
                if access is not None:
                    raise access from exc
                if attempt == retries:
                    raise RuntimeError(
                        f"ERA5 retrieval of {req.filename} from {req.dataset} failed after "
                        f"{retries + 1} attempts: {exc}"
                    ) from exc
                sleep(backoff_s * 2**attempt)
    return [out / r.filename for r in requests]


