"""Observing the Lee study's truth at scattered stations instead of every grid point.

Each station observes every model variable. Its value is the bilinear interpolation
(:class:`observations.points.PointObservations`) of the gridded synthetic observation
(truth plus the correlated error draw), so station errors keep the error model's
marginal std and its spatial correlation. The filter is told a diagonal R whose std is
the marginal std times :func:`station_error_factor` (or ``filter_error_std_factor``):
the same principle as :func:`..inputs.correlated_error_factor` on the full grid, counted
over the stations actually present.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tfda.experiments._errors import UserError
from tfda.geo import great_circle_km

if TYPE_CHECKING:
    from tfda.experiments.lee.config import LeeConfig
    from tfda.observations.points import PointObservations


def station_positions(cfg: LeeConfig, lat: torch.Tensor, lon: torch.Tensor
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) of the stations: ``stations`` drawn uniformly over the model's box
    (seeded by ``seed``), or the rows of ``stations_file`` (columns lat, lon)."""
    if cfg.stations_file is not None:
        from tfda.observations.points import read_point_table

        try:
            table = read_point_table(cfg.stations_file, required=("lat", "lon"))
        except ValueError as exc:
            raise UserError(f"stations_file {exc}") from None
        return (np.array(table["lat"], dtype=np.float64),
                np.array(table["lon"], dtype=np.float64))
    rng = np.random.default_rng(cfg.seed + 3)
    lat_lo, lat_hi = float(lat.min()), float(lat.max())
    lon_lo, lon_hi = float(lon.min()), float(lon.max())
    return (rng.uniform(lat_lo, lat_hi, cfg.stations), rng.uniform(lon_lo, lon_hi, cfg.stations))


def station_error_factor(length_km: float, lat: np.ndarray, lon: np.ndarray) -> float:
    """sqrt of the mean over stations of sum_j rho_ij, rho the Gaussian error correlation
    exp(-d^2 / 2L^2) at great-circle distance d: a diagonal R inflated so carries the
    information the correlated errors of one variable's stations carry about a signal
    uniform over them (1 for stations much further apart than L)."""
    la, lo = torch.as_tensor(lat), torch.as_tensor(lon)
    d = great_circle_km(la[:, None], lo[:, None], la[None, :], lo[None, :])
    rho = torch.exp(-0.5 * (d / length_km) ** 2)
    return math.sqrt(float(rho.sum(1).mean()))


def station_operator(cfg: LeeConfig, model: Any, marginal_std: torch.Tensor
                     ) -> PointObservations:
    """The point operator (every variable at every station), its error the diagonal R the
    filter assumes; ``marginal_std`` (variable,) is the true error's std per variable."""
    from tfda.observations.points import PointObservations

    lat, lon = station_positions(cfg, model.lat, model.lon)
    n_var = len(model.variables)
    factor = cfg.filter_error_std_factor
    if factor is None:
        factor = station_error_factor(cfg.error_length_scale_km, lat, lon)
    std = marginal_std.reshape(n_var, 1).expand(n_var, lat.size).reshape(-1) * factor
    try:
        return PointObservations(np.tile(lat, n_var), np.tile(lon, n_var),
                                 np.repeat(list(model.variables), lat.size).tolist(), std,
                                 grid_lat=model.lat, grid_lon=model.lon,
                                 variables=model.variables)
    except ValueError as exc:
        where = f"stations_file {cfg.stations_file}" if cfg.stations_file else "stations"
        raise UserError(f"{where}: {exc}") from None


def station_table(operator: Any, y: torch.Tensor, times: list[Any]) -> Any:
    """The station observations as a table in earth2studio's observation schema (time,
    lat, lon, variable, observation, error): what ``tfda cycle`` and
    ``PointObservations.from_dataframe`` read."""
    import pandas as pd

    loc = operator.locations.numpy()
    std = torch.as_tensor(operator.error.std, dtype=torch.float64).expand(operator.n_obs)
    variable = np.asarray(operator.variable, dtype=object)
    frames = [pd.DataFrame({"time": np.datetime64(t, "ns"), "lat": loc[:, 0], "lon": loc[:, 1],
                            "variable": variable, "observation": y[k].numpy(),
                            "error": std.numpy()}) for k, t in enumerate(times)]
    return pd.concat(frames, ignore_index=True)
