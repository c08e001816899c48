"""Sharding the state dimension across ranks (Rafid et al., Algorithm 2, corrected).

The seed paper splits the feature axis d of the points Z (N x d) and of the prior
samples X (M x d) over P GPUs, but its Algorithm 2 scatters the chunks from rank 0,
gathers the score back and averages without the softmax weights of Eq. (8). tfda
keeps every rank's shard where it lives (docs/design.md, "Sharded score"): the only
traffic of a score evaluation is one all_reduce of the N x M logits
(:func:`da.score.mixture_score` with ``group=``). This module holds what sits
around that collective:

* :class:`ShardLayout` -- contiguous shards of a flat feature axis, sizes differing
  by at most one; :func:`split_features` / :func:`merge_features` for tensors shaped
  (member, variable, lat, lon) (trailing dimensions flattened) or flat vectors.
* :func:`scatter_features` / :func:`gather_features` -- from / to one rank, for I/O
  at the edges of a run only.
* :class:`BlockNoise` -- counter-based Gaussian noise for the backward SDE: a rank's
  shard of the noise equals the single-process noise restricted to that shard, and
  no rank draws the full vector.
* :class:`CountingComm` -- a communicator that counts the payload of the collectives
  it runs (the bytes-per-evaluation numbers of ``experiments/scaling.py``), and
  :func:`algorithm2_bytes`, the traffic of the paper's scatter/gather scheme.
* :func:`sharded_score` -- the score callable of a rank; the mixture and the paired
  estimators share it, the paired one simply never communicates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist

from tfda.da.schedule import Schedule
from tfda.da.score import DEFAULT_SCHEDULE, AllReduceSum, mixture_score, paired_score

_MASK64 = (1 << 64) - 1

Group = dist.ProcessGroup | AllReduceSum | None


# ----------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class ShardLayout:
    """``size`` features split into ``n_shards`` contiguous shards.

    The first ``size % n_shards`` shards hold one feature more than the others, so
    sizes differ by at most one. A layout with more shards than features is refused:
    a rank would hold nothing, which is a mis-sized rank grid, not a valid run.
    """

    size: int
    n_shards: int

    def __post_init__(self) -> None:
        if self.n_shards < 1:
            raise ValueError(f"n_shards must be >= 1, got {self.n_shards}")
        if self.size < self.n_shards:
            raise ValueError(
                f"cannot split {self.size} features into {self.n_shards} shards: the shard "
                f"count (shard size of the rank grid) must not exceed the state size"
            )

    @property
    def sizes(self) -> tuple[int, ...]:
        base, extra = divmod(self.size, self.n_shards)
        return tuple(base + (i < extra) for i in range(self.n_shards))

    @property
    def offsets(self) -> tuple[int, ...]:
        base, extra = divmod(self.size, self.n_shards)
        return tuple(i * base + min(i, extra) for i in range(self.n_shards))

    def slice(self, index: int) -> slice:
        """Global flat feature range of shard ``index``."""
        if not 0 <= index < self.n_shards:
            raise ValueError(f"shard index must lie in [0, {self.n_shards}), got {index}")
        start = self.offsets[index]
        return slice(start, start + self.sizes[index])


def _start_dim(x: torch.Tensor, start_dim: int | None) -> int:
    if start_dim is None:
        return 1 if x.ndim >= 2 else 0
    if not 0 <= start_dim <= x.ndim - 1:
        raise ValueError(f"start_dim must lie in [0, {x.ndim - 1}] for a {x.ndim}-D tensor, "
                         f"got {start_dim}")
    return start_dim


def flatten_features(x: torch.Tensor, *, start_dim: int | None = None) -> torch.Tensor:
    """View ``x`` as (*lead, d): dimensions from ``start_dim`` on are the feature axis.

    ``start_dim=None`` means 1 (member first) for tensors of 2 or more dimensions and
    0 for flat vectors.
    """
    s = _start_dim(x, start_dim)
    return x.reshape(*x.shape[:s], math.prod(x.shape[s:]))


def split_features(
    x: torch.Tensor, n_shards: int, *, start_dim: int | None = None
) -> list[torch.Tensor]:
    """Contiguous shards (*lead, d_i) of the flattened features of ``x`` (views)."""
    flat = flatten_features(x, start_dim=start_dim)
    layout = ShardLayout(flat.shape[-1], n_shards)
    return list(torch.split(flat, list(layout.sizes), dim=-1))


def local_shard(
    x: torch.Tensor, n_shards: int, index: int, *, start_dim: int | None = None
) -> torch.Tensor:
    """Shard ``index`` of :func:`split_features` alone (a view, nothing else is copied)."""
    flat = flatten_features(x, start_dim=start_dim)
    return flat[..., ShardLayout(flat.shape[-1], n_shards).slice(index)]


def merge_features(
    shards: Sequence[torch.Tensor], feature_shape: Sequence[int] | None = None
) -> torch.Tensor:
    """Inverse of :func:`split_features`: concatenate and restore ``feature_shape``."""
    if len(shards) == 0:
        raise ValueError("shards is empty")
    flat = torch.cat(list(shards), dim=-1)
    if feature_shape is None:
        return flat
    if math.prod(feature_shape) != flat.shape[-1]:
        raise ValueError(f"feature_shape {tuple(feature_shape)} holds {math.prod(feature_shape)} "
                         f"features but the shards hold {flat.shape[-1]}")
    return flat.reshape(*flat.shape[:-1], *feature_shape)


# -------------------------------------------------------------- I/O at the edges only
def _rank_size(group: dist.ProcessGroup | None) -> tuple[int, int]:
    if group is None:
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def scatter_features(
    x: torch.Tensor | None,
    *,
    group: dist.ProcessGroup | None,
    src: int = 0,
    start_dim: int | None = None,
) -> torch.Tensor:
    """Send rank ``src``'s full tensor out in :class:`ShardLayout` shards.

    Only for reading a state in at the start of a run: rank ``src`` holds the whole
    ``x``, the others pass None and get their shard (*lead, d_i) back. ``src`` is a
    rank within ``group``.
    """
    rank, size = _rank_size(group)
    if group is None:
        if x is None:
            raise ValueError("x is None but there is no group to receive it from")
        return flatten_features(x, start_dim=start_dim)
    meta: list[object] = [None]
    if rank == src:
        if x is None:
            raise ValueError(f"rank {src} is the scatter source and must pass x")
        flat = flatten_features(x, start_dim=start_dim).contiguous()
        meta = [(tuple(flat.shape), flat.dtype)]
    src_global = dist.get_global_rank(group, src)
    dist.broadcast_object_list(meta, src=src_global, group=group)
    shape, dtype = meta[0]  # type: ignore[misc]
    layout = ShardLayout(shape[-1], size)
    width = max(layout.sizes)
    out = torch.empty(*shape[:-1], width, dtype=dtype)
    pieces = None
    if rank == src:
        # gloo's scatter wants equal-sized buffers: pad every shard to the widest one.
        pieces = [torch.zeros_like(out) for _ in range(size)]
        for i, piece in enumerate(pieces):
            piece[..., : layout.sizes[i]] = flat[..., layout.slice(i)]
    dist.scatter(out, pieces, src=src_global, group=group)
    return out[..., : layout.sizes[rank]].clone()


def gather_features(
    local: torch.Tensor,
    *,
    group: dist.ProcessGroup | None,
    dst: int = 0,
    feature_shape: Sequence[int] | None = None,
) -> torch.Tensor | None:
    """Collect every rank's shard (*lead, d_i) on rank ``dst`` (None elsewhere).

    Only for writing a result out at the end of a run.
    """
    rank, size = _rank_size(group)
    if group is None:
        return merge_features([local], feature_shape)
    widths = [torch.zeros(1, dtype=torch.int64) for _ in range(size)]
    dist.all_gather(widths, torch.tensor([local.shape[-1]], dtype=torch.int64), group=group)
    sizes = [int(w) for w in widths]
    width = max(sizes)
    padded = torch.zeros(*local.shape[:-1], width, dtype=local.dtype)
    padded[..., : local.shape[-1]] = local
    bucket = [torch.empty_like(padded) for _ in range(size)] if rank == dst else None
    dist.gather(padded, bucket, dst=dist.get_global_rank(group, dst), group=group)
    if bucket is None:
        return None
    return merge_features([b[..., :n] for b, n in zip(bucket, sizes, strict=True)],
                          feature_shape)


# ---------------------------------------------------------- reproducible sharded noise
def _splitmix64(x: int) -> int:
    """One SplitMix64 step (Steele, Lea, Flood 2014): a bijective 64-bit mixer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from a tuple of integers (seed, step, block, ...)."""
    h = 0
    for k in keys:
        h = _splitmix64(h ^ (k & _MASK64))
    return h >> 1


@dataclass(frozen=True)
class BlockNoise:
    """Counter-based N(0, I) increments for :func:`da.sampler.sample_sde` (``noise=``).

    The flat feature axis is cut into fixed blocks of ``block`` features; block b of
    step k is drawn from a generator seeded by ``derive_seed(seed, k, b)``, for all
    leading rows (members) at once. A rank holding global features
    [offset, offset + d_local) draws only the blocks that overlap them, so its noise
    is exactly the single-process noise (offset 0, all of d) restricted to its shard,
    however many ranks there are, and no rank ever draws the full vector. The values
    depend on the device type and dtype of ``z``, not on the sharding.
    """

    seed: int
    offset: int = 0
    block: int = 65536
    start_dim: int | None = None

    def __post_init__(self) -> None:
        if self.block < 1:
            raise ValueError(f"block must be a positive number of features, got {self.block}")
        if self.offset < 0:
            raise ValueError(f"offset must be >= 0, got {self.offset}")

    def __call__(self, step: int, z: torch.Tensor) -> torch.Tensor:
        flat = flatten_features(z, start_dim=self.start_dim)
        rows, d_local = math.prod(flat.shape[:-1]), flat.shape[-1]
        out = torch.empty(rows, d_local, dtype=z.dtype, device=z.device)
        lo, hi = self.offset, self.offset + d_local
        # a loop over blocks (d / 65536 of them), never over features or members
        for b in range(lo // self.block, (hi - 1) // self.block + 1):
            gen = torch.Generator(device=z.device)
            gen.manual_seed(derive_seed(self.seed, step, b))
            draw = torch.randn(rows, self.block, generator=gen, dtype=z.dtype, device=z.device)
            a, e = max(lo, b * self.block), min(hi, (b + 1) * self.block)
            out[:, a - lo : e - lo] = draw[:, a - b * self.block : e - b * self.block]
        return out.reshape(z.shape)


# ------------------------------------------------------------- communication accounting
class CountingComm:
    """A process group wrapper that counts the payload of the all_reduces it runs.

    Pass it as ``group=`` to :func:`da.score.mixture_score`. ``payload_bytes`` is the
    size of the tensors handed to the collective (N x M x itemsize per score
    evaluation); :meth:`ring_wire_bytes` is what a ring all_reduce sends per rank,
    2 (P - 1) / P times the payload. ``group=None`` is one process: nothing is sent
    and the payload is still counted, so P = 1 reports the same payload.
    """

    def __init__(self, group: dist.ProcessGroup | None) -> None:
        self.group = group
        self.calls = 0
        self.payload_bytes = 0

    @property
    def size(self) -> int:
        return _rank_size(self.group)[1]

    def all_reduce_sum(self, tensor: torch.Tensor) -> None:
        self.calls += 1
        self.payload_bytes += tensor.numel() * tensor.element_size()
        if self.group is not None and self.size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)

    def ring_wire_bytes(self) -> float:
        p = self.size
        return 2.0 * (p - 1) / p * self.payload_bytes

    def reset(self) -> None:
        self.calls = 0
        self.payload_bytes = 0


def algorithm2_bytes(*, n: int, m: int, d: int, n_ranks: int, itemsize: int = 4) -> int:
    """Bytes rank 0 moves per score evaluation under the paper's Algorithm 2.

    Rank 0 sends every other rank its chunks of Z_t (N x d_i) and Z_0 (M x d_i)
    and gathers the score chunks (N x d_i) back: (2N + M) (d - d_0) itemsize.
    """
    layout = ShardLayout(d, n_ranks)
    return (2 * n + m) * (d - layout.sizes[0]) * itemsize


# ------------------------------------------------------------------ a rank's score
Estimator = Literal["mixture", "paired"]


def sharded_score(
    x0_local: torch.Tensor,
    *,
    group: Group,
    estimator: Estimator = "mixture",
    schedule: Schedule = DEFAULT_SCHEDULE,
    **options: object,
) -> Callable[[torch.Tensor, float | torch.Tensor], torch.Tensor]:
    """``score(z_local, t)`` over this rank's feature shard of the prior ``x0_local``.

    Both estimators go through the same path: the mixture estimator all_reduces its
    N x M logits over ``group``; the paired one (elementwise in the features) needs
    no traffic, so a sharded paired run is the serial one restricted to the shard.
    ``options`` go to the estimator (chunk_size, minibatch, ...).
    """
    if estimator == "mixture":
        fn = mixture_score
    elif estimator == "paired":
        fn = paired_score
    else:
        raise ValueError(f"estimator must be 'mixture' or 'paired', got {estimator!r}")

    def score(z: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        return fn(z, x0_local, t, schedule, group=group, **options)  # type: ignore[arg-type]

    return score
