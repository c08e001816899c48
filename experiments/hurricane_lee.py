"""``tfda lee``: the Hurricane Lee study of Rafid et al. (SC'24 workshops, Sec. V, Fig. 4).

Day 0 = 2023-09-08 00 UTC; observations on Days -3, -2, -1 and 0 are the truth
plus correlated perturbations (observations.synthetic); 20 members.

* EnSF: the Day -3 ensemble is the Day -3 observations plus draws of the
  observation-error model; it is cycled forecast -> EnSF analysis (Bao, Zhang &
  Zhang, arXiv 2309.00983) through Days -2, -1 and 0, with a checkpoint after
  every analysis so an interrupted run resumes.
* Baseline: the Day 0 observations plus draws of the same error model.

Both ensembles are forecast ``forecast_days`` (8) days as one batch, tracked
on the fly (diagnostics.tracking) and compared with the tracked truth: per lead
day the great-circle error of the ensemble-mean position, the area of the
q-quantile covariance ellipse, whether the truth lies inside it, and the spread.

Modes: ``--analogue`` (default; CPU, about a minute): the truth is the
barotropic analogue (models.barotropic) started from a Lee-like vortex at Lee's
Day -3 position (11.55N 37.35W, extrapolated from the first best-track fixes) in
the steering field fitted to Lee's track by ``python -m
experiments.fit_lee_steering`` (within 82 km of every best-track fix, Days -2 .. 6;
stored in experiments/data/lee_steering.json), and the same analogue is the
forecast model. Both modes report the truth's distance from Lee's best track
(shipped with the package: observations.besttrack.lee2023) on the days with a fix. Real: ``--era5
PATH`` (a file from ``tfda era5 prepare`` or a directory of CDS downloads) and
``--weights DIR`` (FourCastNet v1: backbone.ckpt, global_means.npy,
global_stds.npy) on a GPU; ``--parareal-slices`` runs the EnSF ODE sampler with
Parareal (Rafid et al. Algorithm 1), across ranks under mpirun/srun/torchrun.

The run directory holds config.json, observations.nc, analyses.nc, tracks.nc,
metrics.json, tracks.png/.pdf and, written last, COMPLETE; reading inputs and
writing these files is experiments.lee_io.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tfda.diagnostics.track_metrics import lead_day_metrics
from tfda.diagnostics.tracking import StormTracker, TrackerConfig
from tfda.experiments import cycle as cycle_io
from tfda.experiments import rundir
from tfda.experiments._errors import ArgumentParser, UserError, command
from tfda.experiments.config import build, load_toml, parse_device
from tfda.experiments.fit_lee_steering import VORTEX, analogue_model, load_fitted
from tfda.experiments.lee_io import (
    _best_track,
    _check_finite,
    _load_era5,
    _load_model,
    begin_run,
    finish_run,
    model_spec,
    write_outputs,
)
from tfda.experiments.plot_tracks import plot_run
from tfda.geo import EARTH_RADIUS_KM, great_circle_km

TRACK_VARIABLES = ("msl", "u850", "v850")

# The analogue's box and steering field: fitted to Lee's best track alone (no filter
# result enters), by `python -m tfda.experiments.fit_lee_steering --write`.
_FITTED = load_fitted()
ANALOGUE_MODEL: dict[str, Any] = analogue_model(_FITTED)


@dataclass(frozen=True)
class LeeConfig:
    """Everything the study needs; written to the run directory as config.json."""

    mode: str = "analogue"  # "analogue" or "era5"
    model: str = "barotropic"  # registry name; era5 mode: "fourcastnet"
    day0: str = "2023-09-08T00:00"
    obs_days: tuple[int, ...] = (-3, -2, -1, 0)
    members: int = 20
    forecast_days: int = 8
    seed: int = 2023
    # observation errors: DEFAULT_ERROR_STD x error_scale, Gaussian correlation length
    error_scale: float = 1.0
    error_length_scale_km: float = 300.0
    # R the filter assumes: "diagonal" (the marginal variances of the true R) or "full";
    # the full correlated R^{-1} makes the explicit 100-step sampler blow up here.
    filter_error: str = "diagonal"
    # "diagonal" only: the filter's std is the true marginal std times this factor; None:
    # correlated_error_factor() -- the diagonal R then carries the information about a
    # large-scale signal that the correlated R does (docs/ensf.md measures 1, 3 and auto)
    filter_error_std_factor: float | None = None
    # EnSF (da.filters.ensf.EnSF). "kernel": the localised Gaussian-mixture prior with the
    # exact posterior score (docs/ensf.md), one local analysis per grid point within
    # ensf_radius_km (Gaspari-Cohn, as the LETKF's); ensf_steps flow steps each way.
    # "paired" (the published EnSF code's estimator) used ensf_steps = 100 with the ODE
    # sampler and standardised coordinates; "mixture" collapsed the ensemble here.
    ensf_score: str = "kernel"
    ensf_steps: int = 10
    ensf_bandwidth: float = 0.95
    ensf_radius_km: float | None = 300.0
    ensf_sampler: str = "ode"  # paired/mixture: probability flow (Eq. 9), Parareal-ready
    ensf_eps_a: float = 0.05
    ensf_inflation: float = 1.0
    ensf_standardise: bool = True  # paired/mixture: prior-standardised units (2404.00844)
    parareal_slices: int = 0  # > 0: ODE sampler with Parareal
    parareal_mode: str = "batched"  # "batched" (one device) or "distributed" (ranks)
    # tracking and figure
    quantile: float = 0.9
    first_guess: tuple[float, float] = (17.0, 308.2)  # best track, 2023-09-08 00 UTC
    vorticity_threshold: float = 5e-5
    max_displacement_km: float = 500.0
    # analogue: the truth's vortex starts on vortex_day (<= the first obs day)
    vortex_day: int = _FITTED["start_day"]
    vortex_lat: float = _FITTED["start_lat"]
    vortex_lon: float = _FITTED["start_lon"]
    vortex_vmax: float = VORTEX["vmax"]
    vortex_rmax_km: float = VORTEX["rmax_km"]
    analogue_model: dict[str, Any] = field(default_factory=lambda: dict(ANALOGUE_MODEL))
    # real data
    era5: str | None = None
    weights: str | None = None
    afno: dict[str, Any] = field(default_factory=dict)  # AFNOConfig overrides
    best_track: str | None = "auto"
    device: str = "auto"
    # CPU threads for the analogue: its FFTs are tiny, where extra threads only add
    # contention (measured 30x slower with 2 threads on a loaded 2-core machine)
    threads: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("analogue", "era5"):
            raise ValueError(f"mode must be 'analogue' or 'era5', got {self.mode!r}")
        if self.members < 3:
            raise ValueError(f"members must be >= 3 (an ellipse needs 3), got {self.members}")
        self._check_ensf()
        if self.parareal_slices > 0 and self.ensf_score == "kernel":
            raise ValueError("parareal_slices: Parareal runs the paired/mixture samplers; set "
                             "ensf_score = 'paired' (the kernel EnSF's transport is "
                             "not a long sampler run)")
        if self.forecast_days < 1:
            raise ValueError(f"forecast_days must be >= 1, got {self.forecast_days}")
        days = list(self.obs_days)
        if len(days) < 1 or days != sorted(set(days)):
            raise ValueError(f"obs_days must be distinct and increasing, got {days}")
        if days[-1] != 0:
            raise ValueError(f"obs_days must end on Day 0 (the analysis time), got {days}")
        if self.vortex_day > days[0]:
            raise ValueError(f"vortex_day ({self.vortex_day}) must not be later than the "
                             f"first of obs_days ({days[0]})")
        if not 0 < self.quantile < 1:
            raise ValueError(f"quantile must lie in (0, 1), got {self.quantile}")
        if self.filter_error_std_factor is not None and not self.filter_error_std_factor > 0:
            raise ValueError("filter_error_std_factor must be > 0, got "
                             f"{self.filter_error_std_factor}")
        if self.filter_error not in ("diagonal", "full"):
            raise ValueError("filter_error must be 'diagonal' or 'full', "
                             f"got {self.filter_error!r}")
        if self.parareal_mode not in ("batched", "distributed", "serial"):
            raise ValueError(f"parareal_mode must be batched/distributed/serial, "
                             f"got {self.parareal_mode!r}")
        try:
            datetime.fromisoformat(self.day0)
        except ValueError:
            raise ValueError(f"day0 must be an ISO date/time such as 2023-09-08T00:00, "
                             f"got {self.day0!r}") from None

    def _check_ensf(self) -> None:
        """The EnSF options, checked by EnSF itself, before any work (its errors name them)."""
        from tfda.da.filters.ensf import EnSF

        if self.ensf_radius_km is not None and not self.ensf_radius_km > 0:
            raise ValueError(f"ensf_radius_km must be > 0 or absent, got {self.ensf_radius_km}")
        try:
            EnSF(score=self.ensf_score, sampler=self.ensf_sampler, steps=self.ensf_steps,
                 eps_a=self.ensf_eps_a, inflation=self.ensf_inflation,
                 bandwidth=self.ensf_bandwidth)
        except ValueError as exc:
            raise ValueError(f"ensf options: {exc}") from None

    @property
    def day0_time(self) -> datetime:
        return datetime.fromisoformat(self.day0)

    def obs_times(self) -> list[datetime]:
        return [self.day0_time + timedelta(days=d) for d in self.obs_days]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of what determines the results: cosmetic ``progress`` is left out, so a
        run resumed with --no-progress picks up its checkpoints."""
        return cycle_io.fingerprint({k: v for k, v in self.to_dict().items()
                                     if k != "progress"})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LeeConfig:
        """Every key and type checked (experiments.config), nested tables included."""
        v = dict(values)
        if "analogue_model" in v:
            from tfda.models.barotropic import BarotropicConfig

            build(BarotropicConfig, v["analogue_model"], "analogue_model")
            v["analogue_model"] = {**ANALOGUE_MODEL, **v["analogue_model"]}
        if v.get("afno"):
            from tfda.models.fourcastnet.afno import AFNOConfig

            build(AFNOConfig, v["afno"], "afno")
        return build(cls, v)


