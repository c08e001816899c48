"""Lorenz-96 twin experiments: EnSF against the LETKF on named settings.

    tfda l96 SETTING [SETTING ...] --filter {ensf,letkf,all} --out DIR

Settings live in experiments/settings/l96.py (sakov2008, ensf-arctan,
ensf-arctan-1000, ensf-arctan-1e6, and issue 23's l96-dt04, l96-abs, l96-arctan-shocks,
bocquet2010). One setting and one filter write
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
from pathlib import Path
from typing import Any

import torch

from tfda._io import timed
from tfda.da.cycle import run_cycle
from tfda.da.filters import LETKF, EnSF, periodic_distance
from tfda.da.localised_score import ring_taper
from tfda.da.metrics import rank_flatness
from tfda.experiments import rundir
from tfda.experiments._errors import ArgumentParser, UserError, command
from tfda.experiments.checkpoint import FileCheckpointer
from tfda.experiments.config import parse_device, parse_override
from tfda.experiments.factories import make_filter, make_operator
from tfda.experiments.settings.l96 import SETTINGS, L96Setting
from tfda.models.lorenz96 import Lorenz96

FILTERS = ("ensf", "ensf-published", "letkf")
COMMAND = "tfda l96"


def make_l96_filter(name: str, setting: L96Setting, overrides: dict[str, Any]) -> EnSF | LETKF:
    """The filter of ``setting`` with ``--set`` overrides, every key and type checked."""
    if name == "letkf":
        return make_filter("letkf", {**setting.letkf, **overrides}, where="--set",
                           fixed={"distance": periodic_distance(setting.nx)})
    if name in ("ensf", "ensf-published"):
        opts = {**(setting.ensf if name == "ensf" else setting.ensf_published), **overrides}
        fixed: dict[str, Any] = {}
        if opts.get("score", "kernel") == "localised":
            fixed["taper"] = ring_taper(setting.nx, float(opts.pop("radius", 4.0)))
        elif opts.get("radius") is not None:
            fixed["distance"] = periodic_distance(setting.nx)
        return make_filter("ensf", opts, where="--set", fixed=fixed)
    raise UserError(f"--filter must be one of {FILTERS}, got {name!r}")


def make_shock(setting: L96Setting, seed: int) -> Any:
    """The setting's model shocks: every ``shock_every``-th cycle the truth gets a kick
    N(0, shock_std^2 I) that the forecast model does not know (Bao, Chipilski, Liang,
    Zhang & Whitaker, MWR 2024, the SQG "shocks"); the kick of cycle k is drawn from a
    generator seeded by (seed, k), so a resumed run repeats it. None without shocks."""
    if setting.shock_every <= 0 or setting.shock_std <= 0.0:
        return None

    def shock(k: int, truth: torch.Tensor) -> torch.Tensor:
        if k % setting.shock_every:
            return truth
        gen = torch.Generator().manual_seed(1_000_003 * (seed + 1) + k)
        kick = torch.randn(truth.shape, generator=gen, dtype=truth.dtype)
        return truth + setting.shock_std * kick.to(truth.device)

    return shock


def run_one(setting: L96Setting, filter_name: str, out: Path, *, overrides: dict[str, Any],
            seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float64,
            progress: bool = True) -> dict[str, Any]:
    """Run one twin experiment, write results.json and metrics.nc under ``out`` (a
    directory of the run's staging directory: :func:`main` opens the transaction)."""
    model = Lorenz96(setting.nx, dt=setting.dt, rk4_dt=setting.rk4_dt, device=device)
    filt = make_l96_filter(filter_name, setting, overrides)
    operator = make_operator(setting.operator, setting.obs_std, state_size=setting.nx,
                             stride=setting.obs_stride,
                             locations=torch.arange(setting.nx, dtype=torch.float64),
                             where=f"setting {setting.name}: operator")
    fp = rundir.fingerprint({"setting": dataclasses.asdict(setting), "filter": filter_name,
                             "overrides": overrides, "seed": seed, "device": str(device),
                             "dtype": str(dtype)})
    resume = out / f"checkpoint-{fp}.pt"
    # old results always go; a checkpoint only when it belongs to another configuration
    # (``out`` lies inside the staging directory main opened: experiments.rundir)
    rundir.clear(out, ["results.json", "metrics.nc",
                       *(p.name for p in out.glob("checkpoint*.pt") if p != resume)])
    gen = torch.Generator().manual_seed(seed)
    truth = model.spin_up(setting.spin_up_steps, generator=gen, dtype=dtype)[0]
    noise = torch.randn(setting.members, setting.nx, generator=gen, dtype=dtype)
    ensemble = truth + setting.init_std * noise.to(device)
    checkpointer = FileCheckpointer(resume)
    ds, seconds = timed(lambda: run_cycle(
        model, filt, operator, ensemble, n_cycles=setting.cycles, truth=truth, seed=seed + 1,
        checkpointer=checkpointer, progress=progress, shock=make_shock(setting, seed)),
        device=device)
    after = ds.isel(cycle=slice(setting.burn_in, None))
    ranks = torch.as_tensor(after["rank_a"].values.sum(0))
    chi2, dof = rank_flatness(ranks)
    result = {
        "setting": setting.name,
        "filter": filter_name,
        "cycles": setting.cycles,
        "burn_in": setting.burn_in,
        "rmse_a": float(after["rmse_a"].mean()),
        "spread_a": float(after["spread_a"].mean()),
        "spread_over_rmse": float(after["spread_a"].mean() / after["rmse_a"].mean()),
        "crps_a": float(after["crps_a"].mean()),
        "rank_histogram": ranks.tolist(),
        "rank_chi2": chi2,
        "rank_chi2_dof": dof,
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


def _check_sizes(setting: L96Setting, filt: str, overrides: dict[str, Any], name: str) -> None:
    """Step counts before any run starts (experiments.resources)."""
    from tfda.experiments import resources

    resources.check_steps(name, setting.cycles, "cycles")
    # the forecast and analysis ensembles and their perturbations, float64
    resources.check_memory("--members", 4 * 8 * setting.members * setting.nx, "the ensembles")
    steps = overrides.get("steps")
    if isinstance(steps, int) and filt.startswith("ensf"):
        resources.check_steps("--set steps", steps * setting.cycles, "sampler steps")


COLUMNS = (("rmse_a", "rmse_a", ".4f"), ("spread_a", "spread_a", ".4f"),
           ("spread/rmse", "spread_over_rmse", ".2f"), ("crps_a", "crps_a", ".4f"),
           ("rank chi2/dof", "rank_chi2_per_dof", ".1f"), ("s/cycle", "seconds_per_cycle", ".4f"))


def format_table(rows: list[dict[str, Any]]) -> str:
    """One line per run (or per seed-averaged run, whose ``seeds`` column says how many)."""
    head = f"{'setting':<18} {'filter':<14} {'seeds':>5} {'cycles':>6} {'burn':>5} " + " ".join(
        f"{title:>13}" for title, _, _ in COLUMNS)
    lines = [head, "-" * len(head)]
    for r in rows:
        r = {**r, "rank_chi2_per_dof": r["rank_chi2"] / r["rank_chi2_dof"]}
        cells = " ".join(f"{r[key]:>13{fmt}}" for _, key, fmt in COLUMNS)
        lines.append(f"{r['setting']:<18} {r['filter']:<14} {len(r.get('seeds', [r['seed']])):>5} "
                     f"{r['cycles']:>6} {r['burn_in']:>5} {cells}")
    return "\n".join(lines)


def average_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds of the scalar metrics; rank counts summed; per-seed RMSE kept."""
    out = dict(runs[0])
    for key in ("rmse_a", "spread_a", "spread_over_rmse", "crps_a", "rmse_f",
                "seconds_per_cycle"):
        out[key] = sum(r[key] for r in runs) / len(runs)
    counts = torch.tensor([r["rank_histogram"] for r in runs]).sum(0)
    out["rank_histogram"] = counts.tolist()
    out["rank_chi2"], out["rank_chi2_dof"] = rank_flatness(counts)
    out["seeds"] = [r["seed"] for r in runs]
    out["rmse_a_per_seed"] = [r["rmse_a"] for r in runs]
    return out


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
    parser.add_argument("--members", type=int, default=None,
                        help="ensemble size, for every filter (default: the setting's)")
    parser.add_argument("--seed", type=int, default=0, help="first random seed (default 0)")
    parser.add_argument("--seeds", type=int, default=1, choices=range(1, 101), metavar="N",
                        help="run seeds SEED..SEED+N-1 and report their mean")
    parser.add_argument("--rank-png", type=Path, default=None,
                        help="draw the rank histograms of the runs to this PNG")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, auto")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                        help="state dtype (default float64)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a filter option, VALUE as in TOML (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--force", action="store_true",
                        help="write into an --out that is not a `tfda l96` run directory "
                             "(files of the same names are replaced, others kept)")
    args = parser.parse_args(argv)
    overrides = dict(parse_override(item) for item in args.set)
    device = str(parse_device(args.device))
    filters = FILTERS if args.filter == "all" else (args.filter,)
    runs = [(s, f) for s in args.settings for f in filters]
    plan = []
    for name, filt in runs:  # every setting and override checked before any run starts
        setting = SETTINGS[name]
        changes = {k: v for k, v in (("cycles", args.cycles), ("burn_in", args.burn_in),
                                     ("members", args.members)) if v is not None}
        setting = dataclasses.replace(setting, **changes)
        if setting.members < 2:
            raise UserError(f"--members {setting.members} must be at least 2")
        if setting.cycles < 1 or not 0 <= setting.burn_in < setting.cycles:
            raise UserError(f"--burn-in {setting.burn_in} must lie in [0, --cycles "
                            f"{setting.cycles})")
        make_l96_filter(filt, setting, overrides)
        _check_sizes(setting, filt, overrides, "--cycles" if args.cycles else "setting cycles")
        plan.append((setting, filt, "" if len(runs) == 1 else f"{name}-{filt}"))
    rundir.check_out_dir(args.out, "--out", command=COMMAND, force=args.force)
    # every run (several settings, filters, seeds) is one transaction: --out changes
    # only when all are done; a killed invocation resumes from the staged checkpoints
    seeds = range(args.seed, args.seed + args.seeds)
    subs = [sub if args.seeds == 1 else f"{sub}/seed{seed}".lstrip("/")
            for _, _, sub in plan for seed in seeds]
    # a killed attempt's staged runs resume; anything else staged there is stale
    keep = {sub.split("/")[0] for sub in subs} | {rundir.MARKER}
    stale = [p.name for p in rundir.staging_dir(args.out).glob("*") if p.name not in keep
             and not ("" in subs and p.name.startswith("checkpoint-"))]
    staging = rundir.begin(args.out, stale, command=COMMAND, force=args.force)
    rows = []
    for setting, filt, sub in plan:
        per_seed = []
        for seed in seeds:
            run_dir = staging / sub if args.seeds == 1 else staging / sub / f"seed{seed}"
            per_seed.append(run_one(setting, filt, run_dir, overrides=overrides, seed=seed,
                                    device=device, dtype=getattr(torch, args.dtype),
                                    progress=not args.no_progress))
            print(format_table(per_seed[-1:]).splitlines()[-1], flush=True)
        rows.append(average_seeds(per_seed) if args.seeds > 1 else per_seed[0])
    if len(runs) > 1 or args.seeds > 1:
        rundir.write_json(staging / "table.json", rows)
    rundir.finish(staging, {"runs": len(rows)})
    print(format_table(rows))
    if args.rank_png is not None:
        from tfda.experiments.plot_ranks import plot_rank_histograms

        plot_rank_histograms(rows, args.rank_png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
