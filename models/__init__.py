"""Forecast models behind one interface (docs/design.md section 3).

``models.load(name, **kwargs)`` builds a registered model ("fourcastnet",
"barotropic", "lorenz96"); :func:`rollout` iterates a model from an initial state.
"""

from tfda.models.base import (
    ForecastModel,
    NormalisedModule,
    available,
    check_grid,
    check_state,
    check_variables,
    load,
    register,
    rollout,
)

__all__ = [
    "ForecastModel",
    "NormalisedModule",
    "available",
    "check_grid",
    "check_state",
    "check_variables",
    "load",
    "register",
    "rollout",
]
