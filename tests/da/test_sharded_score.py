"""The sharded score equals the single-process one, in real processes.

Each launch starts 4 processes that check P = 1, 2, 3, 4 shards of d = 1045
features (not divisible by 2, 3 or 4) on the groups of their first P ranks:
the score alone, full Heun ODE runs and full SDE runs (counter-based noise) with
a fixed seed, in float32 (1e-6 relative) and float64 (1e-12), the localised
kernel EnSF analysis with the state sharded (float64, 1e-12), the N x M logit
payload of every all_reduce, and scatter/gather at the edges; the LETKF and the
kernel EnSF given the process group (a slab of the local domains per rank, only the
halo of observations received: da.filters.halo) on a ring and on a lat/lon grid.
The same launch then builds the 2 x 2 rank grid of da.distributed and checks that
distributed, sharded Parareal equals the serial single-process fine solve.
See _mp_sharded_checks.py.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TOL = {"float32": 1e-6, "float64": 1e-12}
N_POINTS, N_PRIOR, N_STEPS = 12, 10, 16
ITEMSIZE = {"float32": 4, "float64": 8}


def _assert_all(report: dict) -> None:
    results = report["results"]
    assert sorted(results) == ["1", "2", "3", "4"]
    for p, r in results.items():
        assert r["world_size"] == int(p) and sum(r["shard_sizes"]) == r["d"] == 1045
        assert max(r["shard_sizes"]) - min(r["shard_sizes"]) == (0 if p == "1" else 1)
        for name, tol in TOL.items():
            for key in ("score", "ode", "sde_mixture", "sde_paired", "gather_dev"):
                assert r[f"{key}_{name}"] <= tol, (p, key, name, r[f"{key}_{name}"])
            assert r[f"sde_paired_{name}"] == 0.0  # elementwise: no reduction, bit-exact
            assert r[f"scatter_exact_{name}"] is True
            # Heun: two score evaluations a step, one all_reduce of N x M logits each
            assert r[f"ode_calls_{name}"] == 2 * N_STEPS
            assert r[f"ode_payload_{name}"] == 2 * N_STEPS * N_POINTS * N_PRIOR * ITEMSIZE[name]
        # the sharded kernel EnSF analysis: shards == the single-process components
        assert r["kernel_float64"] <= 1e-12, (p, r["kernel_float64"])
        # filters given the group: slabs with their halos == one process (da.filters.halo)
        for key in ("letkf_ring", "kernel_ring", "letkf_grid", "kernel_grid"):
            assert r[key] <= 1e-12, (p, key, r[key])
        assert r["halo_values"] == 0.0 and r["halo_bytes_ok"] == 1.0, p
    grid = report["grid"]
    assert grid["grid"] == [2, 2]
    assert "not a multiple of shard_size = 3" in grid["grid_errors"][0]
    assert "exceeds state_size = 1" in grid["grid_errors"][1]
    for name, tol in TOL.items():
        assert grid[f"parareal_{name}"] <= tol
        assert grid[f"parareal_iterations_{name}"] == 2


@pytest.mark.multiprocess
@pytest.mark.slow
def test_sharded_equals_single_process_under_torch_multiprocessing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.multiprocessing as mp

    monkeypatch.syspath_prepend(str(HERE))  # the spawned children import the worker too
    checks = importlib.import_module("_mp_sharded_checks")
    out = tmp_path / "out.json"
    mp.spawn(checks.spawn_worker, args=(4, str(tmp_path / "init"), str(out)), nprocs=4)
    report = json.loads(out.read_text())
    assert report["launcher"] == "torch.multiprocessing"
    _assert_all(report)


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun (mpich wheel) not on PATH")
def test_sharded_equals_single_process_under_mpirun(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run(
        ["mpirun", "-n", "4", sys.executable, str(HERE / "_mp_sharded_checks.py"), str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["launcher"] == "mpi"
    _assert_all(report)


def test_grid_that_does_not_fit_fails_at_set_up() -> None:
    from tfda.da.distributed import make_grid

    with pytest.raises(ValueError, match="world_size = 6 is not a multiple of shard_size = 4"):
        make_grid(shard_size=4, rank=0, world_size=6)
    with pytest.raises(ValueError, match="shard_size = 8 exceeds state_size = 5"):
        make_grid(shard_size=8, state_size=5, rank=0, world_size=8)
    grid = make_grid(shard_size=1, state_size=5, rank=0, world_size=1)
    assert (grid.n_slices, grid.shard_size, grid.shard_group) == (1, 1, None)


def test_layout_agrees_with_the_rank_grid_shard_range() -> None:
    from tfda.da.distributed import shard_range
    from tfda.da.sharding import ShardLayout

    for size, parts in ((1045, 4), (10, 3), (7, 7), (65537, 2)):
        layout = ShardLayout(size, parts)
        assert [layout.slice(i) for i in range(parts)] == [
            shard_range(size, parts, i) for i in range(parts)
        ]
