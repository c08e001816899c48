"""``tfda lee`` on the command line: options -> :class:`LeeConfig`, the run, the table.

Modes: ``--analogue`` (default; CPU, about a minute): the truth is the barotropic
analogue started from a Lee-like vortex in the steering field fitted to Lee's best
track (``python -m tfda.experiments.fit_lee_steering``), and the same analogue is the
forecast model. Real: ``--era5 PATH`` (``tfda era5 prepare``) and ``--weights DIR``
(FourCastNet v1: backbone.ckpt, global_means.npy, global_stds.npy) on a GPU;
``--parareal-slices`` runs the EnSF ODE sampler with Parareal (Rafid et al.
Algorithm 1), across ranks under mpirun/srun/torchrun.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from tfda.experiments import rundir
from tfda.experiments._errors import ArgumentParser, UserError, command
from tfda.experiments.config import load_toml
from tfda.experiments.lee.config import LeeConfig
from tfda.experiments.lee.io import COMMAND
from tfda.experiments.lee.study import run


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
    "stations": "> 0: the cycle assimilates only this many random stations (all variables)",
}


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="tfda lee",
                       description="the Hurricane Lee study of Rafid et al. (analogue by default)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--analogue", action="store_true", help="barotropic analogue (default)")
    src.add_argument("--era5", metavar="PATH", help="ERA5 from `tfda era5` (file or directory)")
    p.add_argument("--weights", metavar="DIR",
                   help="FourCastNet weights: backbone.ckpt, global_means.npy, global_stds.npy")
    p.add_argument("--model", help="registered model name, e.g. earth2studio:SFNO with --era5 "
                   "(default: barotropic / fourcastnet)")
    p.add_argument("--config", metavar="TOML",
                   help="LeeConfig overrides ([lee] table or top level)")
    p.add_argument("--out", metavar="DIR",
                   help="run directory (default runs/lee_<mode> in the current directory)")
    for name, typ in (("members", int), ("ensf-steps", int), ("forecast-days", int),
                      ("seed", int), ("parareal-slices", int), ("stations", int)):
        p.add_argument(f"--{name}", type=typ, help=_HELP[name])
    p.add_argument("--parareal-mode", choices=("batched", "distributed", "serial"),
                   help="Parareal on one device (batched) or across ranks (distributed)")
    p.add_argument("--device", help="auto (default: cuda if available), cpu, cuda, cuda:1 ...")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (does not change the results or the resume state)")
    p.add_argument("--force", action="store_true",
                   help="write into an --out that is not a `tfda lee` run directory (files "
                        "of the same names are replaced, others kept)")
    return p


def config_from_args(argv: list[str] | None) -> tuple[LeeConfig, Path, bool]:
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
                "parareal_mode", "device", "stations"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if args.no_progress:
        values["progress"] = False
    try:
        cfg = LeeConfig.from_dict(values)
    except UserError as exc:
        raise UserError(_name_what_was_written(str(exc), args)) from exc
    out = Path(args.out) if args.out else Path("runs") / f"lee_{cfg.mode}"  # under the cwd
    cfg.torch_device()  # a device that is not there fails now, not after the analogue's truth run
    return cfg, rundir.check_out_dir(out, command=COMMAND, force=args.force), args.force


# keys a flag sets: an error about one of them names the flag the user typed
_FLAGS = {"members": "--members", "ensf_steps": "--ensf-steps", "seed": "--seed",
          "forecast_days": "--forecast-days", "parareal_slices": "--parareal-slices",
          "parareal_mode": "--parareal-mode", "device": "--device", "stations": "--stations",
          "model": "--model", "era5": "--era5", "weights": "--weights"}


def _name_what_was_written(message: str, args) -> str:
    """``message`` (it starts with the key) with the flag when a flag set that key, else
    prefixed by the --config file that did."""
    for key, flag in _FLAGS.items():
        given = getattr(args, key, None) is not None
        if given and (message.startswith(f"{key}:") or message.startswith(f"{key} ")):
            value = getattr(args, key)
            return f"{flag} {value}{message[len(key):]}"
    return f"--config {args.config}: {message}" if args.config else message


@command("tfda lee")
def main(argv: list[str] | None = None) -> int:
    cfg, out, force = config_from_args(argv)
    if cfg.mode == "analogue" and cfg.torch_device().type == "cpu" and cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    print(f"tfda lee: {cfg.mode} ({cfg.model}), {cfg.members} members, Day 0 = {cfg.day0}, "
          f"EnSF on days {list(cfg.obs_days)}, {cfg.forecast_days}-day track forecasts "
          f"on {cfg.torch_device()} -> {out}", flush=True)
    metrics = run(cfg, out, force=force)
    print(format_table(metrics))
    print(f"run directory: {out}  ({metrics['wall_seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
