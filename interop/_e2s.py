"""The one place that imports earth2studio at module level.

The interop modules take earth2studio's names from here, so a missing install
gives one ImportError line saying how to get it instead of a traceback deep in
some submodule. Only light submodules are imported (the protocols and type
aliases); the model zoo (``earth2studio.models.px``, ~20 s to import) is
imported only when a model is loaded by name.
"""

from __future__ import annotations

INSTALL_HINT = 'tfda.interop needs earth2studio: pip install "tfda[earth2studio]"'

try:
    from earth2studio.data.base import DataSource
    from earth2studio.models.da.base import AssimilationModel
    from earth2studio.models.px.base import PrognosticModel
    from earth2studio.utils.type import CoordSystem, FrameSchema
except ImportError as err:  # absent, or an install that lacks these modules
    raise ImportError(f"{INSTALL_HINT} ({err})") from None

__all__ = ["INSTALL_HINT", "AssimilationModel", "CoordSystem", "DataSource", "FrameSchema",
           "PrognosticModel"]
