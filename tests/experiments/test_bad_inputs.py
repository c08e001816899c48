"""Bad input, as a user types it, on the installed ``tfda``: each case must end with
exit status 2, exactly one line on stderr naming the offending option, key or file,
no traceback, and nothing (no COMPLETE, no outputs) in its --out directory.

The cases in CASES run as real subprocesses of the installed console script (each
pays ~2 CPU-seconds of Python and torch start-up, so they run two at a time); the
variants in IN_PROCESS go through the same entry point, experiments.cli.main,
inside the test process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cycle_cli import TINY as TINY_CYCLE
from test_lee import TINY_ANALOGUE, _era5_setup, _toml

pytestmark = pytest.mark.subprocess



def tfda_command() -> list[str]:
    """The console script installed next to this interpreter (``pip install -e .``);
    ``python -m tfda.experiments.cli`` (the same entry point) where there is none."""
    script = Path(sys.executable).with_name("tfda")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "tfda.experiments.cli"]


def run_tfda(*args: str, cwd: Path | None = None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "TFDA_DEBUG": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*tfda_command(), *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300, **kw)


def _nan_era5(era5: Path, at: datetime, channel: str) -> Path:
    """A copy of a prepared ERA5 file with one channel NaN at one time."""
    from tfda.observations.era5 import load_prepared, write_netcdf

    data, coords = load_prepared(era5)
    k = int(np.flatnonzero(np.asarray(coords["time"]) == np.datetime64(at, "ns"))[0])
    data = data.clone()
    data[k, list(coords["channel"]).index(channel)] = float("nan")
    return write_netcdf(era5.with_name(f"nan_{channel}.nc"), data, coords)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    era5, weights, cfg = _era5_setup(d)
    f = {"d": d, "era5": era5, "weights": weights, "era5_cfg": Path(_toml(d / "e.toml", cfg))}
    f["text"] = d / "notes.nc"
    f["text"].write_text("this is not netCDF\n")
    f["afile"] = d / "afile"
    f["afile"].write_text("x")
    junk = d / "junk_weights"
    shutil.copytree(weights, junk)
    (junk / "backbone.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    f["junk"] = junk
    # NaN at Day 0 + 12 h: a time only the truth tracking reads, not an observation time
    f["nan_era5"] = _nan_era5(era5, datetime(2023, 9, 8, 12), "msl")

    def lee_toml(name: str, **changes) -> Path:
        return Path(_toml(d / f"{name}.toml", {**TINY_ANALOGUE, **changes}))

    f["lee_members"] = lee_toml("members", members="twenty")
    f["lee_steps"] = lee_toml("steps", ensf_steps="many")
    f["lee_nested"] = lee_toml("nested", analogue_model={**TINY_ANALOGUE["analogue_model"],
                                                         "resolutionn": 1.0})
    f["lee_day0"] = lee_toml("day0", day0="2023-13-45")
    f["lee_bandwidth"] = lee_toml("bandwidth", ensf_bandwidth=1.5)
    f["lee_radius"] = lee_toml("radius", ensf_radius_km=-3.0)
    f["lee_unknown"] = lee_toml("unknown", memberz=5)
    f["lee_badtoml"] = d / "bad.toml"
    f["lee_badtoml"].write_text("members = [\n")

    def cycle_toml(name: str, old: str, new: str) -> Path:
        p = d / f"cycle_{name}.toml"
        assert old in TINY_CYCLE
        p.write_text(TINY_CYCLE.replace(old, new))
        return p

    f["cy_members"] = cycle_toml("members", "members = 6", 'members = "twenty"')
    f["cy_negative"] = cycle_toml("negative", "members = 6", "members = -5")
    f["cy_memberz"] = cycle_toml("memberz", "members = 6", "members = 6\nmemberz = 5")
    f["cy_steps"] = cycle_toml("steps", "steps = 20", 'steps = "many"')
    f["cy_model"] = cycle_toml("model", "nx = 8", "nx = 8, nxx = 3")
    f["cy_filter"] = cycle_toml("filter", 'name = "ensf"', 'name = "kalman"')
    f["cy_ok"] = cycle_toml("ok", "n_cycles = 4", "n_cycles = 4")
    (d / "not_a_run").mkdir()
    return f


ERA5 = ("--era5", "{era5}", "--weights", "{weights}", "--config", "{era5_cfg}")
# (id, argv with {file} placeholders, text the one stderr line must contain)
CASES = [
    ("lee-era5-not-netcdf", ("lee", "--era5", "{text}", "--weights", "{weights}",
                             "--config", "{era5_cfg}", "--out", "{out}"), "notes.nc"),
    ("lee-era5-nan-at-tracking-time", ("lee", "--era5", "{nan_era5}", "--weights", "{weights}",
                                       "--config", "{era5_cfg}", "--out", "{out}"),
     "msl has NaN/Inf values at 2023-09-08T12:00"),
    ("lee-random-checkpoint", ("lee", "--era5", "{era5}", "--weights", "{junk}", "--config",
                               "{era5_cfg}", "--out", "{out}"), "not a FourCastNet checkpoint"),
    ("lee-members-type", ("lee", "--config", "{lee_members}", "--out", "{out}"),
     "members: expected an integer, got 'twenty'"),
    ("lee-nested-unknown", ("lee", "--config", "{lee_nested}", "--out", "{out}"),
     "analogue_model.resolutionn: unknown key"),
    ("lee-day0", ("lee", "--config", "{lee_day0}", "--out", "{out}"), "day0"),
    ("lee-unknown-key", ("lee", "--config", "{lee_unknown}", "--out", "{out}"), "memberz"),
    ("lee-members-too-few", ("lee", "--members", "2", "--out", "{out}"), "members"),
    ("lee-device-cuda", ("lee", "--device", "cuda", "--out", "{out}"),
     "--device cuda: CUDA is not available"),
    ("lee-out-is-a-file", ("lee", "--config", "{era5_cfg}", "--out", "{afile}"), "--out"),
    ("lee-out-below-a-file", ("lee", "--out", "{afile}/run"), "afile is a file"),
    ("cycle-members-type", ("cycle", "{cy_members}", "--out", "{out}"), "ensemble.members"),
    ("cycle-unknown-nested-key", ("cycle", "{cy_memberz}", "--out", "{out}"),
     "ensemble.memberz: unknown key"),
    ("cycle-filter-option-type", ("cycle", "{cy_steps}", "--out", "{out}"),
     "filter.options.steps"),
    ("cycle-model-option", ("cycle", "{cy_model}", "--out", "{out}"), "model.options.nxx"),
    ("cycle-filter-name", ("cycle", "{cy_filter}", "--out", "{out}"), "filter.name"),
    ("cycle-out-is-a-file", ("cycle", "{cy_ok}", "--out", "{afile}"), "--out"),
    ("l96-set-unknown", ("l96", "sakov2008", "--filter", "letkf", "--set", "radiuss=3",
                         "--out", "{out}"), "--set radiuss: unknown key"),
    ("l96-set-type", ("l96", "sakov2008", "--set", "inflation=abc", "--out", "{out}"),
     "--set inflation: expected a number"),
    ("l96-burn-in", ("l96", "sakov2008", "--cycles", "3", "--burn-in", "5", "--out", "{out}"),
     "--burn-in"),
    ("l96-out-is-a-file", ("l96", "sakov2008", "--out", "{afile}"), "--out"),
    ("l96-members", ("l96", "sakov2008", "--members", "1", "--out", "{out}"), "--members"),
    ("l96-members-huge", ("l96", "sakov2008", "--members", "1000000000", "--out", "{out}"),
     "--members: the ensembles need"),
    ("plot-tracks-missing-dir", ("plot-tracks", "{d}/no_such_run"), "no_such_run"),
    ("plot-tracks-not-a-run", ("plot-tracks", "{d}/not_a_run"), "tracks.nc"),
    ("plot-tracks-quantile", ("plot-tracks", "{d}/not_a_run", "--quantile", "1.5"),
     "--quantile"),
    ("era5-prepare-not-netcdf", ("era5", "prepare", "--in", "{text}", "--out", "{out}/e.nc"),
     "notes.nc"),
    ("era5-bad-date", ("era5", "download", "--start", "2023-13-01", "--end", "2023-09-08",
                       "--out", "{out}", "--dry-run"), "--start"),
    ("demo-out-is-a-file", ("demo", "--out", "{afile}"), "--out"),
    ("unknown-command", ("lorenz",), "'lorenz'"),
]

# the same checks, in-process: variants of the cases above
IN_PROCESS = [
    ("lee-members-option", ("lee", "--members", "x", "--out", "{out}"), "--members"),
    ("lee-weights-missing", ("lee", "--era5", "{era5}", "--weights", "{d}/nowhere",
                             "--config", "{era5_cfg}", "--out", "{out}"), "backbone.ckpt"),
    ("lee-steps-type", ("lee", "--config", "{lee_steps}", "--out", "{out}"), "ensf_steps"),
    ("lee-bad-toml", ("lee", "--config", "{lee_badtoml}", "--out", "{out}"), "bad.toml"),
    ("lee-config-missing", ("lee", "--config", "{d}/absent.toml", "--out", "{out}"),
     "absent.toml"),

    ("lee-device-bogus", ("lee", "--device", "gpu", "--out", "{out}"), "--device"),
    ("lee-ensf-bandwidth", ("lee", "--config", "{lee_bandwidth}", "--out", "{out}"),
     "bandwidth"),
    ("lee-ensf-radius", ("lee", "--config", "{lee_radius}", "--out", "{out}"), "ensf_radius_km"),
    ("l96-set-bandwidth", ("l96", "sakov2008", "--filter", "ensf", "--set", "bandwidth=0",
                           "--out", "{out}"), "bandwidth"),
    ("cycle-members-negative", ("cycle", "{cy_negative}", "--out", "{out}"), "members"),
    ("cycle-config-missing", ("cycle", "{d}/absent.toml", "--out", "{out}"), "absent.toml"),
    ("l96-set-syntax", ("l96", "sakov2008", "--set", "inflation", "--out", "{out}"), "--set"),
    ("l96-setting", ("l96", "sakov2009", "--out", "{out}"), "sakov2009"),
    ("l96-device", ("l96", "sakov2008", "--device", "tpu", "--out", "{out}"), "--device"),
    ("demo-steps", ("demo", "--steps", "0", "--out", "{out}"), "--steps"),
]


@pytest.fixture(scope="module")
def results(files) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Every case's subprocess, two at a time (each pays Python's and torch's start-up)."""

    def one(case):
        name, argv, _ = case
        out = files["d"] / "out" / name
        args = [a.format(**{k: str(v) for k, v in files.items()}, out=out) for a in argv]
        return name, (run_tfda(*args, cwd=files["d"]), out)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, CASES))


