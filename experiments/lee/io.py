"""What the Lee study writes: the run directory (config.json, observations.nc,
analyses.nc, tracks.nc, metrics.json and, last, COMPLETE), every file atomically
into the staging directory of experiments.rundir, moved into ``--out`` when complete,
so an interrupted run never leaves a truncated file or touches a finished run."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tfda.experiments import rundir
from tfda.experiments.lee.sources import best_track_fixes

if TYPE_CHECKING:
    from tfda.experiments.lee.config import LeeConfig
    from tfda.experiments.lee.inputs import LeeInputs, Observations


def json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def write_dataset(ds, path: Path) -> None:
    with rundir.atomic_path(path, suffix=".nc") as tmp:
        ds.to_netcdf(tmp, engine="netcdf4")


COMMAND = "tfda lee"
OUTPUTS = ("config.json", "observations.nc", "stations.csv", "analyses.nc", "tracks.nc",
           "metrics.json", "tracks.png", "tracks.pdf")


def begin_run(out: Path, cfg: LeeConfig, *, force: bool = False) -> Path:
    """Open the run's transaction (experiments.rundir): the staging directory beside
    ``out`` that everything is written into, with earlier outputs (and another
    configuration's checkpoints) removed; this configuration's checkpoints stay."""
    fp = cfg.fingerprint()
    staged = rundir.staging_dir(out) / "checkpoints"
    stale = [p.name for p in staged.glob("*") if fp not in p.name]
    return rundir.begin(out, [*OUTPUTS, *(f"checkpoints/{n}" for n in stale)],
                        command=COMMAND, config=json_safe(cfg.to_dict()), force=force)


def analyses_dataset(cfg: LeeConfig, model, obs: Observations, baseline, ensf):
    """The two Day 0 ensembles and the Day 0 truth."""
    import xarray as xr

    dims = ("member", "variable", "lat", "lon")
    coords = {"variable": np.array(model.variables, dtype=object),
              "lat": ("lat", model.lat.cpu().numpy(), {"units": "degrees_north"}),
              "lon": ("lon", model.lon.cpu().numpy(), {"units": "degrees_east"})}
    return xr.Dataset(
        {"baseline": (dims, baseline.cpu().numpy(), {"long_name": "Day 0 observations + "
                                                     "observation-error draws"}),
         "ensf": (dims, ensf.cpu().numpy(), {"long_name": "Day 0 EnSF analysis ensemble"}),
         "truth": (dims[1:], obs.truth[-1].cpu().numpy(), {"long_name": "Day 0 truth"})},
        coords=coords, attrs={"Conventions": "CF-1.8", "day0": cfg.day0, "mode": cfg.mode})


def tracks_dataset(cfg: LeeConfig, tracks, inputs: LeeInputs, spd: int):
    """Member, truth and best tracks, every model step (``*_6h``) and daily."""
    import xarray as xr

    m = cfg.members
    hours = np.arange(tracks.lat.shape[1]) * (inputs.model.dt / timedelta(hours=1))
    days = np.arange(cfg.forecast_days + 1)
    data = {}
    for key, rows in (("baseline", slice(0, m)), ("ensf", slice(m, 2 * m))):
        for var in ("lat", "lon", "msl_min"):
            arr = getattr(tracks, var)[rows]
            data[f"{key}_{var}_6h"] = (("member", "lead_hours"), arr)
            data[f"{key}_{var}"] = (("member", "day"), arr[:, ::spd])
    data["truth_lat"] = ("day", inputs.truth_track[0][::spd])
    data["truth_lon"] = ("day", inputs.truth_track[1][::spd])
    data["truth_lat_6h"] = ("lead_hours", inputs.truth_track[0])
    data["truth_lon_6h"] = ("lead_hours", inputs.truth_track[1])
    if inputs.best_daily is not None:
        data["best_lat"], data["best_lon"] = ("day", inputs.best_daily[0]), ("day",
                                                                            inputs.best_daily[1])
    fixes = best_track_fixes(cfg)
    if fixes is not None:  # every fix, for the figure's best-track line
        day0 = np.datetime64(datetime.fromisoformat(cfg.day0), "m")
        data["best_fix_hours"] = ("fix", (fixes.time - day0).astype(np.float64) / 60.0,
                                  {"units": "h", "long_name": "time of the fix after Day 0"})
        data["best_fix_lat"] = ("fix", fixes.lat)
        data["best_fix_lon"] = ("fix", fixes.lon % 360.0)
    return xr.Dataset(data, coords={"day": days, "lead_hours": hours},
                      attrs={"Conventions": "CF-1.8", "day0": cfg.day0,
                             "note": "NaN where the tracker lost the storm"})


def write_outputs(out: Path, cfg: LeeConfig, obs: Observations, baseline, ensf, tracks,
                  inputs: LeeInputs, spd: int, metrics: dict[str, Any]) -> None:
    obs.synthetic.to_netcdf(out / "observations.nc")
    if cfg.observes_stations:  # what the cycle assimilated, in the point-table schema
        from tfda.experiments.lee.stations import station_table

        table = station_table(obs.operator, obs.assimilated, obs.times)
        with rundir.atomic_path(out / "stations.csv", suffix=".csv") as tmp:
            table.to_csv(tmp, index=False)
    write_dataset(analyses_dataset(cfg, inputs.model, obs, baseline, ensf),
                   out / "analyses.nc")
    write_dataset(tracks_dataset(cfg, tracks, inputs, spd), out / "tracks.nc")
    rundir.write_json(out / "metrics.json", json_safe(metrics))


def finish_run(staging: Path, metrics: dict[str, Any]) -> Path:
    """Update metrics (final wall time), drop the checkpoints, write COMPLETE last and
    move the run into its ``--out`` (returned)."""
    import shutil

    rundir.write_json(staging / "metrics.json", json_safe(metrics))
    shutil.rmtree(staging / "checkpoints", ignore_errors=True)
    files = sorted(p.name for p in staging.iterdir() if not p.name.startswith("."))
    return rundir.finish(staging, {"finished": datetime.now().isoformat(), "files": files})
