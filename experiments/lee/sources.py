"""What the Lee study reads: the forecast model and its weights, ERA5 fields (a file
from ``tfda era5 prepare`` or a directory of CDS downloads) and the ATCF best track.
Every reader checks its input and names the option or file in its error."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tfda.experiments._errors import UserError

if TYPE_CHECKING:
    from tfda.experiments.lee.config import LeeConfig


def model_spec(cfg: LeeConfig):
    """What the ERA5 checks need of the model (variables, grid, step) without building
    it: for FourCastNet from its configuration, so bad data fail before any network is
    built and any weights are read; other models are built as usual."""
    if cfg.mode != "era5" or cfg.model != "fourcastnet":
        return load_model(cfg)
    load_model(cfg, build=False)  # the weights files: present, and torch.save files
    from types import SimpleNamespace

    from tfda.models.fourcastnet import FOURCASTNET_VARIABLES, fourcastnet_grid

    afno = afno_config(cfg)
    if afno.in_chans != len(FOURCASTNET_VARIABLES):
        return load_model(cfg)
    lat, lon = fourcastnet_grid(afno.img_size[0] + 1, afno.img_size[1])
    return SimpleNamespace(variables=FOURCASTNET_VARIABLES, lat=lat, lon=lon,
                           dt=timedelta(hours=6))


def afno_config(cfg: LeeConfig):
    from tfda.models.fourcastnet import AFNOConfig

    afno = dict(cfg.afno)
    if "img_size" in afno:
        afno["img_size"] = tuple(afno["img_size"])
    return AFNOConfig(**afno)


def load_model(cfg: LeeConfig, *, build: bool = True):
    from tfda import models
    if not models.base.is_registered(cfg.model):
        known = ", ".join(models.available())
        raise ValueError(f"unknown model {cfg.model!r}; registered: {known}")
    if cfg.mode == "analogue":
        if cfg.model != "barotropic":
            raise ValueError(f"--analogue needs the 'barotropic' model (a vortex initial "
                             f"state), got {cfg.model!r}")
        from tfda.models.barotropic import BarotropicConfig

        return models.load("barotropic", config=BarotropicConfig(**cfg.analogue_model))
    if cfg.model != "fourcastnet":  # any other registered model, e.g. earth2studio:SFNO
        if not build:
            return None
        try:
            return models.load(cfg.model, **cfg.model_options)
        except (ValueError, TypeError, KeyError) as exc:
            raise UserError(f"--model {cfg.model}: {exc}") from exc
    if not cfg.weights:
        raise FileNotFoundError("--weights DIR is required with --era5 (FourCastNet weights: "
                                "backbone.ckpt, global_means.npy, global_stds.npy)")
    wdir = Path(cfg.weights)
    need = [wdir / n for n in ("backbone.ckpt", "global_means.npy", "global_stds.npy")]
    missing = [str(p) for p in need if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"--weights {wdir}: missing {', '.join(missing)}")
    check_checkpoint_file(need[0])
    if not build:
        return None
    kwargs: dict[str, Any] = {"weights": wdir}
    if cfg.afno:
        kwargs["config"] = afno_config(cfg)
    try:
        return models.load(cfg.model, **kwargs)
    except ValueError as exc:
        raise UserError(f"--weights {wdir}: {exc}") from exc


def check_checkpoint_file(path: Path) -> None:
    """torch.save writes a zip archive (or, before torch 1.6, a pickle): anything else is
    not a FourCastNet checkpoint, whatever torch.load's own message would suggest."""
    with path.open("rb") as fh:
        head = fh.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise UserError(f"--weights {path}: not a FourCastNet checkpoint (not a file written "
                        "by torch.save)")


def check_finite(cfg: LeeConfig, data: torch.Tensor, times: list[datetime],
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


def load_prepared(path: Path, times: list[datetime], channels) -> tuple[torch.Tensor, dict]:
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


def load_era5(cfg: LeeConfig, times: list[datetime], channels) -> tuple[torch.Tensor, dict]:
    """(time, channel, lat, lon) at ``times`` from a prepared file or a CDS directory."""
    from tfda.observations import era5

    path = Path(cfg.era5 or "")
    if not path.exists():
        raise FileNotFoundError(f"--era5 {path}: not found (prepare it with `tfda era5`)")
    if not (path.is_file() or path.is_dir()):  # /dev/zero, a FIFO
        raise ValueError(f"--era5 {path}: not a regular file (nor a directory of ERA5 files)")
    try:
        if path.is_file():
            return load_prepared(path, times, channels)
        return era5.load_era5(path, times, channels=tuple(channels))
    except ValueError as exc:
        raise UserError(f"--era5 {path}: {exc}") from exc
    except OSError as exc:  # netCDF4's "Unknown file format" and the like
        raise UserError(f"--era5 {path}: not a readable netCDF file ({exc})") from exc


def best_track(cfg: LeeConfig, times: list[datetime]):
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
        if path.exists():
            raise ValueError(f"best_track: {path}: not a regular file")
        raise FileNotFoundError(f"best_track: {path} not found")
    return read_atcf(path)