def test_enough_cases_across_commands():
    commands = {argv[0] for _, argv, _ in CASES}
    assert len(CASES) >= 25 and len({c[0] for c in CASES + IN_PROCESS}) == len(CASES + IN_PROCESS)
    assert {"lee", "cycle", "l96", "plot-tracks", "era5", "demo"} <= commands


def _check(rc: int, stderr: str, needle: str, out: Path, files) -> None:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert rc == 2, (rc, stderr[-2000:])
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    assert needle in lines[0] and "error:" in lines[0], lines[0]
    # validated before anything was written: no run directory, let alone COMPLETE
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())
    assert files["afile"].read_text() == "x"


@pytest.mark.parametrize("name,argv,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(name, argv, needle, results, files):
    if name == "lee-device-cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    proc, out = results[name]
    _check(proc.returncode, proc.stderr, needle, out, files)


@pytest.mark.parametrize("name,argv,needle", IN_PROCESS, ids=[c[0] for c in IN_PROCESS])
def test_bad_input_in_process(name, argv, needle, files, capsys, monkeypatch):
    from tfda.experiments import cli

    monkeypatch.chdir(files["d"])
    out = files["d"] / "out" / name
    args = [a.format(**{k: str(v) for k, v in files.items()}, out=out) for a in argv]
    rc = cli.main(args)
    _check(rc, capsys.readouterr().err, needle, out, files)


def test_debug_shows_the_traceback(files):
    proc = run_tfda("l96", "sakov2008", "--set", "inflation=abc", "--out",
                    str(files["d"] / "dbg"), "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "UserError" in proc.stderr


def test_cycle_prints_the_summary_it_writes_and_reruns_clean(files):
    """A re-run with another configuration leaves no result of the old one behind, and
    files are created with the user's umask (not mkstemp's 0600)."""
    import json

    out = files["d"] / "cycle_run"
    proc = run_tfda("cycle", str(files["cy_ok"]), "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert f"rmse_a = {summary['last_10_cycles']['rmse_a']:.4f}" in proc.stdout
    for p in out.iterdir():
        assert p.stat().st_mode & 0o777 == 0o666 & ~_umask(), p
    (out / "stale.png").write_text("")  # not a cycle output: left alone
    other = files["d"] / "cycle_other.toml"
    other.write_text(TINY_CYCLE.replace("n_cycles = 4", "n_cycles = 0"))
    assert run_tfda("cycle", str(other), "--out", str(out)).returncode == 2
    assert (out / "COMPLETE").is_file()  # a rejected configuration touches nothing


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

