"""Launch tests/da/_mp_parareal_worker.py on several real processes (mpirun or spawn)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

WORKER = Path(__file__).with_name("_mp_parareal_worker.py")
ROOT = Path(__file__).resolve().parents[2]
MPIRUN = shutil.which("mpirun")
sys.path.insert(0, str(WORKER.parent))
NO_MPIRUN = "mpirun is not on PATH (install the optional extra: pip install mpich)"


def run_mpirun(case: str, out: Path, n: int = 4, timeout: float = 240.0) -> None:
    """``mpirun -n n python worker case out``; fails the test on a non-zero exit."""
    assert MPIRUN is not None, NO_MPIRUN
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([MPIRUN, "-n", str(n), sys.executable, str(WORKER), case, str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"mpirun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def start_spawn(case: str, out: Path, n: int = 4) -> list:
    """Start n spawned processes with torchrun's variables; returns the Process objects."""
    from _mp_parareal_worker import spawn_entry

    from tfda.da.distributed import _free_port

    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=spawn_entry, args=(r, n, port, case, str(out)), daemon=True)
             for r in range(n)]
    for p in procs:
        p.start()
    return procs


def run_spawn(case: str, out: Path, n: int = 4, timeout: float = 240.0) -> None:
    procs = start_spawn(case, out, n)
    for p in procs:
        p.join(timeout)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.exitcode is None:
            p.terminate()
    assert codes == [0] * n, f"spawned ranks exited with {codes}"


def load_pt(out: Path, rank: int) -> dict:
    return torch.load(out / f"rank{rank}.pt", weights_only=False)


def load_json(out: Path, rank: int) -> dict:
    return json.loads((out / f"rank{rank}.json").read_text())
