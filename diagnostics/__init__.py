"""Diagnostics of forecasts and analyses: cyclone tracking and track-uncertainty metrics.

* :mod:`~tfda.diagnostics.tracking`: the TempestExtremes-style tracker
  (:func:`~tfda.diagnostics.tracking.track_storm`, :class:`StormTracker`);
* :mod:`~tfda.diagnostics.track_metrics`: per lead day, the ensemble's quantile
  ellipse, whether the truth lies inside it, mean-position error and spread.

Depends on numpy, torch and :mod:`tfda.geo` only.
"""
