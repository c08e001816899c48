"""Lorenz-96 twin experiments: EnSF against the LETKF on named settings.

    tfda l96 SETTING [SETTING ...] --filter {ensf,letkf,all} --out DIR

Settings live in experiments/settings/l96.py (sakov2008, ensf-arctan,
ensf-arctan-1000, ensf-arctan-1e6). One setting and one filter write
``DIR/results.json`` (setting, filter, cycles, burn_in, rmse_a, spread_a,
seconds_per_cycle, filter settings) and ``DIR/metrics.nc`` (per-cycle metrics);
several write ``DIR/SETTING-FILTER/...`` plus ``DIR/table.json``, and print the
table. ``--set key=value`` overrides a filter option (e.g. ``--set inflation=1.06``
or ``--set score=paired``), ``--cycles``/``--burn-in`` the run length. Runs are
resumable: the cycle state is checkpointed to ``DIR/.../checkpoint-HASH.pt`` after each
analysis and picked up by the same command (the file name carries a hash of the
configuration, so another set-up never resumes from it); it is removed when the run
completes.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from da.cycle import run_cycle
from da.filters import LETKF, EnSF, periodic_distance
from experiments import rundir
from experiments._errors import ArgumentParser, UserError, command
from experiments.checkpoint import FileCheckpointer
from experiments.config import build, parse_device, parse_override
from experiments.cycle import fingerprint
from experiments.settings.l96 import SETTINGS, L96Setting
from models.lorenz96 import Lorenz96
from observations.operators import Arctan, Identity

FILTERS = ("ensf", "letkf")


def make_filter(name: str, setting: L96Setting, overrides: dict[str, Any]) -> EnSF | LETKF:
    """The filter of ``setting`` with ``--set`` overrides, every key and type checked."""
    if name == "letkf":
        return build(LETKF, {**setting.letkf, **overrides}, "--set",
                     fixed={"distance": periodic_distance(setting.nx)})
    if name == "ensf":
        return build(EnSF, {**setting.ensf, **overrides}, "--set")
    raise UserError(f"--filter must be one of {FILTERS}, got {name!r}")


def make_operator(setting: L96Setting) -> Identity | Arctan:
    locations = torch.arange(setting.nx, dtype=torch.float64)
    if setting.operator == "identity":
        return Identity(setting.obs_std, locations=locations)
    if setting.operator == "arctan":
        return Arctan(setting.obs_std, locations=locations)
    raise ValueError(f"setting {setting.name}: unknown operator {setting.operator!r}")


def run_one(setting: L96Setting, filter_name: str, out: Path, *, overrides: dict[str, Any],
            seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float64,
            progress: bool = True) -> dict[str, Any]:
    """Run one twin experiment, write results.json and metrics.nc under ``out``."""
    model = Lorenz96(setting.nx, dt=setting.dt, rk4_dt=setting.rk4_dt, device=device)
    filt = make_filter(filter_name, setting, overrides)
    operator = make_operator(setting)
    fp = fingerprint({"setting": dataclasses.asdict(setting), "filter": filter_name,
                      "overrides": overrides, "seed": seed, "device": str(device),
                      "dtype": str(dtype)})
    resume = out / f"checkpoint-{fp}.pt"
    # old results always go; a checkpoint only when it belongs to another configuration
    rundir.begin(out, ["results.json", "metrics.nc",
                       *(p.name for p in out.glob("checkpoint*.pt") if p != resume)])
    gen = torch.Generator().manual_seed(seed)
    truth = model.spin_up(setting.spin_up_steps, generator=gen, dtype=dtype)[0]
    noise = torch.randn(setting.members, setting.nx, generator=gen, dtype=dtype)
    ensemble = truth + setting.init_std * noise.to(device)
    checkpointer = FileCheckpointer(resume)
    start = time.perf_counter()
    ds = run_cycle(model, filt, operator, ensemble, n_cycles=setting.cycles, truth=truth,
                   seed=seed + 1, checkpointer=checkpointer, progress=progress)
    seconds = time.perf_counter() - start
    after = ds.isel(cycle=slice(setting.burn_in, None))
    result = {
        "setting": setting.name,
        "filter": filter_name,
        "cycles": setting.cycles,
        "burn_in": setting.burn_in,
        "rmse_a": float(after["rmse_a"].mean()),
        "spread_a": float(after["spread_a"].mean()),
        "rmse_f": float(after["rmse_f"].mean()),
        "seconds_per_cycle": seconds / setting.cycles,
        "nx": setting.nx,
        "members": setting.members,
        "seed": seed,
        "device": device,
        "filter_settings": filt.settings(),
        "note": "seconds_per_cycle covers only the cycles run by this invocation's process "
                "when it resumed from a checkpoint",
    }
    metrics = ds.drop_vars(["ensemble", "truth"])
    with rundir.atomic_path(out / "metrics.nc", suffix=".nc") as tmp:
        metrics.to_netcdf(tmp)
    rundir.write_json(out / "results.json", result)
    checkpointer.clear()
    return result


def format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'setting':<18} {'filter':<6} {'cycles':>6} {'burn':>5} {'rmse_a':>8} " \
           f"{'spread_a':>8} {'s/cycle':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['setting']:<18} {r['filter']:<6} {r['cycles']:>6} {r['burn_in']:>5} "
                     f"{r['rmse_a']:>8.4f} {r['spread_a']:>8.4f} {r['seconds_per_cycle']:>9.4f}")
    return "\n".join(lines)


@command("tfda l96")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="tfda l96", description=__doc__.split("\n\n")[0])
    parser.add_argument("settings", nargs="+", choices=sorted(SETTINGS),
                        help="named settings (experiments/settings/l96.py)")
    parser.add_argument("--filter", default="all", choices=(*FILTERS, "all"),
                        help="filter(s) to run (default all)")
    parser.add_argument("--out", required=True, type=Path, help="run directory")
    parser.add_argument("--cycles", type=int, default=None, help="assimilation cycles")
    parser.add_argument("--burn-in", type=int, default=None,
                        help="cycles left out of the averages")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, auto")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                        help="state dtype (default float64)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a filter option, VALUE as in TOML (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    overrides = dict(parse_override(item) for item in args.set)
    device = str(parse_device(args.device))
    filters = FILTERS if args.filter == "all" else (args.filter,)
    runs = [(s, f) for s in args.settings for f in filters]
    plan = []
    for name, filt in runs:  # every setting and override checked before any run starts
        setting = SETTINGS[name]
        changes = {k: v for k, v in (("cycles", args.cycles), ("burn_in", args.burn_in))
                   if v is not None}
        setting = dataclasses.replace(setting, **changes)
        if setting.cycles < 1 or not 0 <= setting.burn_in < setting.cycles:
            raise UserError(f"--burn-in {setting.burn_in} must lie in [0, --cycles "
                            f"{setting.cycles})")
        make_filter(filt, setting, overrides)
        out = args.out if len(runs) == 1 else args.out / f"{name}-{filt}"
        plan.append((setting, filt, rundir.check_out_dir(out, "--out")))
    rows = []
    for setting, filt, out in plan:
        rows.append(run_one(setting, filt, out, overrides=overrides, seed=args.seed,
                            device=device, dtype=getattr(torch, args.dtype),
                            progress=not args.no_progress))
        print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    print(format_table(rows))
    if len(runs) > 1:
        rundir.write_json(args.out / "table.json", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
