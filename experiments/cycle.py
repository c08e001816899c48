"""``tfda cycle CONFIG.toml``: a twin-experiment assimilation cycle for any registered
model and filter, resumable, with a progress bar.

The truth starts on the model's attractor (``spin_up`` for Lorenz-96) or from a
vortex (the barotropic analogue), the ensemble is the truth plus Gaussian
perturbations, observations are H(truth) + eps with a diagonal R, and
:func:`da.cycle.run_cycle` does forecast -> observe -> analyse (EnSF, Bao et al.
arXiv 2309.00983, or the LETKF of Hunt et al. 2007). The run directory gets
config.json, cycle.nc (per-cycle rmse/spread, final ensemble and truth),
summary.json (the printed summary, wall_seconds over all attempts) and, written last,
COMPLETE; a killed run restarted with the same command resumes
after its last analysis. Example configs: experiments/configs/*.toml::

    [model]                 # models.load(name, **options)
    name = "lorenz96"
    options = { nx = 40 }
    [truth]                 # spin_up_steps / seed (Lorenz-96), or lat, lon, vmax, rmax_km
    spin_up_steps = 500
    [ensemble]
    members = 20
    spread = 1.0
    [observations]          # operator "identity" or "every" (every `stride`-th component);
                            # std a number, or "default" (per-variable, barotropic/ERA5);
                            # or operator "points" with file = "stations.csv" (below)
    operator = "every"
    stride = 2
    std = 1.0
    [filter]                # "ensf" or "letkf"; options = the dataclass fields; a
                            # radius localises (ring points for Lorenz-96, km on a grid)
    name = "ensf"
    options = { steps = 100, score = "paired", sampler = "ode" }
    [cycle]
    n_cycles = 50
    steps_per_cycle = 1
    seed = 0
    out = "runs/cycle_l96"

Point observations (``operator = "points"``, ``file`` relative to the config file): a
CSV, Parquet or netCDF table with columns lat, lon, variable (the model's names) and
error (std), the earth2studio observation schema; the state is bilinearly interpolated
to each distinct (lat, lon, variable) (:class:`observations.points.PointObservations`).
Without an ``observation`` column the twin draws y = H(truth) + eps at those points
every cycle; with one, a ``cycle`` column (1 .. n_cycles) says when each value was
observed and those values are assimilated (NaN where a point has no row in a cycle),
the metrics then comparing with the configured truth.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from tfda.experiments import rundir
from tfda.experiments._errors import ArgumentParser, UserError, command
from tfda.experiments.config import build, check_call, load_toml, to_plain
from tfda.experiments.cycle_points import _read_points, point_observations
from tfda.experiments.factories import (
    analysis_group,
    make_filter,
    make_operator,
    model_distance,
    shard_filter_options,
)


@dataclass(frozen=True)
class ModelSection:
    name: str
    options: dict[str, Any] = field(default_factory=dict)  # checked against the factory


@dataclass(frozen=True)
class TruthSection:
    spin_up_steps: int = 500  # models with spin_up (Lorenz-96)
    lat: float = 17.0  # barotropic vortex
    lon: float = 308.0
    vmax: float = 40.0
    rmax_km: float = 150.0

    def __post_init__(self) -> None:
        if self.spin_up_steps < 0:
            raise ValueError(f"spin_up_steps must be >= 0, got {self.spin_up_steps}")
        if not -90 <= self.lat <= 90:
            raise ValueError(f"lat: latitude {self.lat} is not within -90 .. 90")
        for key in ("vmax", "rmax_km"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")


@dataclass(frozen=True)
class EnsembleSection:
    members: int = 20
    spread: float = 1.0

    def __post_init__(self) -> None:
        if self.members < 2:
            raise ValueError(f"members must be >= 2, got {self.members}")
        if not self.spread > 0:  # 0: every member the truth, a meaningless rmse of 0
            raise ValueError(f"spread must be > 0, got {self.spread}")


@dataclass(frozen=True)
class ObservationsSection:
    operator: Literal["identity", "every", "points"] = "identity"
    stride: int = 2
    std: float | Literal["default"] = 1.0
    # "points": a CSV / Parquet / netCDF table, relative to the config file
    file: str | None = None

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.std != "default" and not self.std > 0:
            raise ValueError(f"std must be > 0 or 'default', got {self.std}")
        if (self.operator == "points") != (self.file is not None):
            raise ValueError("file: give it with operator = 'points' (and only then)")


@dataclass(frozen=True)
class FilterSection:
    name: Literal["ensf", "letkf"]
    options: dict[str, Any] = field(default_factory=dict)  # the filter dataclass's fields


@dataclass(frozen=True)
class CycleSection:
    n_cycles: int = 10
    steps_per_cycle: int = 1
    seed: int = 0
    out: str = "runs/cycle"  # cosmetic: not part of the checkpoint fingerprint

    def __post_init__(self) -> None:
        for key in ("n_cycles", "steps_per_cycle"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")


@dataclass(frozen=True)
class CycleConfig:
    """A ``tfda cycle`` TOML file; every table and key is checked (experiments.config)."""

    model: ModelSection
    filter: FilterSection
    truth: TruthSection = field(default_factory=TruthSection)
    ensemble: EnsembleSection = field(default_factory=EnsembleSection)
    observations: ObservationsSection = field(default_factory=ObservationsSection)
    cycle: CycleSection = field(default_factory=CycleSection)


def load_config(path: str | os.PathLike) -> CycleConfig:
    """Read and check a cycle TOML file; UserError names the file and the key."""
    data = load_toml(path, "config")
    try:
        for key in ("model", "filter"):
            if key not in data:
                raise UserError(f"[{key}]: missing table (it needs at least a name)")
        cfg = build(CycleConfig, data)
        from tfda import models
        if not models.base.is_registered(cfg.model.name):
            raise UserError(f"model.name: unknown model {cfg.model.name!r}; registered: "
                            f"{', '.join(models.available())}")
        from tfda.models.base import _resolve

        check_call(_resolve(cfg.model.name), cfg.model.options, "model.options")
        # a radius takes the model's distance (run); checked here with a stand-in
        make_filter(cfg.filter.name, cfg.filter.options, where="filter.options",
                    fixed={"distance": "the model's"} if _localised(cfg.filter) else None)
        check_steps(cfg)
        if cfg.observations.file is not None:  # relative to the config file
            table = Path(path).parent / cfg.observations.file
            cfg = replace(cfg, observations=replace(cfg.observations, file=str(table)))
            _read_points(table)
    except UserError as exc:
        raise UserError(f"config {path}: {exc}") from exc
    return cfg


def check_steps(cfg: CycleConfig) -> None:
    """The step counts the run needs, before any work (experiments.resources)."""
    from tfda.experiments import resources

    cyc, steps = cfg.cycle, cfg.filter.options.get("steps")
    resources.check_steps("truth.spin_up_steps", cfg.truth.spin_up_steps, "model steps")
    resources.check_steps("cycle.n_cycles", cyc.n_cycles * cyc.steps_per_cycle, "model steps")
    if isinstance(steps, int) and cfg.filter.name == "ensf":
        resources.check_steps("filter.options.steps", steps * cyc.n_cycles, "sampler steps")


def check_memory(cfg: CycleConfig, model: Any = None, options: Any = None) -> None:
    """The ensemble's memory against the machine's: from the model options' grid box
    before the model is built (a box too fine to build), from the model after."""
    from tfda.experiments import resources

    size = getattr(model, "nx", None)
    if size is None and all(hasattr(model, a) for a in ("variables", "lat", "lon")):
        size = len(model.variables) * len(model.lat) * len(model.lon)
    if model is None and options is not None and options.get("config") is not None:
        points = resources.box_points(options["config"])
        size = None if points is None else 6 * points  # the analogue's 6 variables
        resources.check_memory("model.options.config", resources.ensemble_bytes(
            1, points or 0), f"the grid of {points} points")
    if size is not None:
        members = cfg.ensemble.members
        resources.check_memory("ensemble.members", resources.ensemble_bytes(
            members, int(size)), f"{members} ensemble members of {size} values")


def _truth(model, name: str, spec: TruthSection, generator) -> torch.Tensor:
    if hasattr(model, "spin_up"):
        return model.spin_up(spec.spin_up_steps, generator=generator)[0]
    if name == "barotropic":
        from tfda.models.barotropic import vortex_state

        return vortex_state(model, spec.lat, spec.lon, vmax=spec.vmax,
                            rmax=spec.rmax_km * 1e3)[0]
    raise UserError(f"[truth]: no initial-state builder for model {name!r} "
                    "(supported: models with spin_up, barotropic)")


def _localised(spec: FilterSection) -> bool:
    return spec.options.get("radius") is not None


def _operator(spec: ObservationsSection, state_shape: tuple[int, ...], model):
    from tfda.observations.errors import DiagonalError

    if spec.std == "default":  # per-variable stds of observations.synthetic
        from tfda.observations.synthetic import default_error

        error = default_error(list(model.variables), model.lat, model.lon)
    else:
        error = DiagonalError(float(spec.std))
    return make_operator(spec.operator, error, state_size=math.prod(state_shape),
                         stride=spec.stride)


def model_coords(model: Any, state_shape: tuple[int, ...]) -> dict[str, Any] | None:
    """variable / lat / lon labels of a (variable, lat, lon) state of ``model``; None for
    other shapes (the cycle then numbers the dimensions)."""
    names = ("variable", "lat", "lon")
    values = (list(getattr(model, "variables", ())), getattr(model, "lat", ()),
              getattr(model, "lon", ()))
    if state_shape != tuple(len(v) for v in values):
        return None
    return dict(zip(names, values, strict=True))


def hashed(cfg: CycleConfig) -> dict[str, Any]:
    """The configuration that determines the results: the output path is left out,
    so the same run resumes wherever it is written."""
    plain = to_plain(cfg)
    plain["cycle"].pop("out")
    if cfg.observations.file is not None:  # the table's content, wherever it lies
        data = Path(cfg.observations.file).read_bytes()
        plain["observations"]["file"] = hashlib.sha256(data).hexdigest()
    return plain


COMMAND = "tfda cycle"


def run(cfg: CycleConfig, out: str | os.PathLike, *, progress: bool = True,
        force: bool = False):
    """Run the cycle described by ``cfg`` (see the module docstring) into ``out``,
    through ``out``'s staging directory (experiments.rundir): ``out`` changes only
    when the run is complete; a killed run resumes from the staged checkpoint."""
    from tfda import models
    from tfda.da.cycle import run_cycle
    from tfda.experiments.checkpoint import FileCheckpointer

    fp = rundir.fingerprint(hashed(cfg))
    rundir.check_out_dir(out, command=COMMAND, force=force)
    points = _read_points(cfg.observations.file) if cfg.observations.file else None
    options = check_call(models.base._resolve(cfg.model.name), cfg.model.options,
                         "model.options")
    check_memory(cfg, options=options)
    model = models.load(cfg.model.name, **options)
    check_memory(cfg, model)
    gen = torch.Generator().manual_seed(cfg.cycle.seed)
    truth = _truth(model, cfg.model.name, cfg.truth, gen)
    ensemble = truth[None] + cfg.ensemble.spread * torch.randn(
        (cfg.ensemble.members, *truth.shape), generator=gen, dtype=truth.dtype).to(truth.device)
    observed = None
    if points is None:
        operator = _operator(cfg.observations, tuple(truth.shape), model)
    else:
        operator, observed = point_observations(points, model, cfg.cycle.n_cycles, truth.dtype)
    group, rank = analysis_group()  # several processes: the analysis is sharded
    fixed = {"distance": model_distance(model)} if _localised(cfg.filter) else {}
    fixed.update(shard_filter_options(cfg.filter.name, cfg.filter.options, group,
                                      "filter.options"))
    analysis = make_filter(cfg.filter.name, cfg.filter.options, where="filter.options",
                           fixed=fixed or None)
    resume = rundir.staging_dir(out) / f"checkpoint-{fp}.pt"
    if rank == 0:  # one writer; the other ranks read its checkpoint to resume with it
        # stale results of another configuration go; this one's checkpoint stays to resume
        staging = rundir.begin(out, ["cycle.nc", "summary.json", "checkpoint-*.pt",
                                     "wall-*.json"]
                               if not resume.exists() else ["cycle.nc", "summary.json"],
                               command=COMMAND, config=to_plain(cfg), force=force)
    else:
        staging = rundir.staging_dir(out)
    if group is not None:
        import torch.distributed as dist

        dist.barrier(group)
    clock = rundir.WallClock(staging / f"wall-{fp}.json")
    ckpt = FileCheckpointer(staging / f"checkpoint-{fp}.pt", on_save=clock.checkpoint,
                            read_only=rank != 0)
    ds = run_cycle(model, analysis, operator, ensemble, n_cycles=cfg.cycle.n_cycles,
                   truth=truth, steps_per_cycle=cfg.cycle.steps_per_cycle,
                   observations=None if observed is None else (
                       lambda k, _truth: observed[k - 1].to(truth.device)),
                   seed=cfg.cycle.seed, checkpointer=ckpt, progress=progress,
                   coords=model_coords(model, tuple(truth.shape)))
    summary = {"last_10_cycles": {m: float(ds[m].values[-10:].mean())
                                  for m in ("rmse_a", "spread_a", "rmse_f")},
               "wall_seconds": clock.total()}
    if rank != 0:
        return ds, summary
    with rundir.atomic_path(staging / "cycle.nc", suffix=".nc") as tmp:
        ds.to_netcdf(tmp)
    rundir.write_json(staging / "summary.json", summary)
    ckpt.clear()
    clock.clear()
    rundir.finish(staging, summary)
    return ds, summary


@command("tfda cycle")
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="tfda cycle", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="TOML file (see experiments/configs/)")
    p.add_argument("--out", help="run directory (default: [cycle] out, else runs/cycle)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true",
                   help="write into an --out that is not a `tfda cycle` run directory (files "
                        "of the same names are replaced, others kept)")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    out = rundir.check_out_dir(args.out or cfg.cycle.out,
                               "--out" if args.out else f"config {args.config}: cycle.out",
                               command=COMMAND, force=args.force)
    print(f"tfda cycle: {cfg.model.name} + {cfg.filter.name}, {cfg.ensemble.members} members, "
          f"{cfg.cycle.n_cycles} cycles -> {out}", flush=True)
    _, summary = run(cfg, out, progress=not args.no_progress, force=args.force)
    last = summary["last_10_cycles"]
    print(f"{out}: mean over the last 10 cycles: rmse_a = {last['rmse_a']:.4f}, "
          f"spread_a = {last['spread_a']:.4f}, rmse_f = {last['rmse_f']:.4f} "
          f"(also in {out}/summary.json)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
