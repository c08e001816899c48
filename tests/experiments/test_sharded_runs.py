"""``tfda cycle`` and ``tfda lee`` launched on several processes (mpirun from the mpich
wheel) shard their localised analyses (da.filters.halo) and give the one-process run's
numbers; only rank 0 writes the run directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from test_lee import TINY_ANALOGUE, _toml  # the tiny analogue setting of the Lee tests

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("mpirun") is None,
                                 reason="mpirun (mpich wheel) not on PATH")]

L96 = """
[model]
name = "lorenz96"
options = {{ nx = 60 }}
[truth]
spin_up_steps = 200
[ensemble]
members = 10
spread = 1.0
[observations]
operator = "every"
stride = 2
std = 1.0
[filter]
name = "{name}"
options = {{ radius = 4.0, inflation = 1.05 {extra} }}
[cycle]
n_cycles = 6
steps_per_cycle = 2
seed = 3
"""


def _run(cmd: list[str], n: int | None, tmp: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    exe = [shutil.which("tfda") or "tfda"]
    full = exe + cmd if n is None else ["mpirun", "-n", str(n), *exe, *cmd]
    proc = subprocess.run(full, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_cycle_on_three_processes_equals_one(tmp_path):
    """(the LETKF's slabs are checked at the da level, tests/da/test_sharded_score.py)"""
    cfg = tmp_path / "l96.toml"
    cfg.write_text(L96.format(name="ensf", extra=", steps = 4, bandwidth = 0.9"))
    _run(["cycle", str(cfg), "--out", "one", "--no-progress"], None, tmp_path)
    _run(["cycle", str(cfg), "--out", "three", "--no-progress"], 3, tmp_path)
    with xr.open_dataset(tmp_path / "one" / "cycle.nc") as a, \
            xr.open_dataset(tmp_path / "three" / "cycle.nc") as b:
        ref = a["ensemble"].values
        assert np.abs(b["ensemble"].values - ref).max() <= 1e-10 * np.abs(ref).max()
        for metric in ("rmse_a", "spread_a", "rmse_f"):
            np.testing.assert_allclose(b[metric].values, a[metric].values, rtol=1e-10)
    assert (tmp_path / "three" / "COMPLETE").is_file()
    assert sorted(p.name for p in (tmp_path / "three").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir())


def test_lee_on_two_processes_equals_one(tmp_path):
    cfg = _toml(tmp_path / "c.toml", {**TINY_ANALOGUE, "ensf_steps": 4})
    _run(["lee", "--config", cfg, "--out", "one"], None, tmp_path)
    _run(["lee", "--config", cfg, "--out", "two"], 2, tmp_path)
    with xr.open_dataset(tmp_path / "one" / "analyses.nc") as a, \
            xr.open_dataset(tmp_path / "two" / "analyses.nc") as b:
        ref = a["ensf"].values  # the Lee study runs in float32: its round-off, per variable
        scale = np.abs(ref).max(axis=(0, 2, 3), keepdims=True)
        assert (np.abs(b["ensf"].values - ref) / scale).max() <= 1e-6
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())["lead_days"]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())["lead_days"]
    for r1, r2 in zip(one, two, strict=True):
        assert r1["ensf_mean_error_km"] == pytest.approx(r2["ensf_mean_error_km"], rel=1e-5)
    assert (tmp_path / "two" / "COMPLETE").is_file()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
