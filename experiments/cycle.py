"""``tfda cycle CONFIG.toml``: a twin-experiment assimilation cycle for any registered
model and filter, resumable, with a progress bar.

The truth starts on the model's attractor (``spin_up`` for Lorenz-96) or from a
vortex (the barotropic analogue), the ensemble is the truth plus Gaussian
perturbations, observations are H(truth) + eps with a diagonal R, and
:func:`da.cycle.run_cycle` does forecast -> observe -> analyse (EnSF, Bao et al.
arXiv 2309.00983, or the LETKF of Hunt et al. 2007). The run directory gets
config.json, cycle.nc (per-cycle rmse/spread, final ensemble and truth) and,
written last, COMPLETE; a killed run restarted with the same command resumes
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
                            # std a number, or "default" (per-variable, barotropic/ERA5)
    operator = "every"
    stride = 2
    std = 1.0
    [filter]                # "ensf" or "letkf"; options = the dataclass fields
    name = "ensf"
    options = { steps = 100, score = "paired", sampler = "ode" }
    [cycle]
    n_cycles = 50
    steps_per_cycle = 1
    seed = 0
    out = "runs/cycle_l96"
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import torch


def fingerprint(config: dict[str, Any]) -> str:
    """A stable hash of a JSON-able configuration: checkpoints of another set-up are ignored."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any], fp: str) -> Path:
    """torch.save ``payload`` with the fingerprint, to a temporary name, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    torch.save({"fingerprint": fp, "payload": payload}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, fp: str) -> dict[str, Any] | None:
    """The payload at ``path`` if it exists and was written for fingerprint ``fp``."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # a truncated file from a killed run: start that cycle again
        return None
    if not isinstance(data, dict) or data.get("fingerprint") != fp:
        return None
    return data["payload"]


SECTIONS = ("model", "truth", "ensemble", "observations", "filter", "cycle")


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a cycle TOML file; ValueError names the offending key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} not found")
    with path.open("rb") as fh:
        try:
            cfg = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"config {path}: {exc}") from exc
    unknown = sorted(set(cfg) - set(SECTIONS))
    if unknown:
        raise ValueError(f"config {path}: unknown sections {unknown}; known {list(SECTIONS)}")
    for key in ("model", "filter"):
        if "name" not in cfg.get(key, {}):
            raise ValueError(f"config {path}: [{key}] needs a name")
    return cfg


def _truth(model, name: str, spec: dict[str, Any], generator) -> torch.Tensor:
    if hasattr(model, "spin_up"):
        return model.spin_up(int(spec.get("spin_up_steps", 500)), generator=generator)[0]
    if name == "barotropic":
        from models.barotropic import vortex_state

        return vortex_state(model, float(spec.get("lat", 17.0)), float(spec.get("lon", 308.0)),
                            vmax=float(spec.get("vmax", 40.0)),
                            rmax=float(spec.get("rmax_km", 150.0)) * 1e3)[0]
    raise ValueError(f"[truth]: no initial-state builder for model {name!r} "
                     "(supported: models with spin_up, barotropic)")


def _operator(spec: dict[str, Any], state_shape: tuple[int, ...], model):
    from observations.errors import DiagonalError
    from observations.operators import Identity, Subset

    if spec.get("std") == "default":  # per-variable stds of observations.synthetic
        from observations.synthetic import default_error

        error = default_error(list(model.variables), model.lat, model.lon)
    else:
        error = DiagonalError(float(spec.get("std", 1.0)))
    kind = spec.get("operator", "identity")
    if kind == "identity":
        return Identity(error)
    if kind == "every":
        d = int(torch.tensor(state_shape).prod())
        return Subset(error, indices=list(range(0, d, int(spec.get("stride", 2)))))
    raise ValueError(f"[observations] operator must be 'identity' or 'every', got {kind!r}")


def _filter(spec: dict[str, Any]):
    name, options = spec["name"], dict(spec.get("options", {}))
    if name == "ensf":
        from da.filters.ensf import EnSF

        return EnSF(**options)
    if name == "letkf":
        from da.filters.letkf import LETKF

        return LETKF(**options)
    raise ValueError(f"[filter] name must be 'ensf' or 'letkf', got {name!r}")


def run(cfg: dict[str, Any], out: str | os.PathLike, *, progress: bool = True):
    """Run the cycle described by ``cfg`` (see the module docstring) into ``out``."""
    import models
    from da.cycle import run_cycle
    from experiments.checkpoint import FileCheckpointer

    mspec = cfg["model"]
    if mspec["name"] not in models.available():
        raise ValueError(f"[model] unknown model {mspec['name']!r}; registered: "
                         f"{', '.join(models.available())}")
    model = models.load(mspec["name"], **mspec.get("options", {}))
    cyc = cfg.get("cycle", {})
    seed = int(cyc.get("seed", 0))
    gen = torch.Generator().manual_seed(seed)
    truth = _truth(model, mspec["name"], cfg.get("truth", {}), gen)
    ens_spec = cfg.get("ensemble", {})
    members = int(ens_spec.get("members", 20))
    ensemble = truth[None] + float(ens_spec.get("spread", 1.0)) * torch.randn(
        (members, *truth.shape), generator=gen, dtype=truth.dtype).to(truth.device)
    operator = _operator(cfg.get("observations", {}), tuple(truth.shape), model)
    analysis = _filter(cfg["filter"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "COMPLETE").unlink(missing_ok=True)
    _write(out / "config.json", json.dumps(cfg, indent=1, default=str))
    fp = fingerprint(cfg)
    ckpt = FileCheckpointer(out / f"checkpoint-{fp}.pt")
    ds = run_cycle(model, analysis, operator, ensemble, n_cycles=int(cyc.get("n_cycles", 10)),
                   truth=truth, steps_per_cycle=int(cyc.get("steps_per_cycle", 1)), seed=seed,
                   checkpointer=ckpt, progress=progress)
    tmp = out / ".cycle.nc.part"
    ds.to_netcdf(tmp)
    os.replace(tmp, out / "cycle.nc")
    ckpt.clear()
    summary = {m: float(ds[m].values[-10:].mean()) for m in ("rmse_a", "spread_a", "rmse_f")}
    _write(out / "COMPLETE", json.dumps({"last_10_cycles": summary}, indent=1))
    return ds


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tfda cycle", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="TOML file (see experiments/configs/)")
    p.add_argument("--out", help="run directory (default: [cycle] out, else runs/cycle)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
        out = args.out or cfg.get("cycle", {}).get("out", "runs/cycle")
        ds = run(cfg, out, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, TypeError) as exc:
        print(f"tfda cycle: error: {exc}", file=sys.stderr)
        return 2
    print(f"{out}: rmse_a (last cycle) = {float(ds['rmse_a'].values[-1]):.4f}, "
          f"spread_a = {float(ds['spread_a'].values[-1]):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
