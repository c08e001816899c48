"""The Hurricane Lee study (``tfda lee``) of Rafid et al. (SC'24 workshops, Sec. V, Fig. 4).

Day 0 = 2023-09-08 00 UTC; observations on Days -3, -2, -1 and 0 are the truth plus
correlated perturbations (observations.synthetic); 20 members. The EnSF ensemble is
cycled forecast -> analysis from Day -3 to Day 0; the baseline is the Day 0
observations plus draws of the same error model. Both are forecast 8 days as one
batch, tracked on the fly (diagnostics.tracking) and compared with the tracked truth: per
lead day the great-circle error of the ensemble-mean position, the area of the
q-quantile covariance ellipse, whether the truth lies inside it, and the spread.

Split by job: :mod:`.config` (LeeConfig), :mod:`.sources` (model, ERA5, best track),
:mod:`.inputs` (truth and observations), :mod:`.study` (cycle, forecasts, metrics),
:mod:`.io` (the run directory), :mod:`.cli` (``tfda lee``).
"""

from tfda.experiments.lee.cli import format_table, main
from tfda.experiments.lee.config import ANALOGUE_MODEL, TRACK_VARIABLES, LeeConfig
from tfda.experiments.lee.inputs import (
    LeeInputs,
    Observations,
    correlated_error_factor,
    prepare_inputs,
)
from tfda.experiments.lee.study import run

__all__ = ["ANALOGUE_MODEL", "TRACK_VARIABLES", "LeeConfig", "LeeInputs", "Observations",
           "correlated_error_factor", "format_table", "main", "prepare_inputs", "run"]