def _device(cfg: LeeConfig) -> torch.device:
    return parse_device(cfg.device, "--device")


def _ensf(cfg: LeeConfig, model: Any, group: Any = None):
    from tfda.da.filters import EnSF, grid_distance
    from tfda.da.filters.local import grid_sites

    sampler: Any = cfg.ensf_sampler
    if cfg.parareal_slices > 0:
        from tfda.da.parareal import ParallelConfig

        sampler = ParallelConfig(n_slices=cfg.parareal_slices, mode=cfg.parareal_mode,
                                 slice_group=group)
    local: dict[str, Any] = {}
    if cfg.ensf_score == "kernel" and cfg.ensf_radius_km is not None:
        local = {"radius": cfg.ensf_radius_km, "distance": grid_distance(model.lat, model.lon),
                 "sites": grid_sites(model.lat, model.lon, len(model.variables))}
    return EnSF(score=cfg.ensf_score, sampler=sampler, steps=cfg.ensf_steps,
                eps_a=cfg.ensf_eps_a, inflation=cfg.ensf_inflation,
                standardise=cfg.ensf_standardise, progress=cfg.progress,
                bandwidth=cfg.ensf_bandwidth, **local)


def _steps(model, span: timedelta, what: str) -> int:
    n = span / model.dt
    if abs(n - round(n)) > 1e-9 or round(n) < 1:
        raise ValueError(f"{what}: {span} is not a positive multiple of the model step {model.dt}")
    return int(round(n))


