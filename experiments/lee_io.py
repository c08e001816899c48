"""Input and output of the Hurricane Lee study (experiments.hurricane_lee).

Reading: the forecast model and its weights, ERA5 fields (a prepared file or a
directory of CDS downloads) and the ATCF best track. Writing: the run directory
(config.json, analyses.nc, tracks.nc, metrics.json and, last, COMPLETE), every
file atomically so an interrupted run never leaves a truncated one.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tfda.experiments import rundir
from tfda.experiments._errors import UserError

if TYPE_CHECKING:
    from tfda.experiments.hurricane_lee import LeeConfig, LeeInputs, Observations


def model_spec(cfg: LeeConfig):
    """What the ERA5 checks need of the model (variables, grid, step) without building
    it: for FourCastNet from its configuration, so bad data fail before any network is
    built and any weights are read; other models are built as usual."""
    if cfg.mode != "era5" or cfg.model != "fourcastnet":
        return _load_model(cfg)
    _load_model(cfg, build=False)  # the weights files: present, and torch.save files
    from types import SimpleNamespace

    from tfda.models.fourcastnet import FOURCASTNET_VARIABLES, fourcastnet_grid

    afno = _afno_config(cfg)
    if afno.in_chans != len(FOURCASTNET_VARIABLES):
        return _load_model(cfg)
    lat, lon = fourcastnet_grid(afno.img_size[0] + 1, afno.img_size[1])
    return SimpleNamespace(variables=FOURCASTNET_VARIABLES, lat=lat, lon=lon,
                           dt=timedelta(hours=6))


def _afno_config(cfg: LeeConfig):
    from tfda.models.fourcastnet import AFNOConfig

    afno = dict(cfg.afno)
    if "img_size" in afno:
        afno["img_size"] = tuple(afno["img_size"])
    return AFNOConfig(**afno)


def _load_model(cfg: LeeConfig, *, build: bool = True):
    from tfda import models
    if cfg.model not in models.available():
        known = ", ".join(models.available())
        raise ValueError(f"unknown model {cfg.model!r}; registered: {known}")
    if cfg.mode == "analogue":
        if cfg.model != "barotropic":
            raise ValueError(f"--analogue needs the 'barotropic' model (a vortex initial "
                             f"state), got {cfg.model!r}")
        from tfda.models.barotropic import BarotropicConfig

        return models.load("barotropic", config=BarotropicConfig(**cfg.analogue_model))
    if not cfg.weights:
        raise FileNotFoundError("--weights DIR is required with --era5 (FourCastNet weights: "
                                "backbone.ckpt, global_means.npy, global_stds.npy)")
    wdir = Path(cfg.weights)
    need = [wdir / n for n in ("backbone.ckpt", "global_means.npy", "global_stds.npy")]
    missing = [str(p) for p in need if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"--weights {wdir}: missing {', '.join(missing)}")
    _check_checkpoint_file(need[0])
    if not build:
        return None
    kwargs: dict[str, Any] = {"weights": wdir}
    if cfg.afno:
        kwargs["config"] = _afno_config(cfg)
    try:
        return models.load(cfg.model, **kwargs)
    except ValueError as exc:
        raise UserError(f"--weights {wdir}: {exc}") from exc


def _check_checkpoint_file(path: Path) -> None:
    """torch.save writes a zip archive (or, before torch 1.6, a pickle): anything else is
    not a FourCastNet checkpoint, whatever torch.load's own message would suggest."""
    with path.open("rb") as fh:
        head = fh.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise UserError(f"--weights {path}: not a FourCastNet checkpoint (not a file written "
                        "by torch.save)")


def _check_finite(cfg: LeeConfig, data: torch.Tensor, times: list[datetime],
                  channels) -> None:
    """Every value the run will read is finite; names the variable and the times."""
    bad = ~torch.isfinite(data)
    if not bool(bad.any()):
        return
    per = bad.flatten(2).any(-1)  # (time, channel)
    c = int(per.any(0).nonzero()[0])
    when = [times[k].isoformat(timespec="minutes") for k in per[:, c].nonzero()[:, 0].tolist()]
    raise UserError(f"--era5 {cfg.era5}: {list(channels)[c]} has NaN/Inf values at "
                    f"{', '.join(when[:4])}{' ...' if len(when) > 4 else ''} "
                    "(times the run reads)")


