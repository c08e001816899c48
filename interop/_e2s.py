"""The one place that imports earth2studio at module level.

The interop modules take earth2studio's names from here, so a missing install
gives one ImportError line saying how to get it instead of a traceback deep in
some submodule. Only light submodules are imported (the protocols and type
aliases); the model zoo (``earth2studio.models.px``, slow to import: see below) is
imported only when a model is loaded by name.
"""

from __future__ import annotations

import inspect
import sys
from types import SimpleNamespace
from typing import Any

INSTALL_HINT = 'tfda.interop needs earth2studio: pip install "tfda[earth2studio]"'


class _CallerFrames:
    """``inspect`` for earth2studio.utils.imports, with a cheap ``stack()``.

    earth2studio registers each optional dependency under its caller's file name, read
    from ``inspect.stack()[1].filename``; the real ``stack()`` also reads every frame's
    source and searches every loaded module for it, ~0.1 s per call with torch loaded,
    and importing the model zoo makes ~190 calls: ``time python -c "import
    earth2studio.models.px"`` took 30 s, 6.8 s with ``import tfda.interop._e2s`` first
    (2-core development machine, 2026-11-28). Here a frame's file name is its code
    object's, which for an imported module is the same path (the registered keys are
    identical, tested); everything else is the real ``inspect``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(inspect, name)

    @staticmethod
    def stack(context: int = 1) -> list[SimpleNamespace]:
        frames, frame = [], sys._getframe(1)
        while frame is not None:
            frames.append(SimpleNamespace(filename=frame.f_code.co_filename, frame=frame,
                                          lineno=frame.f_lineno,
                                          function=frame.f_code.co_name))
            frame = frame.f_back
        return frames


try:
    from earth2studio.utils import imports as _e2s_imports

    _e2s_imports.inspect = _CallerFrames()  # type: ignore[attr-defined]
    from earth2studio.data.base import DataSource
    from earth2studio.models.da.base import AssimilationModel
    from earth2studio.models.px.base import PrognosticModel
    from earth2studio.utils.type import CoordSystem, FrameSchema
except ImportError as err:  # absent, or an install that lacks these modules
    raise ImportError(f"{INSTALL_HINT} ({err})") from None

__all__ = ["INSTALL_HINT", "AssimilationModel", "CoordSystem", "DataSource", "FrameSchema",
           "PrognosticModel"]
