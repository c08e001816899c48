"""The Lee study's configuration (``tfda lee --config``): one frozen dataclass, every key
and type checked on load (experiments.config), written to the run directory as config.json."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import torch

from tfda.diagnostics.tracking import TrackerConfig
from tfda.experiments import rundir
from tfda.experiments.config import build, parse_device
from tfda.experiments.fit_lee_steering import VORTEX, analogue_model, load_fitted

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
    # 0: every grid point observed (the paper's set-up). N > 0: the cycle assimilates only
    # N stations drawn uniformly over the box (every variable at each; experiments/lee/
    # stations.py), or the stations listed in stations_file (columns lat, lon). The
    # Day -3 ensemble and the baseline still start from the gridded observations.
    stations: int = 0
    stations_file: str | None = None
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
    # era5 mode, a model other than fourcastnet: models.load(model, **model_options), e.g.
    # model = "earth2studio:SFNO" (the tfda[earth2studio] extra; docs/earth2studio.md)
    model_options: dict[str, Any] = field(default_factory=dict)
    best_track: str | None = "auto"
    device: str = "auto"
    # CPU threads for the analogue: its FFTs are tiny, where extra threads only add
    # contention (measured 30x slower with 2 threads on a loaded 2-core machine)
    threads: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("analogue", "era5"):
            raise ValueError(f"mode must be 'analogue' or 'era5', got {self.mode!r}")
        if self.mode == "analogue" and (self.weights is not None or self.era5 is not None):
            key = "weights" if self.weights is not None else "era5"
            raise ValueError(f"{key}: only used in era5 mode (give --era5 too); the analogue "
                             "runs the barotropic model")
        if self.members < 3:
            raise ValueError(f"members must be >= 3 (an ellipse needs 3), got {self.members}")
        self._check_ensf()
        if self.parareal_slices > 0 and self.ensf_score == "kernel":
            raise ValueError("parareal_slices: Parareal runs the paired/mixture samplers; set "
                             "ensf_score = 'paired' (the kernel EnSF's transport is "
                             "not a long sampler run)")
        if self.stations < 0:
            raise ValueError(f"stations must be >= 0, got {self.stations}")
        if self.observes_stations and self.filter_error == "full":
            raise ValueError("filter_error = 'full' is the gridded observations' R; stations "
                             "are assimilated with a diagonal R (leave filter_error diagonal)")
        if self.stations and self.stations_file is not None:
            raise ValueError("give stations (a number drawn at random) or stations_file, "
                             "not both")
        if self.forecast_days < 1:
            raise ValueError(f"forecast_days must be >= 1, got {self.forecast_days}")
        days = list(self.obs_days)
        if len(days) < 1 or days != sorted(set(days)):
            raise ValueError(f"obs_days must be distinct and increasing, got {days}")
        if days[-1] != 0:
            raise ValueError(f"obs_days must end on Day 0 (the analysis time), got {days}")
        gaps = {b - a for a, b in zip(days, days[1:], strict=False)}
        if len(gaps) > 1:  # the cycle's forecast length is one number
            raise ValueError(f"obs_days must be evenly spaced, got {days}")
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
            day0 = datetime.fromisoformat(self.day0)
        except ValueError:
            raise ValueError(f"day0 must be an ISO date/time such as 2023-09-08T00:00, "
                             f"got {self.day0!r}") from None
        if day0.tzinfo is not None:  # ERA5 and the best tracks are naive UTC times
            raise ValueError(f"day0 must be a UTC time without a zone (2023-09-08T00:00), "
                             f"got {self.day0!r}")
        self._check_ranges()
        self._check_sizes()

    def _check_ranges(self) -> None:
        """Values the types allow but the study cannot use."""
        for key in ("error_scale", "error_length_scale_km", "vortex_vmax", "vortex_rmax_km",
                    "max_displacement_km", "vorticity_threshold"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{key} must be finite and > 0, got {value}")
        for key, lat in (("vortex_lat", self.vortex_lat), ("first_guess", self.first_guess[0])):
            if not (math.isfinite(lat) and -90 <= lat <= 90):
                raise ValueError(f"{key}: latitude {lat} is not within -90 .. 90")
        if not all(map(math.isfinite, (self.vortex_lon, self.first_guess[1]))):
            raise ValueError("vortex_lon and first_guess longitudes must be finite")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")

    def _check_sizes(self) -> None:
        """Steps and memory the run needs, from the sizes given (experiments.resources)."""
        from tfda.experiments import resources

        grid = self.state_size()
        step_hours = (float(self.analogue_model.get("step_hours", 6.0))
                      if self.mode == "analogue" else 6.0)
        spd = 24.0 / step_hours if step_hours > 0 else math.inf
        resources.check_steps("forecast_days", 2 * self.forecast_days * spd, "model steps")
        resources.check_steps("vortex_day", -self.vortex_day * spd, "model steps")
        resources.check_steps("ensf_steps", self.ensf_steps * max(len(self.obs_days) - 1, 1),
                              "sampler steps")
        if self.stations > 0:  # H(x) of every member at every station and variable
            resources.check_memory("stations", resources.ensemble_bytes(
                self.members + 16, 6 * self.stations), f"{self.stations} stations")
        if grid is not None:  # baseline and EnSF ensembles, forecast together
            itemsize = 8 if self.mode == "analogue" else 4  # FourCastNet runs in float32
            resources.check_memory("members", resources.ensemble_bytes(
                2 * self.members, grid, itemsize=itemsize),
                                   f"{2 * self.members} ensemble members of {grid} values")

    def state_size(self) -> int | None:
        """Values in one state (variables x lat x lon), from the configuration alone;
        None where only the built model knows it."""
        if self.mode == "analogue":
            from tfda.experiments.resources import box_points
            from tfda.models.barotropic import VARIABLES

            points = box_points({**ANALOGUE_MODEL, **self.analogue_model})
            return None if points is None else len(VARIABLES) * points
        if self.model == "fourcastnet":
            h, w = self.afno.get("img_size", (720, 1440))
            return int(self.afno.get("in_chans", 20)) * (int(h) + 1) * int(w)
        return None

    def _check_ensf(self) -> None:
        """The EnSF options, checked by EnSF itself, before any work (its errors name them)."""
        from tfda.experiments.factories import make_filter

        if self.ensf_radius_km is not None and not self.ensf_radius_km > 0:
            raise ValueError(f"ensf_radius_km must be > 0 or absent, got {self.ensf_radius_km}")
        make_filter("ensf", self.ensf_options(), where="ensf options")

    def ensf_options(self) -> dict[str, Any]:
        """The EnSF dataclass fields the ``ensf_*`` keys set (Parareal puts the ODE sampler)."""
        return {"score": self.ensf_score, "steps": self.ensf_steps, "eps_a": self.ensf_eps_a,
                "sampler": "ode" if self.parareal_slices > 0 else self.ensf_sampler,
                "inflation": self.ensf_inflation, "standardise": self.ensf_standardise,
                "bandwidth": self.ensf_bandwidth, "progress": self.progress}

    def torch_device(self) -> torch.device:
        return parse_device(self.device, "--device")

    @property
    def observes_stations(self) -> bool:
        return self.stations > 0 or self.stations_file is not None

    def tracker_config(self) -> TrackerConfig:
        return TrackerConfig(vorticity_threshold=self.vorticity_threshold,
                             max_displacement_km=self.max_displacement_km)

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
        return rundir.fingerprint({k: v for k, v in self.to_dict().items()
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