def _cycle(cfg: LeeConfig, model, obs, ckpt_dir: Path, device, group=None, *,
           checkpoint: bool = True, on_save=None) -> dict[str, Any]:
    """Day -3 ensemble from the observations, then forecast/EnSF-analysis cycles to Day 0
    through :func:`da.cycle.run_cycle`, checkpointed after every analysis (the file name
    carries a hash of the configuration, so another set-up never resumes from it)."""
    from tfda.da.cycle import run_cycle
    from tfda.experiments.checkpoint import FileCheckpointer
    from tfda.observations.operators import Identity

    y = obs.y.to(device)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
    pert = obs.error.sample((cfg.members, *y.shape[1:]), generator=gen, dtype=y.dtype)
    ens = y[0][None] + pert.to(device)
    gaps = {obs.times[k] - obs.times[k - 1] for k in range(1, len(obs.times))}
    if len(gaps) > 1:
        raise ValueError(f"obs_days must be evenly spaced, got {list(cfg.obs_days)}")
    if not gaps:  # Day 0 only: the "cycle" is the analysis of the initial ensemble
        return {"ensemble": ens, "log": []}
    n = _steps(model, gaps.pop(), "obs_days")
    fp = cfg.fingerprint()
    ds = run_cycle(model, _ensf(cfg, model, group), Identity(obs.filter_error), ens,
                   n_cycles=len(obs.times) - 1, observations=lambda k, _truth: y[k],
                   steps_per_cycle=n, seed=cfg.seed + 100,
                   checkpointer=FileCheckpointer(ckpt_dir / f"cycle-{fp}.pt", on_save=on_save)
                   if checkpoint else None,
                   progress=cfg.progress, coords=cycle_io.model_coords(model, tuple(ens.shape[1:])))
    ens = torch.as_tensor(ds["ensemble"].values).to(device)
    log = [{"time": obs.times[k].isoformat(),
            **{m: float(ds[m].values[k - 1]) for m in ("spread_f", "spread_a", "obs_rmse_f",
                                                         "obs_rmse_a")}}
           for k in range(1, len(obs.times))]
    truth0 = obs.truth[-1].to(device)
    log[-1]["analysis_rmse_vs_truth"] = float((ens.mean(0) - truth0).square().mean().sqrt())
    log[-1]["obs_rmse_vs_truth"] = float((y[-1] - truth0).square().mean().sqrt())
    return {"ensemble": ens, "log": log}