def _load_prepared(path: Path, times: list[datetime], channels) -> tuple[torch.Tensor, dict]:
    """``times`` x ``channels`` from a file written by ``tfda era5 prepare``."""
    from tfda.observations import era5

    data, coords = era5.load_prepared(path)
    have = np.asarray(coords["time"], dtype="datetime64[ns]")
    want = np.array([np.datetime64(t, "ns") for t in times])
    absent = [str(t)[:16] for t in want if t not in have]
    if absent:
        raise ValueError(f"no data at times {absent} (file covers "
                         f"{str(have.min())[:16]} .. {str(have.max())[:16]})")
    names = list(coords["channel"])
    lacking = [c for c in channels if c not in names]
    if lacking:
        raise ValueError(f"lacks channels {lacking}")
    rows = [int(np.flatnonzero(have == t)[0]) for t in want]
    data = data[rows][:, [names.index(c) for c in channels]]
    return data, coords


def _load_era5(cfg: LeeConfig, times: list[datetime], channels) -> tuple[torch.Tensor, dict]:
    """(time, channel, lat, lon) at ``times`` from a prepared file or a CDS directory."""
    from tfda.observations import era5

    path = Path(cfg.era5 or "")
    if not path.exists():
        raise FileNotFoundError(f"--era5 {path}: not found (prepare it with `tfda era5`)")
    try:
        if path.is_file():
            return _load_prepared(path, times, channels)
        return era5.load_era5(path, times, channels=tuple(channels))
    except ValueError as exc:
        raise UserError(f"--era5 {path}: {exc}") from exc
    except OSError as exc:  # netCDF4's "Unknown file format" and the like
        raise UserError(f"--era5 {path}: not a readable netCDF file ({exc})") from exc


def _best_track(cfg: LeeConfig, times: list[datetime]):
    """The best track ("auto": Lee's, shipped with the package; or an ATCF file) as
    (lat, lon 0..360) at ``times``, NaN where it has no fix; None when switched off."""
    bt = best_track_fixes(cfg)
    if bt is None:
        return None
    out = np.full((2, len(times)), np.nan)
    for j, t in enumerate(times):
        try:
            row = bt.at(t)
        except KeyError:
            continue
        out[:, j] = row["lat"], row["lon"] % 360.0
    return out[0], out[1]


def best_track_fixes(cfg: LeeConfig):
    """All fixes of the configured best track (observations.besttrack.BestTrack) or None."""
    from tfda.observations.besttrack import lee2023, read_atcf

    if cfg.best_track in (None, "none"):
        return None
    if cfg.best_track == "auto":
        return lee2023()
    path = Path(cfg.best_track)
    if not path.is_file():
        raise FileNotFoundError(f"best_track: {path} not found")
    return read_atcf(path)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def _write_dataset(ds, path: Path) -> None:
    with rundir.atomic_path(path, suffix=".nc") as tmp:
        ds.to_netcdf(tmp, engine="netcdf4")


OUTPUTS = ("config.json", "observations.nc", "analyses.nc", "tracks.nc", "metrics.json",
           "tracks.png", "tracks.pdf")


def begin_run(out: Path, cfg: LeeConfig) -> None:
    """Un-mark a previous run first, so a half-written directory never looks complete,
    and remove its outputs (and another configuration's checkpoints), so old results
    never sit beside the new config.json; this configuration's checkpoints stay."""
    fp = cfg.fingerprint()
    stale = [p.name for p in (out / "checkpoints").glob("*") if fp not in p.name]
    rundir.begin(out, [*OUTPUTS, *(f"checkpoints/{n}" for n in stale)],
                 config=_json_safe(cfg.to_dict()))


def _analyses_dataset(cfg: LeeConfig, model, obs: Observations, baseline, ensf):
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


def _tracks_dataset(cfg: LeeConfig, tracks, inputs: LeeInputs, spd: int):
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
    _write_dataset(_analyses_dataset(cfg, inputs.model, obs, baseline, ensf),
                   out / "analyses.nc")
    _write_dataset(_tracks_dataset(cfg, tracks, inputs, spd), out / "tracks.nc")
    rundir.write_json(out / "metrics.json", _json_safe(metrics))


def finish_run(out: Path, metrics: dict[str, Any]) -> None:
    """Update metrics (final wall time), drop the checkpoints, write COMPLETE last."""
    import shutil

    rundir.write_json(out / "metrics.json", _json_safe(metrics))
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    rundir.finish(out, {"finished": datetime.now().isoformat(), "files": files})
