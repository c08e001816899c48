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

The prior does not change during one analysis: :func:`prepare_prior` takes its
mean, its squared norms and the chunking once, and :func:`mixture_score` accepts
the resulting :class:`PreparedPrior` in place of ``x0`` with identical results.
Inside the chunk loops nothing waits for the device (the finite checks read one
flag per call), and on CUDA the chunking is only as fine as free memory requires.

Shapes: ``z`` is (*batch, N, *features), ``x0`` is (*batch, M, *features), with
``batch_dims`` leading batch dimensions shared by both (a stack of independent
prior sets). ``t`` is a float, a tensor shaped like the batch (one time per prior
set) or like (*batch, N) (one time per row, as in batched Parareal).

Sharding (docs/design.md, "Sharded score"): pass the local shard of the features of z
and x0 and the process group holding the other shards; the N x M logits are summed
with one all_reduce and nothing of size d leaves the rank.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.distributed as dist

from tfda.da._checks import check_finite, check_times
from tfda.da.devices import randperm
from tfda.da.prepared import (
    DEFAULT_CHUNK,
    ChunkSize,
    PreparedPrior,
    _check_finite_chunked,
    _chunks,
    auto_chunk,
    prepare_prior,
)
from tfda.da.schedule import Schedule

__all__ = [
    "DEFAULT_CHUNK", "DEFAULT_SCHEDULE", "AllReduceSum", "PreparedPrior", "auto_chunk",
    "mixture_score", "paired_score", "prepare_prior",
]

DEFAULT_SCHEDULE = Schedule()


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