def _forecast_tracks(cfg: LeeConfig, model, ens: torch.Tensor, first_guess, steps: int):
    """Forecast all members ``steps`` steps as one batch, tracking at every step."""
    from tqdm import tqdm

    names = list(model.variables)
    idx = [names.index(v) for v in TRACK_VARIABLES]
    tracker = StormTracker(model.lat, model.lon, first_guess, ens.shape[0],
                           hours_per_step=model.dt / timedelta(hours=1),
                           config=_tracker_config(cfg))
    x = ens
    tracker.update(*(x[:, i] for i in idx))
    with torch.no_grad():
        for _ in tqdm(range(steps), desc="forecast", disable=not cfg.progress, leave=False):
            x = model.step(x)
            tracker.update(*(x[:, i] for i in idx))
    return tracker.result()


def _tracker_config(cfg: LeeConfig) -> TrackerConfig:
    return TrackerConfig(vorticity_threshold=cfg.vorticity_threshold,
                         max_displacement_km=cfg.max_displacement_km)


@dataclass(frozen=True)
class Observations:
    """Synthetic observations with the truth they perturb (for diagnostics only)."""

    y: torch.Tensor  # (time, variable, lat, lon)
    truth: torch.Tensor
    error: Any  # the true error model (draws for observations and ensembles)
    filter_error: Any  # the R the filter assumes
    times: list[datetime]
    synthetic: Any  # observations.synthetic.SyntheticObservations (netCDF writer)


@dataclass(frozen=True)
class LeeInputs:
    model: Any
    observations: Observations
    truth_track: tuple[np.ndarray, np.ndarray]  # (lat, lon) every model step, Day 0..F
    first_guess: tuple[float, float]
    best_daily: tuple[np.ndarray, np.ndarray] | None  # Day 0..F, NaN where absent


_Track = tuple[np.ndarray, np.ndarray]  # (lat, lon)


def _analogue_truth(cfg: LeeConfig, model, spd: int
                    ) -> tuple[torch.Tensor, _Track, tuple[float, float], _Track | None]:
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
                           config=_tracker_config(cfg))
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
            _best_track(cfg, days))


