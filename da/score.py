"""Training-free score estimators (Rafid et al., Eq. 8).

For prior samples x_1..x_M and points z_1..z_N the Monte Carlo estimate of the
score of the diffused density Q(z, t) = (1/M) sum_j N(z; alpha_t x_j, beta_t^2 I) is

    S(z_i, t) = -(z_i - alpha_t sum_j w_ij x_j) / beta_t^2,
    w_ij      = softmax_j( -|z_i - alpha_t x_j|^2 / (2 beta_t^2) ).

The |z_i|^2 part of the exponent is constant in j, so the weights are a softmax of
``(alpha/beta^2) <z_i, x_j> - (alpha^2 / (2 beta^2)) |x_j|^2``: attention, two
matrix products and O((N + M) d) memory instead of the N x M x d tensor of the
paper's Algorithm 2 (which also drops the weights). The logits are invariant under
translating every x_j by mu and z_i by alpha mu, so both are centred on the prior
mean first; that keeps float32 accurate when d is 1e6-1e7 and the members differ
by a small fraction of their norm.

Shapes: ``z`` is (*batch, N, *features), ``x0`` is (*batch, M, *features), with
``batch_dims`` leading batch dimensions shared by both (a stack of independent
prior sets). ``t`` is a float, a tensor shaped like the batch (one time per prior
set) or like (*batch, N) (one time per row, as in batched Parareal).

Sharding (DESIGN.md, "Sharded score"): pass the local shard of the features of z
and x0 and the process group holding the other shards; the N x M logits are summed
with one all_reduce and nothing of size d leaves the rank.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.distributed as dist

from da._checks import check_finite, check_times
from da.devices import randperm
from da.schedule import Schedule

DEFAULT_SCHEDULE = Schedule()
# 65536 features a chunk: a few MB per member in float32, and measured faster than one
# big product on CPU (experiments/bench_score.py); None means a single chunk.
DEFAULT_CHUNK = 65536


def _split_shapes(
    z: torch.Tensor, x0: torch.Tensor, batch_dims: int, paired: bool
) -> tuple[tuple[int, ...], int, int, int]:
    """Validate shapes; return (batch shape, N, M, flattened feature size)."""
    if batch_dims < 0:
        raise ValueError(f"batch_dims must be >= 0, got {batch_dims}")
    if z.ndim < batch_dims + 1 or x0.ndim < batch_dims + 1:
        raise ValueError(
            f"z (shape {tuple(z.shape)}) and x0 (shape {tuple(x0.shape)}) need "
            f"{batch_dims} batch dimension(s) and a member dimension"
        )
    batch = tuple(z.shape[:batch_dims])
    if tuple(x0.shape[:batch_dims]) != batch:
        raise ValueError(
            f"x0 batch shape {tuple(x0.shape[:batch_dims])} differs from z batch shape {batch}"
        )
    n, m = z.shape[batch_dims], x0.shape[batch_dims]
    if m == 0:
        raise ValueError("x0 is an empty prior: it holds no samples")
    if n == 0:
        raise ValueError("z holds no points")
    fz, fx = tuple(z.shape[batch_dims + 1 :]), tuple(x0.shape[batch_dims + 1 :])
    if fz != fx:
        raise ValueError(f"feature shape of x0 {fx} differs from that of z {fz}")
    if paired and n != m:
        raise ValueError(f"paired_score needs as many points as prior samples: z has {n}, x0 {m}")
    if z.dtype != x0.dtype:
        raise ValueError(f"x0 has dtype {x0.dtype} but z has {z.dtype}")
    return batch, n, m, math.prod(fz)


def _time_coefficients(
    t: float | torch.Tensor, schedule: Schedule, batch: tuple[int, ...], n: int, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_t and beta_t^2 shaped (*batch, N, 1), broadcasting against (*batch, N, d)."""
    tt = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if tt.ndim == 0:
        tt = tt.expand(*batch, n)
    elif batch and tuple(tt.shape) == batch:
        tt = tt.unsqueeze(-1).expand(*batch, n)
    elif tuple(tt.shape) != (*batch, n):
        raise ValueError(
            f"t must be a scalar, shaped like the batch {batch} or like (*batch, N) = "
            f"{(*batch, n)}; got shape {tuple(tt.shape)}"
        )
    return schedule.alpha(tt).unsqueeze(-1), schedule.beta2(tt).unsqueeze(-1)


class AllReduceSum(Protocol):
    """A communicator that sums a tensor in place over the ranks holding the shards."""

    def all_reduce_sum(self, tensor: torch.Tensor) -> None: ...


def _all_reduce_sum(tensor: torch.Tensor, group: dist.ProcessGroup | AllReduceSum) -> None:
    reduce = getattr(group, "all_reduce_sum", None)
    if reduce is not None:
        reduce(tensor)
    else:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)


def _chunks(d: int, chunk_size: int | None) -> list[slice]:
    if chunk_size is None:
        return [slice(0, d)]
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive number of features, got {chunk_size}")
    return [slice(s, min(s + chunk_size, d)) for s in range(0, d, chunk_size)]


def _check_finite_chunked(name: str, x: torch.Tensor, slices: list[slice]) -> None:
    """:func:`da._checks.check_finite` a feature chunk at a time.

    torch.isfinite on the whole of x holds temporaries larger than x itself; chunk by
    chunk the check keeps the score's extra memory at O((N + M) chunk_size).
    """
    if all(bool(torch.isfinite(x[:, s]).all()) for s in slices):
        return
    check_finite(name, x)  # the error path: count every bad value for the message


