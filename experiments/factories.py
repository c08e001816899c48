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


def analysis_group() -> tuple[Any, int]:
    """(process group, rank) when the command was launched on several processes (mpirun,
    srun or torchrun): the localised analyses are then sharded over them, each rank a
    slab of the local domains (:mod:`da.filters.halo`); (None, 0) for one process.

    Every rank forecasts the whole ensemble (the models step the whole state), so the
    wait between two collectives is one rank's slab of an analysis: the group's timeout
    is 30 minutes, not the 2 minutes that catch a dead rank in the tests."""
    import datetime

    import torch.distributed as dist

    from tfda.da import distributed

    if distributed.detect_launcher() == "single":
        return None, 0
    ctx = distributed.init(timeout=datetime.timedelta(minutes=30))
    if ctx.world_size == 1:
        return None, 0
    return dist.group.WORLD, ctx.rank


def shard_filter_options(name: str, options: Mapping[str, Any], group: Any,
                         where: str) -> dict[str, Any]:
    """The ``fixed`` entry that shards filter ``name`` over ``group`` (none for one
    process); several processes need a localised kernel EnSF or LETKF."""
    if group is None:
        return {}
    if options.get("radius") is None:
        raise UserError(f"{where}: several processes shard the localised analysis; set a "
                        "radius (the slabs exchange only the observations within it)")
    if name == "ensf" and options.get("score", "kernel") != "kernel":
        raise UserError(f"{where}: several processes shard the kernel EnSF and the LETKF, "
                        f"not score = {options.get('score')!r}")
    return {"group": group}