def _era5_truth(cfg: LeeConfig, model, spd: int
                ) -> tuple[torch.Tensor, _Track, tuple[float, float], _Track | None]:
    """(truth at the observation times, truth track Day 0..F, first guess, daily best
    track or None) from ERA5, the truth track found by tracking ERA5 itself."""
    from tfda.models import check_grid

    track_times = [cfg.day0_time + k * model.dt for k in range(cfg.forecast_days * spd + 1)]
    truth, coords = _load_era5(cfg, cfg.obs_times(), list(model.variables))
    try:
        check_grid(model, torch.tensor(np.array(coords["lat"])),
                   torch.tensor(np.array(coords["lon"])))
    except ValueError as exc:
        raise ValueError(f"--era5 {cfg.era5} does not match the model grid: {exc}") from exc
    fields, _ = _load_era5(cfg, track_times, TRACK_VARIABLES)
    _check_finite(cfg, truth, cfg.obs_times(), list(model.variables))
    _check_finite(cfg, fields, track_times, TRACK_VARIABLES)
    best_all = _best_track(cfg, track_times)
    first_guess = cfg.first_guess
    if best_all is not None and np.isfinite(best_all[0][0]):
        first_guess = (float(best_all[0][0]), float(best_all[1][0]))
    tracker = StormTracker(model.lat, model.lon, first_guess, 1,
                           hours_per_step=model.dt / timedelta(hours=1),
                           config=_tracker_config(cfg))
    for k in range(fields.shape[0]):
        tracker.update(*(fields[k:k + 1, i] for i in range(3)))
    track = tracker.result()
    t_lat, t_lon = track.lat[0], track.lon[0]
    if not np.isfinite(t_lat[0]):
        raise ValueError(f"no storm found in ERA5 within {cfg.max_displacement_km} km of "
                         f"the first guess {first_guess} at Day 0")
    best = None if best_all is None else (best_all[0][::spd], best_all[1][::spd])
    return truth, (t_lat, t_lon), (float(t_lat[0]), float(t_lon[0])), best


def _observations(cfg: LeeConfig, model, truth: torch.Tensor) -> Observations:
    """The truth plus correlated error draws, and the R the filter is told."""
    from tfda.observations.synthetic import default_error, make_observations

    variables = list(model.variables)
    obs_times = cfg.obs_times()
    error = default_error(variables, model.lat, model.lon,
                          length_scale_km=cfg.error_length_scale_km,
                          std={v: s * cfg.error_scale for v, s in _default_std(variables).items()})
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
    return Observations(y=syn.y, truth=truth.cpu(), error=error, filter_error=filter_error,
                        times=obs_times, synthetic=syn)


def prepare_inputs(cfg: LeeConfig) -> LeeInputs:
    """Model, truth, observations and reference tracks; every input is checked here,
    before anything is written, and ERA5 before the network is built (lee_io.model_spec)."""
    model = model_spec(cfg)
    spd = _steps(model, timedelta(days=1), "day")
    missing_track = [v for v in TRACK_VARIABLES if v not in model.variables]
    if missing_track:
        raise ValueError(f"model {cfg.model!r} lacks {missing_track}, which the tracker needs")
    if cfg.mode == "analogue":
        truth, track, first_guess, best = _analogue_truth(cfg, model, spd)
    else:
        truth, track, first_guess, best = _era5_truth(cfg, model, spd)
        model = _load_model(cfg)
    return LeeInputs(model, _observations(cfg, model, truth), track, first_guess, best)


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
    km_per_deg = math.pi * EARTH_RADIUS_KM / 180.0
    dy = km_per_deg * float((lat[1:] - lat[:-1]).abs().mean())
    dx = km_per_deg * float((lon[1:] - lon[:-1]).abs().mean()) * math.cos(
        math.radians(float(lat.mean())))
    return math.sqrt(max(2.0 * math.pi * length_km**2 / (dx * dy), 1.0))


def _default_std(variables) -> dict[str, float]:
    from tfda.observations.synthetic import DEFAULT_ERROR_STD

    unknown = [v for v in variables if v not in DEFAULT_ERROR_STD]
    if unknown:
        raise ValueError(f"no default observation-error std for {unknown}")
    return {v: DEFAULT_ERROR_STD[v] for v in variables}


