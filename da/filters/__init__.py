"""Analysis steps: the ensemble score filter (EnSF) and the LETKF baseline.

Both are frozen dataclasses called as ``filter(prior (M, ...), y, obs_operator)``
(or ``filter.analysis(...)``) returning the analysis ensemble shaped like the prior.
"""

from tfda.da._checks import MaskedObservationWarning
from tfda.da.filters.ensf import EnSF, linear_damping
from tfda.da.filters.letkf import (
    LETKF,
    gaspari_cohn,
    great_circle_distance,
    grid_distance,
    periodic_distance,
)

__all__ = [
    "EnSF",
    "LETKF",
    "MaskedObservationWarning",
    "gaspari_cohn",
    "great_circle_distance",
    "grid_distance",
    "linear_damping",
    "periodic_distance",
]
