"""Tropical-cyclone best tracks: ATCF b-deck and HURDAT2 readers.

Formats (National Hurricane Center):
* ATCF b-deck (``bal132023.dat``): comma-separated "BEST" records, one to three rows
  per time (one per 34/50/64-kt wind-radii threshold) - basin, number, YYYYMMDDHH,
  technum, tech, tau, lat (tenths, N/S), lon (tenths, E/W), vmax (kt), mslp (hPa),
  status, ... (https://www.nrlmry.navy.mil/atcf_web/docs/database/new/abdeck.txt).
* HURDAT2 (Landsea & Franklin 2013, MWR 141:3576): a header ``AL132023, LEE, 52,``
  then that many lines ``YYYYMMDD, HHMM, record id, status, 17.0N, 51.8W, vmax, mslp,
  wind radii...`` (https://www.nhc.noaa.gov/data/hurdat/hurdat2-format-atl-1851-2021.pdf).

Both give a :class:`BestTrack`: one row per time, longitudes east-positive in
-180..180 (:attr:`BestTrack.lon360` gives 0..360, the ERA5 / FourCastNet convention).

Hurricane Lee (AL132023) ships with the package (public-domain NHC data, see
``observations/data/lee2023/README.md``): :func:`lee2023` returns its b-deck merged
with two later fixes (2023-09-14 00 UTC and the 2023-09-16 20 UTC landfall).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

LEE2023_DIR = Path(__file__).resolve().parent / "data" / "lee2023"

@dataclass(frozen=True)
class BestTrack:
    """A storm track: ``time`` datetime64[m]; ``lat`` deg N; ``lon`` deg E in -180..180;
    ``vmax`` max sustained 1-min wind (kt); ``mslp`` minimum pressure (hPa, NaN if
    missing); ``status`` (TD, TS, HU, EX, ...)."""

    time: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    vmax: np.ndarray
    mslp: np.ndarray
    status: np.ndarray
    storm_id: str = ""
    name: str = ""

    def __len__(self) -> int:
        return int(self.time.size)

    @property
    def lon360(self) -> np.ndarray:
        """Longitude in 0..360 degrees east."""
        return np.mod(self.lon, 360.0)

    def at(self, when: datetime | np.datetime64) -> dict[str, float | str]:
        """The row at ``when`` as a dict; KeyError naming the time when absent."""
        idx = np.flatnonzero(self.time == np.datetime64(when, "m"))
        if idx.size == 0:
            raise KeyError(f"no best-track row at {when} ({self.time[0]} .. {self.time[-1]})")
        i = int(idx[0])
        return {"lat": float(self.lat[i]), "lon": float(self.lon[i]), "vmax": float(self.vmax[i]),
                "mslp": float(self.mslp[i]), "status": str(self.status[i])}

    def _take(self, keep: np.ndarray) -> BestTrack:
        return BestTrack(self.time[keep], self.lat[keep], self.lon[keep], self.vmax[keep],
                         self.mslp[keep], self.status[keep], self.storm_id, self.name)

    def six_hourly(self) -> BestTrack:
        """Only the synoptic rows (00, 06, 12, 18 UTC), dropping e.g. landfall records."""
        minutes = (self.time - self.time.astype("datetime64[D]")).astype(np.int64)
        return self._take(minutes % 360 == 0)

    def between(self, start: datetime, end: datetime) -> BestTrack:
        """Rows with start <= time <= end."""
        t0, t1 = np.datetime64(start, "m"), np.datetime64(end, "m")
        return self._take((self.time >= t0) & (self.time <= t1))


def _coord(text: str, where: str, kind: str = "lat") -> float:
    """'170N' (ATCF, tenths) or '17.0N' (HURDAT2) -> signed degrees; ``kind`` "lat"
    (N/S, at most 90) or "lon" (E/W, at most 360; wrapped later): ATCF's 999N is not
    99.9 N."""
    raw = text.strip()
    text = raw.upper()
    hemis, limit = ("NS", 90.0) if kind == "lat" else ("EW", 360.0)
    name = "latitude" if kind == "lat" else "longitude"
    if len(text) < 2 or text[-1] not in hemis:
        raise ValueError(f"{where}: bad {name} {raw!r}")
    try:
        value = float(text[:-1]) if "." in text else int(text[:-1]) / 10.0
    except ValueError as exc:
        raise ValueError(f"{where}: bad {name} {raw!r}") from exc
    if not (math.isfinite(value) and 0.0 <= value <= limit):
        raise ValueError(f"{where}: {name} {raw!r} is not within 0 .. {limit:g} {hemis[0]}/"
                         f"{hemis[1]}")
    return -value if text[-1] in "SW" else value


def _number(text: str, where: str, what: str) -> float:
    """Integer field; blank or negative (-999, -99) means missing (NaN); ATCF mslp 0 too."""
    text = text.strip()
    if not text:
        return float("nan")
    try:
        value = float(int(text))
    except ValueError as exc:
        raise ValueError(f"{where}: bad {what} {text!r}") from exc
    return float("nan") if value < 0 else value


def _build(rows: list[tuple], path: Path, storm_id: str, name: str) -> BestTrack:
    if not rows:
        raise ValueError(f"{path}: no best-track rows")
    rows.sort(key=lambda r: r[0])
    times = np.array([r[0] for r in rows], dtype="datetime64[m]")
    lon = np.array([r[2] for r in rows], dtype=np.float64)
    # wrap only what is outside so that exact file values stay exact
    lon = np.where((lon < -180.0) | (lon >= 180.0), (lon + 180.0) % 360.0 - 180.0, lon)
    return BestTrack(
        time=times,
        lat=np.array([r[1] for r in rows], dtype=np.float64),
        lon=lon,
        vmax=np.array([r[3] for r in rows], dtype=np.float64),
        mslp=np.array([r[4] for r in rows], dtype=np.float64),
        status=np.array([r[5] for r in rows], dtype="<U2"),
        storm_id=storm_id,
        name=name,
    )


def _open_lines(path: str | os.PathLike[str]) -> tuple[Path, list[str]]:
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a file path, got {path!r}")
    p = Path(path)
    if not p.is_file():
        what = "not a regular file" if p.exists() else "not found"
        raise ValueError(f"path: best-track file {p}: {what}")
    return p, p.read_text(encoding="ascii", errors="replace").splitlines()


def read_atcf(path: str | os.PathLike[str]) -> BestTrack:
    """Read an ATCF b-deck into one row per time (wind-radii repeats merged; repeats
    that disagree on position or intensity are an error naming both lines)."""
    p, lines = _open_lines(path)
    rows: dict[datetime, tuple] = {}
    first_line: dict[datetime, int] = {}
    storm_id, name = "", ""
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{p}:{lineno}"
        f = [x.strip() for x in line.split(",")]
        if len(f) < 11:
            raise ValueError(f"{where}: ATCF line has {len(f)} fields, expected at least 11")
        try:
            when = datetime.strptime(f[2], "%Y%m%d%H")
        except ValueError as exc:
            raise ValueError(f"{where}: bad date/time {f[2]!r} (want YYYYMMDDHH)") from exc
        mslp = _number(f[9], where, "pressure")
        row = (when, _coord(f[6], where), _coord(f[7], where, "lon"), _number(f[8], where, "vmax"),
               float("nan") if mslp == 0 else mslp, f[10].upper()[:2])
        if not storm_id:
            storm_id = f"{f[0].upper()}{int(f[1]):02d}{when.year}" if f[1].isdigit() else f[0]
            name = f[27] if len(f) > 27 else ""
        if when in rows:
            old = rows[when]
            if not np.allclose(old[1:5], row[1:5], equal_nan=True) or old[5] != row[5]:
                raise ValueError(f"{where}: row for {when:%Y-%m-%d %H} UTC disagrees with line "
                                 f"{first_line[when]}")
            continue
        rows[when] = row
        first_line[when] = lineno
    return _build(list(rows.values()), p, storm_id, name)


def read_hurdat2(path: str | os.PathLike[str], storm_id: str | None = None) -> BestTrack:
    """Read storm ``storm_id`` (e.g. "AL132023"; optional when the file holds one storm)
    from a HURDAT2 file."""
    p, lines = _open_lines(path)
    storms: dict[str, tuple[str, list[tuple]]] = {}
    current: list[tuple] | None = None
    remaining = 0
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{p}:{lineno}"
        f = [x.strip() for x in line.split(",")]
        if remaining == 0:  # a header
            if len(f) < 3 or len(f[0]) != 8 or not f[2].isdigit():
                raise ValueError(f"{where}: expected a HURDAT2 header 'AL132023, NAME, N,', "
                                 f"got {line.strip()[:40]!r}")
            current = []
            storms[f[0].upper()] = (f[1], current)
            remaining = int(f[2])
            continue
        if len(f) < 8:
            raise ValueError(f"{where}: HURDAT2 data line has {len(f)} fields, expected >= 8")
        try:
            when = datetime.strptime(f[0] + f[1].zfill(4), "%Y%m%d%H%M")
        except ValueError as exc:
            raise ValueError(f"{where}: bad date/time {f[0]!r}, {f[1]!r}") from exc
        assert current is not None
        current.append((when, _coord(f[4], where), _coord(f[5], where, "lon"),
                        _number(f[6], where, "vmax"), _number(f[7], where, "pressure"),
                        f[3].upper()[:2]))
        remaining -= 1
    if remaining:
        raise ValueError(f"{p}: file ends {remaining} data line(s) short of its last header")
    if storm_id is None:
        if len(storms) != 1:
            raise ValueError(f"storm_id: {p} holds {len(storms)} storms, pick one of "
                             f"{sorted(storms)[:10]}")
        storm_id = next(iter(storms))
    key = storm_id.upper()
    if key not in storms:
        raise ValueError(f"storm_id: {storm_id!r} not in {p} (has {sorted(storms)[:10]})")
    name, rows = storms[key]
    if len({r[0] for r in rows}) != len(rows):
        raise ValueError(f"{p}: storm {key} repeats a time")
    return _build(rows, p, key, name)


def merge(*tracks: BestTrack) -> BestTrack:
    """One track from several of the same storm, sorted by time; a time given twice must
    agree on position (ValueError naming the time otherwise) and is kept once."""
    if not tracks:
        raise ValueError("tracks: need at least one best track")
    rows: dict[np.datetime64, tuple] = {}
    for tr in tracks:
        for i in range(len(tr)):
            row = (tr.lat[i], tr.lon[i], tr.vmax[i], tr.mslp[i], tr.status[i])
            old = rows.get(tr.time[i])
            if old is not None and not np.allclose(old[:2], row[:2]):
                raise ValueError(f"tracks: positions at {tr.time[i]} disagree: "
                                 f"{old[:2]} vs {row[:2]}")
            rows.setdefault(tr.time[i], row)
    times = np.array(sorted(rows), dtype="datetime64[m]")
    cols = list(zip(*(rows[t] for t in times), strict=True))
    return BestTrack(times, np.array(cols[0], float), np.array(cols[1], float),
                     np.array(cols[2], float), np.array(cols[3], float),
                     np.array(cols[4], dtype="<U2"), tracks[0].storm_id, tracks[0].name)


def lee2023() -> BestTrack:
    """Hurricane Lee's best track as shipped with the package: the ATCF b-deck
    (2023-09-05 18 UTC .. 2023-09-12 00 UTC, 6-hourly) plus the fixes of 2023-09-14
    00 UTC (27.6N 67.7W) and of the 2023-09-16 20 UTC landfall (44.3N 66.3W)."""
    return merge(read_atcf(LEE2023_DIR / "bal132023.dat"),
                 read_hurdat2(LEE2023_DIR / "later_fixes.hurdat2", "AL132023"))