def distributed_group(cfg: LeeConfig):
    """(slice group, rank) for Parareal across ranks; (None, 0) otherwise."""
    if cfg.parareal_slices <= 0 or cfg.parareal_mode != "distributed":
        return None, 0
    from tfda.da import distributed

    ctx = distributed.init()
    grid = distributed.make_grid(shard_size=1, n_slices=cfg.parareal_slices)
    return grid.slice_group, ctx.rank


def run(cfg: LeeConfig, out: str | os.PathLike) -> dict[str, Any]:
    """Run the study into ``out``; returns the metrics (also in out/metrics.json).

    ``wall_seconds`` sums every attempt of a resumed run (up to its last checkpoint)."""
    out = rundir.check_out_dir(out)
    device = _device(cfg)
    inputs = prepare_inputs(cfg)  # validates before writing
    group, rank = distributed_group(cfg)
    writer = rank == 0
    if writer:
        begin_run(out, cfg)
    ckpt = out / "checkpoints" / f"cycle-{cfg.fingerprint()}.pt"
    if writer and ckpt.is_file():
        print(f"resuming from {ckpt} (an earlier attempt's last analysis)", flush=True)
    clock = rundir.WallClock(out / "checkpoints" / f"wall-{cfg.fingerprint()}.json")
    model = inputs.model.to(device)
    obs = inputs.observations
    cyc = _cycle(cfg, model, obs, out / "checkpoints", device, group, checkpoint=writer,
                 on_save=clock.checkpoint)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 2)
    y0 = obs.y[-1].to(device)
    baseline = y0[None] + obs.error.sample((cfg.members, *y0.shape), generator=gen,
                                           dtype=y0.dtype).to(device)
    spd = _steps(model, timedelta(days=1), "day")
    both = torch.cat([baseline, cyc["ensemble"]])
    tracks = _forecast_tracks(cfg, model, both, inputs.first_guess, cfg.forecast_days * spd)
    m = cfg.members
    days = list(range(1, cfg.forecast_days + 1))
    daily = slice(0, None, spd)
    ens_tracks = {"baseline": (tracks.lat[:m, daily], tracks.lon[:m, daily]),
                  "ensf": (tracks.lat[m:, daily], tracks.lon[m:, daily])}
    truth_daily = (inputs.truth_track[0][daily], inputs.truth_track[1][daily])
    best = inputs.best_daily
    lead = lead_day_metrics({k: (a[:, 1:], o[:, 1:]) for k, (a, o) in ens_tracks.items()},
                            (truth_daily[0][1:], truth_daily[1][1:]), days, cfg.quantile,
                            None if best is None else (best[0][1:], best[1][1:]))
    metrics = {"lead_days": lead, "cycle": cyc["log"], "quantile": cfg.quantile,
               "mode": cfg.mode, "members": m,
               "truth_day0": [float(truth_daily[0][0]), float(truth_daily[1][0])],
               "truth_day0_vs_best_track_km": math.nan if best is None else float(
                   great_circle_km(truth_daily[0][0], truth_daily[1][0], best[0][0],
                                   best[1][0])),
               "wall_seconds": clock.total()}
    if writer:
        write_outputs(out, cfg, obs, baseline, cyc["ensemble"], tracks, inputs, spd, metrics)
        plot_run(out)  # from the files just written: `tfda plot-tracks` draws the same
        metrics["wall_seconds"] = clock.total()
        finish_run(out, metrics)
    return metrics


def format_table(metrics: dict[str, Any]) -> str:
    """The per-lead-day table ``tfda lee`` prints: ensemble-mean track error (km), ellipse
    area (10^3 km^2), truth inside the ellipse, spread (km) for baseline (B) and EnSF (E),
    and the truth's distance from the best track (km; "-" where it has no fix)."""
    q = f"{100 * metrics['quantile']:g}%"
    head = ("day", "error B", "error E", f"{q} area B", f"{q} area E", "inside B", "inside E",
            "spread B", "spread E", "truth-best")
    widths = [max(len(h), 6) for h in head]
    units = ["", "km", "km", "10^3 km2", "10^3 km2", "", "", "km", "km", "km"]
    rows = [units, ["0", *[""] * 8, _km(metrics.get("truth_day0_vs_best_track_km"))]]
    for r in metrics["lead_days"]:
        rows.append([str(r["day"]), _km(r["baseline_mean_error_km"]),
                     _km(r["ensf_mean_error_km"]), _km(r["baseline_ellipse_area_km2"], 1e-3),
                     _km(r["ensf_ellipse_area_km2"], 1e-3),
                     "yes" if r["truth_in_baseline_ellipse"] else "no",
                     "yes" if r["truth_in_ensf_ellipse"] else "no",
                     _km(r["baseline_spread_km"]), _km(r["ensf_spread_km"]),
                     _km(r.get("truth_vs_best_track_km"))])
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True))
                     for row in [list(head), *rows])


