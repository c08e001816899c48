"""``tfda lee``: the Hurricane Lee study of Rafid et al. (SC'24 workshops, Sec. V, Fig. 4).

The Day -3 ensemble (observations plus error draws) is cycled forecast -> EnSF
analysis to Day 0, checkpointed after every analysis; the baseline is the Day 0
observations plus error draws. Both are forecast as one batch, tracked on the fly,
and compared with the tracked truth per lead day (docs/lee.md).
"""

from __future__ import annotations

import math
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from tfda.diagnostics.track_metrics import lead_day_metrics
from tfda.diagnostics.tracking import StormTracker
from tfda.experiments import rundir
from tfda.experiments.cycle import model_coords
from tfda.experiments.factories import analysis_group, make_filter
from tfda.experiments.lee.config import TRACK_VARIABLES, LeeConfig
from tfda.experiments.lee.inputs import prepare_inputs, steps_in
from tfda.experiments.lee.io import COMMAND, begin_run, finish_run, write_outputs
from tfda.experiments.plot_tracks import plot_run
from tfda.geo import great_circle_km


def make_ensf(cfg: LeeConfig, model: Any, group: Any = None, shards: Any = None):
    """The EnSF the ``ensf_*`` keys describe; the kernel EnSF localised on the model grid
    (one local analysis per grid column within ``ensf_radius_km``), sharded over
    ``shards`` (a process group) when the study runs on several processes."""
    from tfda.da.filters import grid_distance
    from tfda.da.filters.local import grid_sites

    fixed: dict[str, Any] = {}
    options = cfg.ensf_options()
    if cfg.parareal_slices > 0:  # the Parareal configuration is the (ODE) sampler
        options.pop("sampler")
        from tfda.da.parareal import ParallelConfig

        fixed["sampler"] = ParallelConfig(n_slices=cfg.parareal_slices,
                                          mode=cfg.parareal_mode, slice_group=group)
    if cfg.ensf_score == "kernel" and cfg.ensf_radius_km is not None:
        fixed.update(radius=cfg.ensf_radius_km, distance=grid_distance(model.lat, model.lon))
        # one local analysis per grid column: H = I puts the observations on the columns,
        # stations lie between them
        fixed["sites"] = grid_sites(model.lat, model.lon, len(model.variables),
                                    on_grid=not cfg.observes_stations)
    if shards is not None:  # several processes: each analyses a slab of columns
        if "sites" not in fixed:
            raise ValueError("several processes shard the localised kernel EnSF: set "
                             "ensf_score = 'kernel' and ensf_radius_km")
        fixed["group"] = shards
    return make_filter("ensf", options, where="ensf options", fixed=fixed)


def cycle_to_day0(cfg: LeeConfig, model, obs, ckpt_dir: Path, device, group=None, *,
                  checkpoint: bool = True, on_save=None,
                  shards: Any = None) -> dict[str, Any]:
    """Day -3 ensemble from the observations, then forecast/EnSF-analysis cycles to Day 0
    through :func:`da.cycle.run_cycle`, checkpointed after every analysis (the file name
    carries a hash of the configuration, so another set-up never resumes from it)."""
    from tfda.da.cycle import run_cycle
    from tfda.experiments.checkpoint import FileCheckpointer

    y = obs.y.to(device)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
    pert = obs.error.sample((cfg.members, *y.shape[1:]), generator=gen, dtype=y.dtype)
    ens = y[0][None] + pert.to(device)
    # evenly spaced: LeeConfig checked obs_days before any work
    gaps = {obs.times[k] - obs.times[k - 1] for k in range(1, len(obs.times))}
    if not gaps:  # Day 0 only: the "cycle" is the analysis of the initial ensemble
        return {"ensemble": ens, "log": []}
    n = steps_in(model, gaps.pop(), "obs_days")
    fp = cfg.fingerprint()
    assimilated = obs.assimilated.to(device)
    ds = run_cycle(model, make_ensf(cfg, model, group, shards), obs.operator, ens,
                   n_cycles=len(obs.times) - 1, observations=lambda k, _truth: assimilated[k],
                   steps_per_cycle=n, seed=cfg.seed + 100,
                   checkpointer=FileCheckpointer(ckpt_dir / f"cycle-{fp}.pt", on_save=on_save,
                                                 read_only=not checkpoint),
                   progress=cfg.progress, coords=model_coords(model, tuple(ens.shape[1:])))
    ens = torch.as_tensor(ds["ensemble"].values).to(device)
    log = [{"time": obs.times[k].isoformat(),
            **{m: float(ds[m].values[k - 1]) for m in ("spread_f", "spread_a", "obs_rmse_f",
                                                         "obs_rmse_a")}}
           for k in range(1, len(obs.times))]
    truth0 = obs.truth[-1].to(device)
    log[-1]["analysis_rmse_vs_truth"] = float((ens.mean(0) - truth0).square().mean().sqrt())
    log[-1]["obs_rmse_vs_truth"] = float((y[-1] - truth0).square().mean().sqrt())
    return {"ensemble": ens, "log": log}


