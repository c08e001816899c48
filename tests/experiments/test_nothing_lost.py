"""Nothing lost (issue 21): the audit's classes re-run on complete run directories.

* destroyed data: a complete ``tfda lee`` / ``tfda cycle`` / ``tfda l96`` run, then a
  failing re-run into the same ``--out``: the run directory's checksum (every file's
  bytes) is the same before and after; a directory of the user's own files is refused
  (and identical), ``era5 prepare --in X --out X`` refused;
* hangs: absurd sizes end within seconds with one line naming the option;
* internal errors: a real failed allocation is one line, exit 2;
* silent wrong results: Inf/NaN and out-of-range values refused, naming the key.

The complete runs are built once per module, in-process (cli.main, the entry point of
the installed ``tfda``); the SIGKILL test (test_sigkill_at_three_times...) runs the
real command as a subprocess.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from test_bad_inputs import run_tfda, tfda_command
from test_cycle_cli import TINY as TINY_CYCLE
from test_lee import TINY_ANALOGUE, _toml

from tfda.experiments import cli, rundir


def checksum(d: Path) -> str:
    """sha256 over every path and file's bytes under ``d`` (hidden files included)."""
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        h.update(str(p.relative_to(d)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _one_line_exit_2(rc: int, err: str, needle: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, (rc, err[-2000:])
    assert len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0] and "internal error" not in lines[0], lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One complete run of each command, and the config files the failing re-runs use."""
    d = tmp_path_factory.mktemp("complete")
    lee_conf = Path(_toml(d / "lee.toml", TINY_ANALOGUE))
    cycle_conf = d / "cycle.toml"
    cycle_conf.write_text(TINY_CYCLE)
    f = {"d": d, "lee_conf": lee_conf, "cycle_conf": cycle_conf,
         "lee": d / "lee", "cycle": d / "cycle", "l96": d / "l96"}
    assert cli.main(["lee", "--config", str(lee_conf), "--out", str(f["lee"])]) == 0
    assert cli.main(["cycle", str(cycle_conf), "--out", str(f["cycle"]), "--no-progress"]) == 0
    assert cli.main(["l96", "sakov2008", "--filter", "letkf", "--cycles", "12", "--burn-in",
                     "2", "--out", str(f["l96"]), "--no-progress"]) == 0
    for name in ("lee", "cycle", "l96"):
        assert (f[name] / "COMPLETE").is_file() and (f[name] / rundir.MARKER).is_file()

    def lee_toml(name: str, line: str) -> str:  # TOML text: inf and nan are TOML values
        p = d / f"lee_{name}.toml"
        text = lee_conf.read_text().replace("obs_days = [-1, 0]\n", "")
        p.write_text(line + "\n" + (text if line.startswith("obs_days") else
                                     lee_conf.read_text()))  # top level: before the tables
        return str(p)

    def cycle_toml(name: str, old: str, new: str) -> str:
        assert old in TINY_CYCLE
        p = d / f"cycle_{name}.toml"
        p.write_text(TINY_CYCLE.replace(old, new))
        return str(p)

    f.update(lee_inflation=lee_toml("inflation", "ensf_inflation = inf"),
             lee_obs_days=lee_toml("obs_days", "obs_days = [-3, -1, 0]"),
             lee_vortex=lee_toml("vortex", "first_guess = [95.0, 308.0]"),
             cy_members=cycle_toml("members", "members = 6", "members = 1000000000"),
             cy_spread_nan=cycle_toml("spread_nan", "spread = 1.0", "spread = nan"),
             cy_spread_0=cycle_toml("spread_0", "spread = 1.0", "spread = 0"),
             cy_spin_up=cycle_toml("spin_up", "spin_up_steps = 50", "spin_up_steps = -5"),
             cy_cycles=cycle_toml("cycles", "n_cycles = 4", "n_cycles = 1000000000"),
             cy_steps=cycle_toml("steps", "steps = 20", "steps = 1000000000"))
    f["cy_grid"] = d / "cycle_grid.toml"  # a box the model could not even build
    f["cy_grid"].write_text('[model]\nname = "barotropic"\noptions = { config = { resolution '
                            '= 0.001 } }\n[filter]\nname = "letkf"\n')
    return f


LEE = ("lee", "--config", "{lee_conf}", "--out", "{lee}")
CYCLE = ("cycle", "{{conf}}", "--out", "{cycle}")
L96 = ("l96", "sakov2008", "--filter", "letkf", "--cycles", "12", "--burn-in", "2",
       "--out", "{l96}")
# (id, run directory, argv, text the one error line must contain); the sizes are
# refused from their estimate before any allocation (were they not, the runs would
# allocate terabytes)
RERUNS = [
    ("lee-members", "lee", (*LEE, "--members", "1000000000"), "--members 1000000000"),
    ("lee-ensf-steps", "lee", (*LEE, "--ensf-steps", "1000000000"), "--ensf-steps"),
    ("lee-forecast-days", "lee", (*LEE, "--forecast-days", "1000000"), "--forecast-days"),
    ("lee-inflation-inf", "lee", ("lee", "--config", "{lee_inflation}", "--out", "{lee}"),
     "ensf_inflation: expected a finite number"),
    ("lee-obs-days", "lee", ("lee", "--config", "{lee_obs_days}", "--out", "{lee}"),
     "obs_days must be evenly spaced"),
    ("lee-first-guess-lat", "lee", ("lee", "--config", "{lee_vortex}", "--out", "{lee}"),
     "first_guess: latitude 95.0"),
    ("lee-stations", "lee", (*LEE, "--stations", "1000000000"), "--stations 1000000000"),
    ("lee-weights-analogue", "lee", (*LEE, "--weights", "{d}"), "--weights"),
    ("cycle-members", "cycle", ("cycle", "{cy_members}", "--out", "{cycle}"),
     "ensemble.members: 1000000000 ensemble members"),
    ("cycle-grid-too-fine", "cycle", ("cycle", "{cy_grid}", "--out", "{cycle}"),
     "model.options.config: the grid of 2000090001 points"),
    ("cycle-spread-nan", "cycle", ("cycle", "{cy_spread_nan}", "--out", "{cycle}"),
     "ensemble.spread: expected a finite number"),
    ("cycle-spread-0", "cycle", ("cycle", "{cy_spread_0}", "--out", "{cycle}"),
     "spread must be > 0"),
    ("cycle-spin-up", "cycle", ("cycle", "{cy_spin_up}", "--out", "{cycle}"),
     "spin_up_steps must be >= 0"),
    ("cycle-n-cycles", "cycle", ("cycle", "{cy_cycles}", "--out", "{cycle}"), "cycle.n_cycles"),
    ("cycle-ensf-steps", "cycle", ("cycle", "{cy_steps}", "--out", "{cycle}"),
     "filter.options.steps"),
    ("l96-inflation-inf", "l96", (*L96, "--set", "inflation=inf"),
     "--set inflation: expected a finite number"),
    ("l96-cycles", "l96", (*L96[:4], "--cycles", "1000000000", "--out", "{l96}"), "--cycles"),
    ("l96-ensf-steps", "l96", ("l96", "sakov2008", "--filter", "ensf", "--set",
                               "steps=1000000000", "--out", "{l96}"), "--set steps"),
    ("l96-other-command", "l96", ("cycle", "{cycle_conf}", "--out", "{l96}"),
     "is a run directory of 'tfda l96', not of 'tfda cycle'"),
]


@pytest.mark.parametrize("name,run,argv,needle", RERUNS, ids=[r[0] for r in RERUNS])
def test_a_failing_rerun_leaves_the_complete_run_identical(name, run, argv, needle, runs,
                                                          capsys):
    before = checksum(runs[run])
    args = [a.format(**{k: str(v) for k, v in runs.items()}) for a in argv]
    rc = cli.main(args)
    _one_line_exit_2(rc, capsys.readouterr().err, needle)
    assert checksum(runs[run]) == before
    assert not rundir.staging_dir(runs[run]).exists()  # refused before anything was written


def test_the_users_own_directory_is_refused_and_untouched(runs, tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "checkpoints").mkdir(parents=True)
    for name in ("config.json", "summary.json", "checkpoints/notes.txt"):
        (mine / name).write_text(f"my own {name}")
    before = checksum(mine)
    for argv in (["lee", "--config", str(runs["lee_conf"]), "--out", str(mine)],
                 ["cycle", str(runs["cycle_conf"]), "--out", str(mine)],
                 ["l96", "sakov2008", "--filter", "letkf", "--out", str(mine)],
                 ["demo", "--out", str(mine)]):
        rc = cli.main(argv)
        _one_line_exit_2(rc, capsys.readouterr().err, f"--out {mine}: exists and is not a "
                                                      "tfda run directory")
    assert checksum(mine) == before and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    # --force writes into it and keeps the files it does not replace
    rc = cli.main(["cycle", str(runs["cycle_conf"]), "--out", str(mine), "--force",
                   "--no-progress"])
    assert rc == 0 and (mine / "COMPLETE").is_file()
    assert (mine / "checkpoints" / "notes.txt").read_text() == "my own checkpoints/notes.txt"


def test_era5_prepare_never_overwrites_its_input(tmp_path, capsys):
    src = tmp_path / "raw.nc"
    src.write_bytes(b"the raw download")
    rc = cli.main(["era5", "prepare", "--in", str(src), "--out", str(src)])
    _one_line_exit_2(rc, capsys.readouterr().err, "is also --in")
    other = tmp_path / "mine.nc"
    other.write_bytes(b"someone else's file")
    rc = cli.main(["era5", "prepare", "--in", str(src), "--out", str(other)])
    _one_line_exit_2(rc, capsys.readouterr().err, "was not written by tfda")
    assert src.read_bytes() == b"the raw download"
    assert other.read_bytes() == b"someone else's file"


def test_demo_runs_are_transactions_too(tmp_path, capsys):
    out = tmp_path / "demo"
    tiny = ["demo", "--prior", "40", "--points", "40", "--no-progress", "--out", str(out)]
    assert cli.main([*tiny, "--steps", "4"]) == 0
    before, inode = checksum(out), out.stat().st_ino
    rc = cli.main([*tiny, "--steps", "100000000"])
    _one_line_exit_2(rc, capsys.readouterr().err, "--steps: the run would take about 1e+08")
    assert checksum(out) == before
    assert cli.main([*tiny, "--steps", "6"]) == 0  # replaced whole, nothing staged left
    assert checksum(out) != before and out.stat().st_ino != inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]


HANGS = [  # each hung for > 120 s before (the audit); now one line within seconds
    (("lee", "--forecast-days", "1000000", "--out", "{d}/h1"), "--forecast-days"),
    (("demo", "--steps", "100000000", "--out", "{d}/h2"), "--steps"),
    (("era5", "download", "--start", "0001-01-01", "--end", "9999-12-31", "--step-hours", "1",
      "--dry-run", "--out", "{d}/h3"), "87,649,393 times"),
]


@pytest.mark.subprocess
def test_absurd_sizes_end_at_once_with_one_line(tmp_path):
    def one(case):
        argv, _ = case
        start = time.monotonic()
        proc = run_tfda(*[a.format(d=tmp_path) for a in argv])
        return proc, time.monotonic() - start

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(one, HANGS))
    for (argv, needle), (proc, seconds) in zip(HANGS, results, strict=True):
        _one_line_exit_2(proc.returncode, proc.stderr, needle)
        assert seconds < 30, (argv, seconds)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_allocation_is_one_line_naming_the_size(capsys):
    from tfda.experiments._errors import command

    @command("tfda x")
    def main(argv):
        torch.empty(2**62, dtype=torch.uint8)  # a real allocation failure, not a mock

    assert main([]) == 2
    err = capsys.readouterr().err
    _one_line_exit_2(2, err, "out of memory")
    assert str(2**62) in err  # the size asked for


@pytest.mark.subprocess
@pytest.mark.slow
def test_sigkill_at_three_times_leaves_the_complete_run_identical(runs, tmp_path):
    """A re-run into the complete lee run's --out (another seed), killed early (before
    the staging directory exists), mid-cycle (a staged checkpoint) and late (the staged
    tracks.nc written): the complete run is identical each time; then the re-run
    completes, resuming from the staged checkpoint, and replaces it."""
    out = tmp_path / "lee"
    shutil.copytree(runs["lee"], out)  # the module's complete run stays as it is
    before = checksum(out)
    staging = rundir.staging_dir(out)
    argv = [*tfda_command(), "lee", "--config", str(runs["lee_conf"]), "--out", str(out),
            "--seed", "7", "--ensf-steps", "60"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TFDA_DEBUG": "0"}
    start = 0.0
    waits = {"early": lambda: time.monotonic() - start > 0.5,  # while Python imports torch
             "checkpoint": lambda: any((staging / "checkpoints").glob("cycle-*.pt")),
             "outputs": lambda: (staging / "tracks.nc").is_file()}
    for when, ready in waits.items():
        child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env=env)
        start, deadline = time.monotonic(), time.monotonic() + 120
        while not ready():
            assert child.poll() is None, f"{when}: the run ended before it was killed"
            assert time.monotonic() < deadline, f"{when}: not reached within 120 s"
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert checksum(out) == before, when
    assert any((staging / "checkpoints").glob("cycle-*.pt"))
    proc = run_tfda(*argv[len(tfda_command()):], "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "resuming from" in proc.stdout and str(staging) in proc.stdout
    assert checksum(out) != before and not staging.exists()
    assert '"seed": 7' in (out / "config.json").read_text()