def mixture_score(
    z: torch.Tensor,
    x0: torch.Tensor,
    t: float | torch.Tensor,
    schedule: Schedule = DEFAULT_SCHEDULE,
    *,
    batch_dims: int = 0,
    chunk_size: int | None = DEFAULT_CHUNK,
    minibatch: int | None = None,
    generator: torch.Generator | None = None,
    centre: bool = True,
    group: dist.ProcessGroup | AllReduceSum | None = None,
    check_inputs: bool = True,
) -> torch.Tensor:
    """Softmax-weighted Monte Carlo score of Eq. (8), as two matrix products.

    Args:
        z: points (*batch, N, *features) at which the score is wanted.
        x0: prior samples (*batch, M, *features) (the forecast ensemble).
        t: diffusion time(s) in (0, 1]; see the module docstring for shapes.
        schedule: the alpha/beta schedule of Eq. (5).
        batch_dims: number of leading batch dimensions of ``z`` and ``x0``.
        chunk_size: features per chunk; the extra memory beyond the output is then
            O((N + M) chunk_size + N M) instead of O((N + M) d). None: one chunk.
        minibatch: use a random subset of this many prior samples (same subset
            for every row and batch); draws from ``generator``. Under sharding every
            rank must pass an identically seeded generator.
        generator: random source for ``minibatch``.
        centre: subtract the prior mean before the products (keep True; False
            exists to show what centring buys in float32).
        group: process group holding the other feature shards, or a communicator
            with an ``all_reduce_sum(tensor)`` method (e.g. the byte-counting
            :class:`da.sharding.CountingComm`); None = one process.
        check_inputs: check for NaN/Inf and times outside (0, 1]; a hot loop that
            has already checked its inputs may switch this off.

    Returns:
        The score, shaped and typed like ``z``.
    """
    batch, n, m, d_local = _split_shapes(z, x0, batch_dims, paired=False)
    slices = _chunks(d_local, chunk_size)
    if check_inputs:
        _check_finite_chunked("z", z.reshape(-1, d_local), slices)
        _check_finite_chunked("x0", x0.reshape(-1, d_local), slices)
        check_times("t", t)
    if minibatch is not None:
        if not 0 < minibatch <= m:
            raise ValueError(f"minibatch must lie in [1, M={m}], got {minibatch}")
        idx = randperm(m, generator=generator, device=x0.device)[:minibatch]
        x0 = x0.index_select(batch_dims, idx)
        m = minibatch

    zf = z.reshape(-1, n, d_local)
    xf = x0.reshape(-1, m, d_local)
    alpha, beta2 = _time_coefficients(t, schedule, batch, n, z)
    alpha, beta2 = alpha.reshape(-1, n, 1), beta2.reshape(-1, n, 1)

    def centred(s: slice) -> tuple[torch.Tensor, torch.Tensor]:
        xs, zs = xf[..., s], zf[..., s]
        if not centre:
            return xs, zs
        mu = xs.mean(dim=1, keepdim=True)
        return xs - mu, zs - alpha * mu

    # Logits accumulate in float64 across chunks: N x M numbers, so this is free,
    # and it keeps the chunked sum as accurate as one long product.
    acc = torch.float64 if z.dtype in (torch.float32, torch.float64) else z.dtype
    cross = torch.zeros(zf.shape[0], n, m, dtype=acc, device=z.device)
    norms = torch.zeros(zf.shape[0], 1, m, dtype=acc, device=z.device)
    for s in slices:
        xc, zc = centred(s)
        cross += (zc @ xc.transpose(-1, -2)).to(acc)
        norms += xc.square().sum(dim=-1).unsqueeze(1).to(acc)
    partial = (alpha / beta2).to(acc) * cross - (alpha.square() / (2 * beta2)).to(acc) * norms
    # The all_reduce payload is N x M numbers in z's dtype (the only traffic of a
    # sharded evaluation); the single-process path rounds the same way so that
    # sharded and unsharded runs agree to summation order.
    partial = partial.to(z.dtype)
    if group is not None:
        _all_reduce_sum(partial, group)
    weights = torch.softmax(partial, dim=-1)

    # The output pass centres each chunk again instead of keeping the centred copies:
    # keeping them would cost O((N + M) d) memory. The mean cancels in exact arithmetic
    # (the weights sum to one), but centring keeps float32's cancellation small.
    out = torch.empty_like(zf)
    for s in slices:
        xc, zc = centred(s)
        out[..., s] = -(zc - alpha * (weights @ xc)) / beta2
    return out.reshape(z.shape)


def paired_score(
    z: torch.Tensor,
    x0: torch.Tensor,
    t: float | torch.Tensor,
    schedule: Schedule = DEFAULT_SCHEDULE,
    *,
    batch_dims: int = 0,
    group: dist.ProcessGroup | AllReduceSum | None = None,
    check_inputs: bool = True,
) -> torch.Tensor:
    """One-sample score of the published EnSF code: S(z_i) = -(z_i - alpha_t x_i) / beta_t^2.

    Row i of ``z`` is paired with prior sample i, so N must equal M. The estimate
    is elementwise in the features, so a sharded run needs no communication:
    ``group`` is accepted for a common signature with :func:`mixture_score` and
    unused.
    """
    del group  # elementwise: each rank's shard of the score needs only its own shard
    batch, n, _, _ = _split_shapes(z, x0, batch_dims, paired=True)
    if check_inputs:
        check_finite("z", z)
        check_finite("x0", x0)
        check_times("t", t)
    alpha, beta2 = _time_coefficients(t, schedule, batch, n, z)
    shape = (*batch, n) + (1,) * (z.ndim - batch_dims - 1)
    alpha, beta2 = alpha.reshape(shape), beta2.reshape(shape)
    return -(z - alpha * x0) / beta2
