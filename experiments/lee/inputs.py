"""The study's inputs, checked before anything is written: the model, the truth (the
barotropic analogue's run or ERA5), the synthetic observations of it with their error
models, the truth's track and the best track."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import SimpleNamespace

import numpy as np
import torch

from tfda.da.protocols import ObservationError, ObservationOperator
from tfda.diagnostics.tracking import StormTracker
from tfda.experiments.lee.config import TRACK_VARIABLES, LeeConfig
from tfda.experiments.lee.sources import best_track, check_finite, load_era5, load_model, model_spec
from tfda.experiments.lee.stations import station_operator
from tfda.geo import KM_PER_DEG
from tfda.models.base import ForecastModel
from tfda.observations.synthetic import SyntheticObservations


@dataclass(frozen=True)
class Observations:
    """Synthetic observations with the truth they perturb (for diagnostics only)."""

    y: torch.Tensor  # (time, variable, lat, lon)
    truth: torch.Tensor
    error: ObservationError  # the true error model (draws for observations and ensembles)
    filter_error: ObservationError  # the R the filter assumes
    times: list[datetime]
    synthetic: SyntheticObservations  # (its netCDF writer)
    operator: ObservationOperator  # what the cycle assimilates: Identity or the stations
    assimilated: torch.Tensor  # (time, ...) its observations: y, or y at the stations


@dataclass(frozen=True)
class LeeInputs:
    model: ForecastModel
    observations: Observations
    truth_track: tuple[np.ndarray, np.ndarray]  # (lat, lon) every model step, Day 0..F
    first_guess: tuple[float, float]
    best_daily: tuple[np.ndarray, np.ndarray] | None  # Day 0..F, NaN where absent


Track = tuple[np.ndarray, np.ndarray]  # (lat, lon)


def steps_in(model, span: timedelta, what: str) -> int:
    n = span / model.dt
    if abs(n - round(n)) > 1e-9 or round(n) < 1:
        raise ValueError(f"{what}: {span} is not a positive multiple of the model step {model.dt}")
    return int(round(n))


def analogue_truth(cfg: LeeConfig, model, spd: int
                   ) -> tuple[torch.Tensor, Track, tuple[float, float], Track | None]:
    """(truth at the observation times, truth track Day 0..F, first guess, no best track)
    from one run of the analogue, started from the vortex on the first observation day."""
    from tfda.models.barotropic import vortex_state

    variables = list(model.variables)
    obs_times = cfg.obs_times()
    start = cfg.day0_time + timedelta(days=cfg.vortex_day)
    x = vortex_state(model, cfg.vortex_lat, cfg.vortex_lon, vmax=cfg.vortex_vmax,
                     rmax=cfg.vortex_rmax_km * 1e3)
    tracker = StormTracker(model.lat, model.lon, (cfg.vortex_lat, cfg.vortex_lon), 1,
                           hours_per_step=model.dt / timedelta(hours=1),
                           config=cfg.tracker_config())
    n_total = (cfg.forecast_days - cfg.vortex_day) * spd
    truth_obs, idx = [], [variables.index(v) for v in TRACK_VARIABLES]
    obs_steps = {(t - start) // model.dt for t in obs_times}
    with torch.no_grad():
        for k in range(n_total + 1):
            if k:
                x = model.step(x)
            if k in obs_steps:
                truth_obs.append(x[0])
            tracker.update(*(x[:, i] for i in idx))
    track = tracker.result()
    day0 = -cfg.vortex_day * spd
    t_lat, t_lon = track.lat[0, day0:], track.lon[0, day0:]
    if not np.all(np.isfinite(t_lat)):
        lost = int(np.flatnonzero(~np.isfinite(t_lat))[0])
        raise ValueError(f"the analogue truth storm is lost {lost * model.dt} after Day 0; "
                         "enlarge analogue_model's box or shorten forecast_days")
    days = [cfg.day0_time + timedelta(days=d) for d in range(cfg.forecast_days + 1)]
    return (torch.stack(truth_obs), (t_lat, t_lon), (float(t_lat[0]), float(t_lon[0])),
            best_track(cfg, days))


def era5_truth(cfg: LeeConfig, model, spd: int
                ) -> tuple[torch.Tensor, Track, tuple[float, float], Track | None]:
    """(truth at the observation times, truth track Day 0..F, first guess, daily best
    track or None) from ERA5, the truth track found by tracking ERA5 itself."""
    from tfda.models import check_grid

    track_times = [cfg.day0_time + k * model.dt for k in range(cfg.forecast_days * spd + 1)]
    truth, coords = load_era5(cfg, cfg.obs_times(), list(model.variables))
    try:
        check_grid(model, torch.tensor(np.array(coords["lat"])),
                   torch.tensor(np.array(coords["lon"])))
    except ValueError as exc:
        raise ValueError(f"--era5 {cfg.era5} does not match the model grid: {exc}") from exc
    fields, _ = load_era5(cfg, track_times, TRACK_VARIABLES)
    check_finite(cfg, truth, cfg.obs_times(), list(model.variables))
    check_finite(cfg, fields, track_times, TRACK_VARIABLES)
    best_all = best_track(cfg, track_times)
    first_guess = cfg.first_guess
    if best_all is not None and np.isfinite(best_all[0][0]):
        first_guess = (float(best_all[0][0]), float(best_all[1][0]))
    tracker = StormTracker(model.lat, model.lon, first_guess, 1,
                           hours_per_step=model.dt / timedelta(hours=1),
                           config=cfg.tracker_config())
    for k in range(fields.shape[0]):
        tracker.update(*(fields[k:k + 1, i] for i in range(3)))
    track = tracker.result()
    t_lat, t_lon = track.lat[0], track.lon[0]
    if not np.isfinite(t_lat[0]):
        raise ValueError(f"no storm found in ERA5 within {cfg.max_displacement_km} km of "
                         f"the first guess {first_guess} at Day 0")
    best = None if best_all is None else (best_all[0][::spd], best_all[1][::spd])
    return truth, (t_lat, t_lon), (float(t_lat[0]), float(t_lon[0])), best


def observe_truth(cfg: LeeConfig, model, truth: torch.Tensor) -> Observations:
    """The truth plus correlated error draws, and the R the filter is told."""
    from tfda.observations.synthetic import default_error, make_observations

    variables = list(model.variables)
    obs_times = cfg.obs_times()
    error = default_error(variables, model.lat, model.lon,
                          length_scale_km=cfg.error_length_scale_km,
                          std={v: s * cfg.error_scale for v, s in default_std(variables).items()})
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    syn = make_observations(truth.cpu(), obs_times, variables=variables, lat=model.lat,
                            lon=model.lon, error=error, generator=gen)
    filter_error = error
    if cfg.filter_error == "diagonal":
        from tfda.observations.errors import DiagonalError

        factor = cfg.filter_error_std_factor
        if factor is None:
            factor = correlated_error_factor(cfg.error_length_scale_km, model.lat, model.lon)
        filter_error = DiagonalError(error.std * factor)
    if cfg.observes_stations:
        operator = station_operator(cfg, model, error.std.reshape(-1))
        with torch.no_grad():
            assimilated = operator(syn.y)
        filter_error = operator.error
    else:
        from tfda.observations.operators import Identity

        operator, assimilated = Identity(filter_error), syn.y
    return Observations(y=syn.y, truth=truth.cpu(), error=error, filter_error=filter_error,
                        times=obs_times, synthetic=syn, operator=operator,
                        assimilated=assimilated)


def prepare_inputs(cfg: LeeConfig) -> LeeInputs:
    """Model, truth, observations and reference tracks; every input is checked here,
    before anything is written, and ERA5 before the network is built (sources.model_spec)."""
    model = model_spec(cfg)
    spd = steps_in(model, timedelta(days=1), "day")
    missing_track = [v for v in TRACK_VARIABLES if v not in model.variables]
    if missing_track:
        raise ValueError(f"model {cfg.model!r} lacks {missing_track}, which the tracker needs")
    if cfg.mode == "analogue":
        truth, track, first_guess, best = analogue_truth(cfg, model, spd)
    else:
        truth, track, first_guess, best = era5_truth(cfg, model, spd)
        if isinstance(model, SimpleNamespace):  # model_spec only described FourCastNet
            model = load_model(cfg)
    return LeeInputs(model, observe_truth(cfg, model, truth), track, first_guess, best)


def correlated_error_factor(length_km: float, lat: torch.Tensor, lon: torch.Tensor) -> float:
    """sqrt(sum of the error correlations over the grid) ~ sqrt(2 pi L^2 / (dx dy)).

    n observations of a uniform signal with errors of variance s^2 and Gaussian
    correlation of length L carry the information n / (s^2 sum_k rho_k) (for n much
    larger than the correlation area); a diagonal R with variances s^2 sum_k rho_k carries
    the same. The sum is the integral of the Gaussian correlation over the plane,
    2 pi L^2, over the area of a grid cell at the box's middle latitude. It leaves the
    small scales, where correlated errors are more informative, under-used: a
    conservative R for a filter that cannot invert the full one."""
    lat = torch.as_tensor(lat, dtype=torch.float64)
    lon = torch.as_tensor(lon, dtype=torch.float64)
    km_per_deg = KM_PER_DEG
    dy = km_per_deg * float((lat[1:] - lat[:-1]).abs().mean())
    dx = km_per_deg * float((lon[1:] - lon[:-1]).abs().mean()) * math.cos(
        math.radians(float(lat.mean())))
    return math.sqrt(max(2.0 * math.pi * length_km**2 / (dx * dy), 1.0))


def default_std(variables) -> dict[str, float]:
    from tfda.observations.synthetic import DEFAULT_ERROR_STD

    unknown = [v for v in variables if v not in DEFAULT_ERROR_STD]
    if unknown:
        raise ValueError(f"no default observation-error std for {unknown}")
    return {v: DEFAULT_ERROR_STD[v] for v in variables}
