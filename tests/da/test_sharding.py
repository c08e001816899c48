"""Shard utilities, counter-based noise and communication accounting (in one process)."""

from __future__ import annotations

import math

import pytest
import torch

from tfda.da.sampler import sample_sde, time_grid
from tfda.da.schedule import Schedule
from tfda.da.score import mixture_score, paired_score
from tfda.da.sharding import (
    BlockNoise,
    CountingComm,
    ShardLayout,
    algorithm2_bytes,
    derive_seed,
    flatten_features,
    gather_features,
    local_shard,
    merge_features,
    scatter_features,
    sharded_score,
    split_features,
)

SCHEDULE = Schedule(eps_a=1e-3, eps_b=1e-3)


@pytest.mark.parametrize("size", [1, 7, 1045, 65537])
@pytest.mark.parametrize("n_shards", [1, 2, 3, 4, 7])
def test_layout_is_contiguous_balanced_and_complete(size: int, n_shards: int) -> None:
    if n_shards > size:
        with pytest.raises(ValueError, match="must not exceed the state size"):
            ShardLayout(size, n_shards)
        return
    layout = ShardLayout(size, n_shards)
    assert sum(layout.sizes) == size
    assert max(layout.sizes) - min(layout.sizes) <= 1
    covered = torch.cat([torch.arange(size)[layout.slice(i)] for i in range(n_shards)])
    assert torch.equal(covered, torch.arange(size))  # contiguous, in order, no overlap


def test_layout_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_shards"):
        ShardLayout(10, 0)
    with pytest.raises(ValueError, match="shard index"):
        ShardLayout(10, 3).slice(3)


def test_split_and_merge_a_state_and_a_flat_vector() -> None:
    x = torch.randn(3, 5, 11, 19, dtype=torch.float64)  # (member, variable, lat, lon)
    shards = split_features(x, 4)
    assert [s.shape for s in shards] == [(3, 262), (3, 261), (3, 261), (3, 261)]
    assert torch.equal(merge_features(shards, (5, 11, 19)), x)
    for i, s in enumerate(shards):
        assert torch.equal(local_shard(x, 4, i), s)
    v = torch.arange(10.0)
    assert [s.tolist() for s in split_features(v, 3)] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert torch.equal(merge_features(split_features(v, 3)), v)
    assert flatten_features(x).shape == (3, 5 * 11 * 19)
    with pytest.raises(ValueError, match="feature_shape"):
        merge_features(shards, (5, 11, 20))
    with pytest.raises(ValueError, match="cannot split 10 features into 11 shards"):
        split_features(v, 11)


def test_single_process_scatter_and_gather_are_identities() -> None:
    x = torch.randn(2, 3, 4)
    local = scatter_features(x, group=None)
    assert torch.equal(local, x.reshape(2, 12))
    back = gather_features(local, group=None, feature_shape=(3, 4))
    assert back is not None and torch.equal(back, x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_shards", [2, 3, 4])
def test_block_noise_shards_equal_the_full_draw(dtype: torch.dtype, n_shards: int) -> None:
    z = torch.zeros(6, 5, 11, 19, dtype=dtype)  # d = 1045 over blocks of 100
    layout = ShardLayout(1045, n_shards)
    full = BlockNoise(3, block=100)(5, z).reshape(6, -1)
    parts = [
        BlockNoise(3, offset=layout.offsets[i], block=100)(5, local_shard(z, n_shards, i))
        for i in range(n_shards)
    ]
    assert torch.equal(torch.cat(parts, dim=-1), full)
    assert full.dtype == dtype


def test_block_noise_is_standard_normal_and_fresh_per_step_and_seed() -> None:
    z = torch.zeros(64, 4096, dtype=torch.float64)
    a = BlockNoise(11, block=1000)(0, z)
    assert abs(float(a.mean())) < 4 / math.sqrt(a.numel())
    assert abs(float(a.std()) - 1.0) < 0.01
    # blocks must not repeat: neighbouring blocks and rows are uncorrelated
    assert abs(float((a[:, :1000] * a[:, 1000:2000]).mean())) < 4 / math.sqrt(64_000)
    assert not torch.equal(a, BlockNoise(11, block=1000)(1, z))
    assert not torch.equal(a, BlockNoise(12, block=1000)(0, z))
    assert torch.equal(a, BlockNoise(11, block=1000)(0, z))
    assert len({derive_seed(s, k, b) for s in range(4) for k in range(4) for b in range(4)}) == 64
    with pytest.raises(ValueError, match="block"):
        BlockNoise(0, block=0)


def test_counting_comm_counts_n_times_m_logits_per_evaluation() -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(7, 300, generator=g)
    z = torch.randn(5, 300, generator=g)
    comm = CountingComm(None)
    s = mixture_score(z, x0, 0.3, SCHEDULE, group=comm)
    assert torch.equal(s, mixture_score(z, x0, 0.3, SCHEDULE))
    mixture_score(z, x0, 0.6, SCHEDULE, group=comm)
    assert comm.calls == 2 and comm.payload_bytes == 2 * 5 * 7 * 4
    assert comm.ring_wire_bytes() == 0.0  # one process sends nothing
    comm.reset()
    assert comm.calls == 0 and comm.payload_bytes == 0


def test_algorithm2_bytes_counts_scattered_and_gathered_chunks() -> None:
    # rank 0 keeps 334 of d = 1000 on 3 ranks; sends z and X chunks, gathers the score
    assert algorithm2_bytes(n=20, m=20, d=1000, n_ranks=3) == (20 + 20 + 20) * 666 * 4
    assert algorithm2_bytes(n=20, m=20, d=1000, n_ranks=1) == 0


def test_sharded_score_shares_the_estimator_path() -> None:
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 50, generator=g, dtype=torch.float64)
    z = torch.randn(4, 50, generator=g, dtype=torch.float64)
    assert torch.equal(sharded_score(x0, group=None, schedule=SCHEDULE)(z, 0.4),
                       mixture_score(z, x0, 0.4, SCHEDULE))
    paired = sharded_score(x0, group=None, estimator="paired", schedule=SCHEDULE)
    assert torch.equal(paired(z, 0.4), paired_score(z, x0, 0.4, SCHEDULE))
    # the paired score is elementwise: its shard is the score of the shard
    shard = sharded_score(x0[:, 10:30], group=None, estimator="paired", schedule=SCHEDULE)
    assert torch.equal(shard(z[:, 10:30], 0.4), paired_score(z, x0, 0.4, SCHEDULE)[:, 10:30])
    with pytest.raises(ValueError, match="estimator"):
        sharded_score(x0, group=None, estimator="attention")  # type: ignore[arg-type]


def test_sde_with_block_noise_matches_the_noise_it_was_given() -> None:
    # the sampler must consume BlockNoise as xi: rebuild one Euler-Maruyama step by hand
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(6, 40, generator=g, dtype=torch.float64)
    z = torch.randn(6, 40, generator=g, dtype=torch.float64)
    grid = time_grid(1, t_start=0.9, t_end=0.8)
    noise = BlockNoise(5, block=16)
    out = sample_sde(sharded_score(x0, group=None, schedule=SCHEDULE), z, grid, SCHEDULE,
                     noise=noise, progress=False)
    t, dt = 0.9, 0.9 - float(grid[1])
    drift = SCHEDULE.drift(t) * z - SCHEDULE.diffusion2(t) * mixture_score(z, x0, t, SCHEDULE)
    expected = z - drift * dt + math.sqrt(SCHEDULE.diffusion2(t) * dt) * noise(0, z)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