def _km(value: float | None, scale: float = 1.0) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value * scale:.0f}"


_HELP = {
    "members": f"ensemble size (default {LeeConfig.members})",
    "ensf-steps": f"EnSF sampler steps per analysis (default {LeeConfig.ensf_steps})",
    "forecast-days": f"length of the track forecasts in days (default {LeeConfig.forecast_days})",
    "seed": f"random seed of observations, ensembles and sampler (default {LeeConfig.seed})",
    "parareal-slices": "> 0: the EnSF ODE sampler runs as Parareal with this many slices",
}


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="tfda lee", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--analogue", action="store_true", help="barotropic analogue (default)")
    src.add_argument("--era5", metavar="PATH", help="ERA5 from `tfda era5` (file or directory)")
    p.add_argument("--weights", metavar="DIR",
                   help="FourCastNet weights: backbone.ckpt, global_means.npy, global_stds.npy")
    p.add_argument("--model", help="registered model name (default: barotropic/fourcastnet)")
    p.add_argument("--config", metavar="TOML",
                   help="LeeConfig overrides ([lee] table or top level)")
    p.add_argument("--out", metavar="DIR",
                   help="run directory (default runs/lee_<mode> in the current directory)")
    for name, typ in (("members", int), ("ensf-steps", int), ("forecast-days", int),
                      ("seed", int), ("parareal-slices", int)):
        p.add_argument(f"--{name}", type=typ, help=_HELP[name])
    p.add_argument("--parareal-mode", choices=("batched", "distributed", "serial"),
                   help="Parareal on one device (batched) or across ranks (distributed)")
    p.add_argument("--device", help="auto (default: cuda if available), cpu, cuda, cuda:1 ...")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (does not change the results or the resume state)")
    return p


def config_from_args(argv: list[str] | None) -> tuple[LeeConfig, Path]:
    args = _parser().parse_args(argv)
    values: dict[str, Any] = {}
    if args.config:
        data = load_toml(args.config, "--config")
        values.update(data["lee"] if set(data) == {"lee"} else data)
    if args.era5:
        values.update(mode="era5", era5=args.era5)
        values.setdefault("model", "fourcastnet")
    if args.weights:
        values["weights"] = args.weights
    for key in ("model", "members", "ensf_steps", "forecast_days", "seed", "parareal_slices",
                "parareal_mode", "device"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if args.no_progress:
        values["progress"] = False
    try:
        cfg = LeeConfig.from_dict(values)
    except UserError as exc:
        where = f"--config {args.config}: " if args.config else ""
        raise UserError(f"{where}{exc}") from exc
    out = Path(args.out) if args.out else Path("runs") / f"lee_{cfg.mode}"  # under the cwd
    _device(cfg)  # a device that is not there fails now, not after the analogue's truth run
    return cfg, rundir.check_out_dir(out)


@command("tfda lee")
def main(argv: list[str] | None = None) -> int:
    cfg, out = config_from_args(argv)
    if cfg.mode == "analogue" and _device(cfg).type == "cpu" and cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    print(f"tfda lee: {cfg.mode} ({cfg.model}), {cfg.members} members, Day 0 = {cfg.day0}, "
          f"EnSF on days {list(cfg.obs_days)}, {cfg.forecast_days}-day track forecasts "
          f"on {_device(cfg)} -> {out}", flush=True)
    metrics = run(cfg, out)
    print(format_table(metrics))
    print(f"run directory: {out}  ({metrics['wall_seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