def forecast_tracks(cfg: LeeConfig, model, ens: torch.Tensor, first_guess, steps: int):
    """Forecast all members ``steps`` steps as one batch, tracking at every step."""
    from tqdm import tqdm

    names = list(model.variables)
    idx = [names.index(v) for v in TRACK_VARIABLES]
    tracker = StormTracker(model.lat, model.lon, first_guess, ens.shape[0],
                           hours_per_step=model.dt / timedelta(hours=1),
                           config=cfg.tracker_config())
    x = ens
    tracker.update(*(x[:, i] for i in idx))
    with torch.no_grad():
        for _ in tqdm(range(steps), desc="forecast", disable=not cfg.progress, leave=False):
            x = model.step(x)
            tracker.update(*(x[:, i] for i in idx))
    return tracker.result()


def distributed_group(cfg: LeeConfig):
    """(slice group, rank) for Parareal across ranks; (None, 0) otherwise."""
    if cfg.parareal_slices <= 0 or cfg.parareal_mode != "distributed":
        return None, analysis_group()[1]
    from tfda.da import distributed

    ctx = distributed.init()
    grid = distributed.make_grid(shard_size=1, n_slices=cfg.parareal_slices)
    return grid.slice_group, ctx.rank


def run(cfg: LeeConfig, out: str | os.PathLike, *, force: bool = False) -> dict[str, Any]:
    """Run the study into ``out``; returns the metrics (also in out/metrics.json).

    Everything is written into ``out``'s staging directory (experiments.rundir) and
    moved into ``out`` when complete: a failed or killed run leaves ``out`` as it was,
    and the same command resumes from the staged checkpoints. ``wall_seconds`` sums
    every attempt of a resumed run (up to its last checkpoint). Under Parareal across
    ranks only rank 0 writes."""
    out = rundir.check_out_dir(out, command=COMMAND, force=force)
    device = cfg.torch_device()
    inputs = prepare_inputs(cfg)  # validates before writing
    group, rank = distributed_group(cfg)
    writer = rank == 0
    staging = begin_run(out, cfg, force=force) if writer else rundir.staging_dir(out)
    ckpt = staging / "checkpoints" / f"cycle-{cfg.fingerprint()}.pt"
    if writer and ckpt.is_file():
        print(f"resuming from {ckpt} (an earlier attempt's last analysis)", flush=True)
    clock = rundir.WallClock(staging / "checkpoints" / f"wall-{cfg.fingerprint()}.json")
    model = inputs.model.to(device)
    obs = inputs.observations
    sharded = analysis_group()[0] if group is None else None
    if torch.distributed.is_initialized():  # the writer's staging directory first
        torch.distributed.barrier()
    cyc = cycle_to_day0(cfg, model, obs, staging / "checkpoints", device, group,
                        checkpoint=writer, on_save=clock.checkpoint, shards=sharded)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 2)
    y0 = obs.y[-1].to(device)
    baseline = y0[None] + obs.error.sample((cfg.members, *y0.shape), generator=gen,
                                           dtype=y0.dtype).to(device)
    spd = steps_in(model, timedelta(days=1), "day")
    both = torch.cat([baseline, cyc["ensemble"]])
    tracks = forecast_tracks(cfg, model, both, inputs.first_guess, cfg.forecast_days * spd)
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
        write_outputs(staging, cfg, obs, baseline, cyc["ensemble"], tracks, inputs, spd,
                      metrics)
        plot_run(staging)  # from the files just written: `tfda plot-tracks` draws the same
        metrics["wall_seconds"] = clock.total()
        finish_run(staging, metrics)
    return metrics
