"""``tfda cycle``'s point observations: a CSV/Parquet/netCDF table of (lat, lon, variable,
error[, observation, cycle]) rows as an operator and, with observed values, y per cycle
(the ``[observations] operator = "points"`` section; docs in :mod:`experiments.cycle`)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from tfda.experiments._errors import UserError


def _read_points(path: str | os.PathLike):
    from tfda.observations.points import read_point_table

    try:
        return read_point_table(path)
    except ValueError as exc:
        raise UserError(f"observations.file {exc}") from None


def point_observations(table, model, n_cycles: int, dtype: torch.dtype
                       ) -> tuple[Any, torch.Tensor | None]:
    """The point operator over every distinct (lat, lon, variable) of ``table`` and, where
    the table has an ``observation`` column, y (cycle, point): the row's value at its
    ``cycle`` (1 .. n_cycles), NaN where a point has no row in a cycle (not observed).
    Without observations the cycle draws y = H(truth) + eps at every point."""
    from tfda.observations.points import PointObservations

    if not all(len(getattr(model, a, ())) >= 2 for a in ("lat", "lon")):
        raise UserError("observations.operator = 'points' needs a model on a (variable, lat, "
                        f"lon) grid; {type(model).__name__} has none")
    keys = ["lat", "lon", "variable"]
    points = table.drop_duplicates(keys).reset_index(drop=True)
    try:
        op, _ = PointObservations.from_dataframe(
            points.assign(observation=0.0), grid_lat=model.lat, grid_lon=model.lon,
            variables=list(model.variables), dtype=dtype)
    except ValueError as exc:
        raise UserError(f"observations.file {exc}") from None
    if "observation" not in table.columns:
        return op, None
    if "cycle" not in table.columns:
        raise UserError("observations.file: an observation column needs a cycle column "
                        f"(1 .. {n_cycles}) saying when each value was observed")
    cycle = table["cycle"].to_numpy()
    bad = ~np.isin(cycle, np.arange(1, n_cycles + 1))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise UserError(f"observations.file row {row}: cycle {cycle[row]} is not one of "
                        f"1 .. {n_cycles}")
    index = table.merge(points[keys].reset_index(), on=keys, how="left")["index"].to_numpy()
    if len(set(zip(cycle.tolist(), index.tolist(), strict=True))) < len(table):
        raise UserError("observations.file: a point has two rows in the same cycle")
    y = torch.full((n_cycles, op.n_obs), float("nan"), dtype=dtype)
    values = np.array(table["observation"], dtype=np.float64)  # a writable copy
    y[torch.as_tensor(cycle.astype(np.int64) - 1), torch.as_tensor(np.array(index))] = (
        torch.as_tensor(values, dtype=dtype))
    return op, y
