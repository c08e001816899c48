"""FourCastNet v1 (Pathak et al. 2022) as a tfda forecast model.

``load_fourcastnet(weights=DIR)`` reads ``DIR/backbone.ckpt``,
``DIR/global_means.npy`` and ``DIR/global_stds.npy`` (the official release
layout) and returns a :class:`models.base.NormalisedModule` on the 0.25 degree
ERA5 grid: 721 latitudes 90..-90, 1440 longitudes 0..359.75 east, the 20
channels of docs/design.md section 3, a 6-hour step. The network sees the first 720
rows (the -90 row is cropped, as in training); on output that row is re-padded
by ``pad`` ("persist": keeps its input value, the default; "nearest": copies
the -89.75 row).
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import torch

from tfda.models.base import NormalisedModule
from tfda.models.fourcastnet.afno import AFNOConfig, AFNONet
from tfda.models.fourcastnet.checkpoint import (
    build_network,
    load_normalisation,
    load_state_dict,
    load_weights,
    save_checkpoint,
)

__all__ = [
    "FOURCASTNET_VARIABLES",
    "AFNOConfig",
    "AFNONet",
    "build_network",
    "load_fourcastnet",
    "load_normalisation",
    "load_state_dict",
    "load_weights",
    "save_checkpoint",
    "fourcastnet_grid",
]

#: FourCastNet v1 channel order, earth2studio spelling (docs/design.md section 3).
FOURCASTNET_VARIABLES: tuple[str, ...] = (
    "u10m", "v10m", "t2m", "sp", "msl", "t850", "u1000", "v1000", "z1000", "u850",
    "v850", "z850", "u500", "v500", "z500", "t500", "z50", "r500", "r850", "tcwv",
)


def fourcastnet_grid(n_lat: int = 721, n_lon: int = 1440) -> tuple[torch.Tensor, torch.Tensor]:
    """Equiangular grid: latitude 90..-90 (``n_lat`` rows), longitude 0..360 east."""
    lat = torch.linspace(90.0, -90.0, n_lat, dtype=torch.float64)
    lon = torch.arange(n_lon, dtype=torch.float64) * (360.0 / n_lon)
    return lat, lon


def load_fourcastnet(
    weights: str | os.PathLike[str] | None = None,
    *,
    means: str | os.PathLike[str] | None = None,
    stds: str | os.PathLike[str] | None = None,
    config: AFNOConfig | None = None,
    device: torch.device | str = "cpu",
    autocast: bool = False,
    pad: str = "persist",
    micro_batch: int | None = None,
) -> NormalisedModule:
    """FourCastNet v1 as a ForecastModel.

    ``weights``: a directory holding ``backbone.ckpt`` (and, unless ``means``/``stds``
    are given, ``global_means.npy``/``global_stds.npy``), or the checkpoint file
    itself (then the .npy files are looked up next to it). ``None`` builds a
    randomly initialised network with mean 0 / std 1 -- for benchmarks only.
    ``config``: network size (default: the published one); the grid is
    ``config.img_size`` plus one re-padded row. ``autocast``: bfloat16 on CUDA.
    ``micro_batch``: run the network on at most this many members at a time
    (bounds the activation memory; None = all members in one pass).
    """
    cfg = config or AFNOConfig()
    if cfg.in_chans != cfg.out_chans:
        raise ValueError("a forecast model needs in_chans == out_chans")
    n = cfg.in_chans
    if n == len(FOURCASTNET_VARIABLES):
        variables = FOURCASTNET_VARIABLES
    else:
        variables = tuple(f"channel{i}" for i in range(n))
    net = AFNONet(cfg, micro_batch=micro_batch)
    if weights is None:
        mean, std = torch.zeros(n), torch.ones(n)
    else:
        w = Path(weights)
        ckpt = w / "backbone.ckpt" if w.is_dir() else w
        folder = w if w.is_dir() else w.parent
        load_weights(net, ckpt)
        mean, std = load_normalisation(means or folder / "global_means.npy",
                                       stds or folder / "global_stds.npy", n_channels=n)
    lat, lon = fourcastnet_grid(cfg.img_size[0] + 1, cfg.img_size[1])
    model = NormalisedModule(
        net, mean, std, variables=variables, lat=lat, lon=lon,
        dt=_dt.timedelta(hours=6), core_rows=cfg.img_size[0], pad=pad, autocast=autocast,
    )
    return model.to(device)
