"""tfda.da.distributed: launcher detection, the rank grid, and failure of a dead or stalled rank."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tfda.da import distributed

sys.path.insert(0, str(Path(__file__).parent))
import _launch  # noqa: E402

TORCHRUN_ENV = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h"}


def test_single_process_needs_no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE",
              "PMIX_RANK", "HYDI_CONTROL_FD", "MPI_LOCALNRANKS", "ALPS_APP_PE", "SLURM_PROCID"):
        monkeypatch.delenv(k, raising=False)
    ctx = distributed.init(device="cpu")
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.launcher) == (0, 1, 0, "single")
    assert ctx.backend == "gloo" and ctx.device == torch.device("cpu")
    assert not dist.is_initialized()
    distributed.shutdown()  # a no-op without a process group


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (TORCHRUN_ENV, "torchrun"),
        ({"PMI_RANK": "0", "PMI_SIZE": "4"}, "mpi"),
        ({"OMPI_COMM_WORLD_SIZE": "2"}, "mpi"),
        ({"SLURM_PROCID": "1", "SLURM_NTASKS": "8", "SLURM_STEP_ID": "0"}, "slurm"),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_STEP_ID": "0"}, "single"),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, "single"),  # batch shell, not a step
        ({}, "single"),
    ],
)
def test_detect_launcher(env: dict[str, str], expected: str) -> None:
    assert distributed.detect_launcher(env) == expected


def test_first_host_of_slurm_nodelist() -> None:
    assert distributed.first_host("frontier[00012-00015,00020],login1") == "frontier00012"
    assert distributed.first_host("nid001,nid002") == "nid001"
    assert distributed.first_host("gpu7") == "gpu7"
    with pytest.raises(ValueError, match="SLURM_JOB_NODELIST"):
        distributed.first_host("")


def test_bad_init_arguments() -> None:
    import datetime

    with pytest.raises(ValueError, match="timeout"):
        distributed.init(timeout=datetime.timedelta(seconds=0))
    with pytest.raises(ValueError, match="launcher"):
        distributed.init(launcher="pbs")


def test_grid_layout_without_process_group() -> None:
    cells = [distributed.make_grid(shard_size=2, rank=r, world_size=6) for r in range(6)]
    for r, g in enumerate(cells):
        assert g.n_slices == 3 and g.rank == r
        assert (g.slice_index, g.shard_index) == divmod(r, 2)
        assert r in g.slice_ranks and r in g.shard_ranks
        assert g.slice_group is None and g.shard_group is None
    assert cells[3].slice_ranks == (1, 3, 5) and cells[3].shard_ranks == (2, 3)
    one = distributed.make_grid(shard_size=1)
    assert (one.n_slices, one.slice_index, one.shard_index) == (1, 0, 0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shard_size": 4, "world_size": 6, "rank": 0}, "not a multiple of shard_size"),
        ({"shard_size": 2, "n_slices": 4, "world_size": 6, "rank": 0}, "differs from world_size"),
        ({"shard_size": 2, "world_size": 4, "rank": 0, "state_size": 1}, "exceeds state_size"),
        ({"shard_size": 0, "world_size": 4, "rank": 0}, "shard_size"),
        ({"shard_size": 2, "world_size": 4, "rank": 4}, "rank 4"),
    ],
)
def test_grid_rejects_bad_layouts(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        distributed.make_grid(**kwargs)


def test_shard_range_covers_every_feature_once() -> None:
    pieces = [distributed.shard_range(10, 3, i) for i in range(3)]
    assert [(p.start, p.stop) for p in pieces] == [(0, 4), (4, 7), (7, 10)]
    with pytest.raises(ValueError):
        distributed.shard_range(2, 3, 0)


@pytest.mark.multiprocess
@pytest.mark.skipif(_launch.MPIRUN is None, reason=_launch.NO_MPIRUN)
def test_init_under_mpirun(tmp_path) -> None:
    _launch.run_mpirun("context", tmp_path)
    infos = [_launch.load_json(tmp_path, r) for r in range(4)]
    assert [i["rank"] for i in infos] == [0, 1, 2, 3]
    assert all(i["launcher"] == "mpi" and i["world_size"] == 4 for i in infos)
    assert all(i["backend"] == "gloo" and i["device"] == "cpu" for i in infos)
    assert sorted(i["local_rank"] for i in infos) == [0, 1, 2, 3]  # one node
    # 2 slices x 2 shards: rank = slice * 2 + shard; shard_group sums the ranks of one slice.
    assert [(i["slice_index"], i["shard_index"]) for i in infos] == [(0, 0), (0, 1), (1, 0),
                                                                       (1, 1)]
    assert [i["shard_sum"] for i in infos] == [1.0, 1.0, 5.0, 5.0]
    assert infos[1]["slice_ranks"] == [1, 3] and infos[2]["shard_ranks"] == [2, 3]


def _survivors_fail(tmp_path, case: str) -> None:
    from _mp_parareal_worker import KILL_TIMEOUT_S

    procs = _launch.start_spawn(case, tmp_path)
    start = time.monotonic()
    try:
        for r in (0, 1, 3):
            procs[r].join(KILL_TIMEOUT_S * 6)
    finally:
        for p in procs:  # the stalled rank 2 is ours to end
            if p.is_alive():
                p.terminate()
    assert time.monotonic() - start < KILL_TIMEOUT_S * 6
    for r in (0, 1, 3):
        info = _launch.load_json(tmp_path, r)
        assert info["status"] == "raised", info
        assert info["elapsed"] < KILL_TIMEOUT_S + 5.0, info
        assert "RuntimeError" in info["message"]


@pytest.mark.multiprocess
def test_dead_rank_makes_the_others_raise(tmp_path) -> None:
    _survivors_fail(tmp_path, "kill")


@pytest.mark.multiprocess
@pytest.mark.slow
def test_stalled_rank_makes_the_others_raise_within_the_timeout(tmp_path) -> None:
    _survivors_fail(tmp_path, "hang")
    # the first survivor to time out exits and closes its connections, so the others may
    # see that closure before their own timeout: gloo's cascade, still within the timeout
    messages = [_launch.load_json(tmp_path, r)["message"] for r in (0, 1, 3)]
    assert any("Timed out" in m for m in messages), messages
    assert all("Timed out" in m or "Connection closed by peer" in m for m in messages), messages
