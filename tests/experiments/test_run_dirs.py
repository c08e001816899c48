"""Run directories that cannot lie: SIGKILL and resume (also with --no-progress) is
bit-identical and counts both attempts' time; a re-run clears the old outputs first;
files get the user's umask."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import datetime

import numpy as np
import pytest
import xarray as xr
from test_bad_inputs import _nan_era5, _umask, run_tfda, tfda_command
from test_lee import TINY_ANALOGUE, _era5_setup, _toml

from tfda.experiments import lee, rundir
from tfda.experiments._errors import UserError

# two EnSF cycles (a checkpoint after each), slow enough to be killed in between
# (the paired sampler's 150 steps, not the kernel EnSF's 10: the run must be killable)
RESUMABLE = {**{k: v for k, v in TINY_ANALOGUE.items() if k != "progress"},
             "obs_days": [-2, -1, 0], "vortex_day": -2, "vortex_lat": 13.9,
             "vortex_lon": 315.1, "ensf_score": "paired", "ensf_steps": 150}


def _outputs(out) -> dict[str, np.ndarray]:
    arrays = {}
    for name in ("analyses.nc", "tracks.nc"):
        with xr.open_dataset(out / name) as ds:
            arrays.update({f"{name}:{k}": ds[k].values for k in ds.data_vars})
    return arrays


@pytest.mark.subprocess
@pytest.mark.slow
def test_sigkill_then_resume_with_no_progress_is_bit_identical(tmp_path):
    conf = _toml(tmp_path / "c.toml", RESUMABLE)
    ref = tmp_path / "ref"
    proc = run_tfda("lee", "--config", conf, "--out", str(ref), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "day" in proc.stdout and "error E" in proc.stdout  # the per-day table

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # with progress bars: a cosmetic option that must not change the checkpoint's hash
    child = subprocess.Popen([*tfda_command(), "lee", "--config", conf, "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 240
    staged = rundir.staging_dir(out) / "checkpoints"  # the run is staged beside --out
    # the wall-time file is written just after the checkpoint: wait for both
    while not (list(staged.glob("cycle-*.pt")) and list(staged.glob("wall-*.json"))):
        assert child.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not out.exists()  # nothing appears in --out before the run is complete
    ckpt = next(staged.glob("cycle-*.pt"))
    assert ckpt.stat().st_mode & 0o777 == 0o666 & ~_umask()
    first_attempt = json.loads(next(staged.glob("wall-*.json")).read_text())

    proc = run_tfda("lee", "--config", conf, "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert f"resuming from {ckpt}" in proc.stdout  # same hash despite --no-progress
    assert (out / "COMPLETE").is_file() and not (out / "checkpoints").exists()
    assert not rundir.staging_dir(out).exists()
    a, b = _outputs(ref), _outputs(out)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    m_ref = json.loads((ref / "metrics.json").read_text())
    m_out = json.loads((out / "metrics.json").read_text())
    assert m_ref["lead_days"] == m_out["lead_days"] and m_ref["cycle"] == m_out["cycle"]
    # the resumed run counts the killed attempt's time (up to its checkpoint) too
    assert m_out["wall_seconds"] > first_attempt["seconds"] > 0
    for p in out.iterdir():
        assert p.stat().st_mode & 0o777 == 0o666 & ~_umask(), p


def test_a_failed_run_leaves_out_alone_and_clears_stale_staged_outputs(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    cfg = lee.LeeConfig.from_dict(TINY_ANALOGUE)
    with pytest.raises(UserError, match="not a tfda run directory"):
        lee.run(cfg, out)  # the user's directory: refused without --force
    staging = rundir.staging_dir(out)
    staging.mkdir()
    (staging / rundir.MARKER).write_text('{"command": "tfda lee"}')
    for name in ("metrics.json", "tracks.nc"):  # a killed attempt's debris
        (staging / name).write_text("old")
    (staging / "checkpoints").mkdir()
    (staging / "checkpoints" / "cycle-0123456789abcdef.pt").write_text("another configuration")

    def killed(*args, **kwargs):
        raise RuntimeError("killed mid-run")

    monkeypatch.setattr(lee.study, "forecast_tracks", killed)
    with pytest.raises(RuntimeError):
        lee.run(cfg, out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # --out untouched
    left = sorted(p.name for p in staging.iterdir())
    assert left == [rundir.MARKER, "checkpoints", "config.json"], left
    assert json.loads((staging / "config.json").read_text())["members"] == cfg.members
    assert [p.name for p in (staging / "checkpoints").iterdir()
            if p.name.startswith("cycle-")] == [f"cycle-{cfg.fingerprint()}.pt"]


def test_progress_is_not_part_of_the_fingerprint():
    a = lee.LeeConfig.from_dict({**TINY_ANALOGUE, "progress": True})
    b = lee.LeeConfig.from_dict({**TINY_ANALOGUE, "progress": False})
    c = lee.LeeConfig.from_dict({**TINY_ANALOGUE, "progress": False, "seed": 7})
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_plot_tracks_cli_redraws_a_run(tmp_path):
    out = tmp_path / "run"
    conf = _toml(tmp_path / "c.toml", TINY_ANALOGUE)
    assert lee.main(["--config", conf, "--out", str(out)]) == 0
    (out / "tracks.png").unlink()
    proc = run_tfda("plot-tracks", str(out), "--quantile", "0.5")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert (out / "tracks.png").stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_era5_is_checked_before_any_network_is_built(tmp_path, monkeypatch, capsys):
    from tfda import models
    era5, weights, cfg = _era5_setup(tmp_path)
    bad = _nan_era5(era5, datetime(2023, 9, 8, 18), "u850")

    def no_network(*args, **kwargs):
        raise AssertionError("the network was built before the data were checked")

    monkeypatch.setattr(models, "load", no_network)
    out = tmp_path / "run"
    rc = lee.main(["--era5", str(bad), "--weights", str(weights), "--out", str(out),
                   "--config", _toml(tmp_path / "c.toml", cfg)])
    assert rc == 2 and "u850 has NaN/Inf values at 2023-09-08T18:00" in capsys.readouterr().err
    assert not out.exists()
