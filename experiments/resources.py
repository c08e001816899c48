"""What a run will need, estimated from the sizes it was given, before any work.

Every command checks its step counts and its largest arrays here while validating,
so an impossible run (a billion members, a million forecast days, an ERA5 window of
8,000 years hourly) is one line naming the option and the estimate, exit 2, before
anything is computed or written -- not a hang, and not a run that dies after an hour.
The limits are generous: a legitimate run is far below them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from tfda.experiments._errors import UserError

# No command legitimately integrates, samples or cycles this many steps in one run:
# at the fastest step tfda has (~10 us, Lorenz-96) it is minutes; typical steps take
# milliseconds, i.e. hours to weeks.
MAX_STEPS = 1_000_000
# Times in one ERA5 request window (more than 100 years 6-hourly).
MAX_TIMES = 200_000


def machine_memory() -> int:
    """Bytes of physical memory on this machine."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:  # psutil is optional: POSIX sysconf
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover - the loop returns


def check_memory(name: str, nbytes: float, what: str) -> None:
    """UserError (a ValueError) naming ``name`` when ``nbytes`` (``what`` says of which
    arrays) is more than this machine's memory."""
    total = machine_memory()
    if nbytes > total:
        raise UserError(f"{name}: {what} need about {format_bytes(nbytes)} of memory, "
                         f"more than this machine's {format_bytes(total)}")


def check_steps(name: str, steps: float, what: str = "steps", limit: int = MAX_STEPS) -> None:
    """UserError naming ``name`` when a run would take more than ``limit`` ``what``."""
    if not math.isfinite(steps) or steps > limit:
        raise UserError(f"{name}: the run would take about {steps:.3g} {what}, more than "
                         f"the {limit:,} tfda accepts in one run")


def box_points(box: Any) -> int | None:
    """Grid points of a lat/lon box (a mapping or an object with lat_south, lat_north,
    lon_west, lon_east, resolution in degrees, as the barotropic analogue's), counted
    before the model builds the grid; None when a value is missing or not a number."""
    def get(key: str) -> float:
        return float(box[key] if isinstance(box, Mapping) else getattr(box, key))

    try:
        res = get("resolution")
        nlat = (get("lat_north") - get("lat_south")) / res + 1
        nlon = (get("lon_east") - get("lon_west")) / res + 1
    except (AttributeError, KeyError, TypeError, ValueError, ZeroDivisionError):
        return None  # the model's own checks name the bad key
    if not (math.isfinite(nlat) and math.isfinite(nlon)):
        return None
    return int(max(nlat, 1) * max(nlon, 1))


def ensemble_bytes(members: int, state_size: int, copies: float = 2.0,
                   itemsize: int = 8) -> float:
    """Bytes of ``copies`` ensembles (the forecast and the analysis): a lower bound, so
    that only runs that cannot fit are refused, never one that might."""
    return float(members) * float(state_size) * itemsize * copies
