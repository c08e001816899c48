"""The one place commands turn names and option tables into filters and observation
operators: ``tfda cycle`` ([filter], [observations]), ``tfda l96`` (settings + ``--set``)
and ``tfda lee`` (the ``ensf_*`` keys) all build through here, so an option is checked
the same way, and named the same way in its error, whichever command reads it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from tfda.experiments._errors import UserError
from tfda.experiments.config import build

if TYPE_CHECKING:
    from tfda.da.filters import LETKF, EnSF
    from tfda.da.protocols import ObservationError, ObservationOperator

FILTER_NAMES = ("ensf", "letkf")
OPERATOR_NAMES = ("identity", "every", "arctan", "abs")


def filter_class(name: str, where: str = "filter.name") -> type[EnSF] | type[LETKF]:
    """The dataclass of the filter called ``name`` (imported on demand: the LETKF-only
    user never imports the samplers)."""
    if name == "ensf":
        from tfda.da.filters.ensf import EnSF

        return EnSF
    if name == "letkf":
        from tfda.da.filters.letkf import LETKF

        return LETKF
    raise UserError(f"{where}: unknown filter {name!r} (one of {', '.join(FILTER_NAMES)})")


def make_filter(name: str, options: Mapping[str, Any], *, where: str,
                fixed: Mapping[str, Any] | None = None) -> EnSF | LETKF:
    """``name``'s dataclass from ``options`` (every key and type checked, errors prefixed
    by ``where``) plus ``fixed``, the values the program supplies (distance functions,
    grid sites, a process group)."""
    return build(filter_class(name), dict(options), where, fixed=fixed)


def make_operator(name: str, error: ObservationError | float, *,
                  state_size: int | None = None, stride: int = 1,
                  locations: Sequence[float] | torch.Tensor | None = None,
                  where: str = "observations.operator") -> ObservationOperator:
    """``identity`` (every component), ``every`` (every ``stride``-th component of the
    flattened state of ``state_size``), ``arctan`` (Bao et al. 2309.00983, Eq. 38) or
    ``abs`` (|x|, sign-ambiguous), the last two on every ``stride``-th component if > 1;
    ``locations`` (one per observation) let a localised filter place the observations."""
    from tfda.observations.operators import Absolute, Arctan, Identity, Subset

    if name == "identity":
        return Identity(error, locations=locations)
    if name in ("arctan", "abs") and stride > 1:  # every stride-th component of the state
        if state_size is None:
            raise ValueError(f"make_operator({name!r}, stride={stride}) needs state_size")
        idx = list(range(0, state_size, stride))
        cls = Arctan if name == "arctan" else Absolute
        return cls(error, indices=idx, locations=torch.tensor(idx, dtype=torch.float64))
    if name == "arctan":
        return Arctan(error, locations=locations)
    if name == "abs":
        return Absolute(error, locations=locations)
    if name == "every":
        if state_size is None:
            raise ValueError("make_operator('every') needs state_size")
        return Subset(error, indices=list(range(0, state_size, stride)))
    raise UserError(f"{where}: unknown operator {name!r} (one of {', '.join(OPERATOR_NAMES)})")


def model_distance(model: Any) -> Any:
    """The distance a localised filter needs on ``model``'s state: the ring distance for
    Lorenz-96 (in grid points), great-circle km on a (variable, lat, lon) grid."""
    from tfda.da.filters.local import grid_distance, periodic_distance
    from tfda.models.lorenz96 import Lorenz96

    if isinstance(model, Lorenz96):
        return periodic_distance(model.nx)
    return grid_distance(model.lat, model.lon)