def mixture_score(
    z: torch.Tensor,
    x0: torch.Tensor | PreparedPrior,
    t: float | torch.Tensor,
    schedule: Schedule = DEFAULT_SCHEDULE,
    *,
    batch_dims: int = 0,
    chunk_size: ChunkSize = "auto",
    minibatch: int | None = None,
    generator: torch.Generator | None = None,
    centre: bool = True,
    group: dist.ProcessGroup | AllReduceSum | None = None,
    check_inputs: bool = True,
) -> torch.Tensor:
    """Softmax-weighted Monte Carlo score of Eq. (8), as two matrix products.

    Args:
        z: points (*batch, N, *features) at which the score is wanted.
        x0: prior samples (*batch, M, *features) (the forecast ensemble), or the
            :class:`PreparedPrior` of :func:`prepare_prior` (its chunking, centring
            and batch dims then apply; ``chunk_size`` must be "auto" or the same).
        t: diffusion time(s) in (0, 1]; see the module docstring for shapes.
        schedule: the alpha/beta schedule of Eq. (5).
        batch_dims: number of leading batch dimensions of ``z`` and ``x0``.
        chunk_size: features per chunk; the extra memory beyond the output is then
            O((N + M) chunk_size + N M) instead of O((N + M) d). None: one chunk.
            "auto" (default): :func:`auto_chunk` (65536 on CPU; on CUDA one chunk
            unless free memory asks for less).
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
    idx = None
    if minibatch is not None:
        m_all = x0.m if isinstance(x0, PreparedPrior) else x0.shape[batch_dims]
        if not 0 < minibatch <= m_all:
            raise ValueError(f"minibatch must lie in [1, M={m_all}], got {minibatch}")
        idx = randperm(m_all, generator=generator, device=z.device)[:minibatch]
    if isinstance(x0, PreparedPrior):
        prior = x0 if idx is None else x0.select(idx)
        if chunk_size != "auto" and chunk_size != prior.chunk_size:
            raise ValueError(f"chunk_size={chunk_size!r} differs from the prepared prior's "
                             f"{prior.chunk_size!r}; prepare it with that chunk_size")
        batch_dims = len(prior.batch)
        probe = torch.empty((*prior.batch, prior.m, *prior.features), device="meta",
                            dtype=prior.x0.dtype)
        batch, n, m, d_local = _split_shapes(z, probe, batch_dims, paired=False)
    else:
        batch, n, m, d_local = _split_shapes(z, x0, batch_dims, paired=False)
        if check_inputs:  # before the minibatch, so that every member is checked
            _check_finite_chunked("x0", x0.reshape(-1, d_local), _chunks(
                d_local, DEFAULT_CHUNK if chunk_size == "auto" else chunk_size))
        x_used = x0 if idx is None else x0.index_select(batch_dims, idx.to(x0.device))
        prior = prepare_prior(x_used, batch_dims=batch_dims, chunk_size=chunk_size,
                              n_points=n, centre=centre, check_inputs=False)
    slices = _chunks(d_local, prior.chunk_size)
    if check_inputs:
        _check_finite_chunked("z", z.reshape(-1, d_local), slices)
        check_times("t", t)
    return _two_passes(z.reshape(-1, n, d_local), prior, t, schedule, batch, slices,
                       group).reshape(z.shape)


def _two_passes(zf: torch.Tensor, prior: PreparedPrior, t: float | torch.Tensor,
                schedule: Schedule, batch: tuple[int, ...], slices: list[slice],
                group: dist.ProcessGroup | AllReduceSum | None) -> torch.Tensor:
    """Logits over the chunks (pass 1), softmax, weighted prior mean (pass 2).

    Without autograd the chunk temporaries live in two buffers reused by every chunk
    and both passes, and the elementwise steps run in place in the order of the
    out-of-place expressions (so the numbers are theirs); with one chunk the centred
    z of pass 1 is reused by pass 2 and becomes the output.
    """
    n = zf.shape[1]
    alpha, beta2 = _time_coefficients(t, schedule, batch, n, zf)
    alpha, beta2 = alpha.reshape(-1, n, 1), beta2.reshape(-1, n, 1)
    mean = prior.mean
    in_place = not (torch.is_grad_enabled() and (zf.requires_grad or prior.x0.requires_grad))
    width = max(s.stop - s.start for s in slices)
    # two separate blocks: with one chunk the first becomes the output and must not
    # keep the second alive
    buffers = [zf.new_empty(zf.shape[0] * n * width) for _ in range(2)] if in_place else []

    def scratch(i: int, s: slice) -> torch.Tensor:
        return buffers[i][: zf.shape[0] * n * (s.stop - s.start)].view(
            zf.shape[0], n, s.stop - s.start)

    def z_centred(s: slice) -> torch.Tensor:
        if mean is None:
            return zf[..., s]
        if not in_place:
            return zf[..., s] - alpha * mean[..., s]
        buf = torch.mul(alpha, mean[..., s], out=scratch(0, s))
        return torch.sub(zf[..., s], buf, out=buf)

    # Logits accumulate in float64 across chunks: N x M numbers, so this is free,
    # and it keeps the chunked sum as accurate as one long product.
    acc = prior.norms.dtype
    cross = torch.zeros(zf.shape[0], n, prior.m, dtype=acc, device=zf.device)
    zc = None
    for s in slices:
        zc = z_centred(s)
        cross += (zc @ prior.chunk(s).transpose(-1, -2)).to(acc)
    partial = (alpha / beta2).to(acc) * cross - (alpha.square() / (2 * beta2)).to(acc) * (
        prior.norms)
    # The all_reduce payload is N x M numbers in z's dtype (the only traffic of a
    # sharded evaluation); the single-process path rounds the same way so that
    # sharded and unsharded runs agree to summation order.
    partial = partial.to(zf.dtype)
    if group is not None:
        _all_reduce_sum(partial, group)
    weights = torch.softmax(partial, dim=-1)

    # The output pass centres each chunk of z again instead of keeping the centred
    # copies (O(N d) memory). The mean cancels in exact arithmetic (the weights sum
    # to one), but centring keeps float32's cancellation small.
    if not in_place:
        out = torch.empty_like(zf)
        for s in slices:
            out[..., s] = -(z_centred(s) - alpha * (weights @ prior.chunk(s))) / beta2
        return out
    single = len(slices) == 1 and mean is not None
    out = None if single else torch.empty_like(zf)
    for s in slices:
        zc = zc if single else z_centred(s)
        if not single and mean is None:
            zc = scratch(0, s).copy_(zc)  # z itself: never written
        wx = torch.matmul(weights, prior.chunk(s), out=scratch(1, s)).mul_(alpha)
        res = torch.sub(zc, wx, out=zc).neg_().div_(beta2)
        if single:
            return res
        out[..., s] = res
    return out


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
