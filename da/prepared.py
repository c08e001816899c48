"""The prior side of the mixture score: chunking, the finite check, and the
:class:`PreparedPrior` that :func:`da.score.mixture_score` accepts in place of x0.

The prior does not change during one analysis, so its mean, the squared norms of
its centred members and the chunking of the features can be taken once per
analysis instead of at every sampler step (issue 12, "the score at the memory-
bandwidth limit"). Everything here computes exactly what the score computed per
call, chunk by chunk, so a prepared prior gives the same numbers bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from tfda.da._checks import check_finite

# 65536 features a chunk: a few MB per member in float32, and measured faster than one
# big product on CPU (experiments/bench_score.py); None means a single chunk.
DEFAULT_CHUNK = 65536

ChunkSize = int | None | str


def auto_chunk(n: int, m: int, d: int, itemsize: int, device: torch.device) -> int | None:
    """Features per chunk when ``chunk_size="auto"``: bounded on a CPU, as large as
    memory allows on an accelerator.

    CPU: :data:`DEFAULT_CHUNK` (cache-sized chunks measured faster than one product).
    CUDA: one chunk (None) when the chunk temporaries, about (2 N + M) d numbers,
    fit in half of the free memory; otherwise the largest chunk that does. The free
    memory is read once per call (no stream synchronisation); prepare the prior once
    per analysis (:func:`prepare_prior`) to read it once per analysis.
    """
    if device.type != "cuda":
        return DEFAULT_CHUNK
    free, _ = torch.cuda.mem_get_info(device)
    per_feature = (2 * n + m) * itemsize
    if per_feature * d <= free // 2:
        return None
    return max(DEFAULT_CHUNK, int(free // 2 // per_feature))


def _chunks(d: int, chunk_size: int | None) -> list[slice]:
    if chunk_size is None:
        return [slice(0, d)]
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive number of features, None or 'auto', "
                         f"got {chunk_size!r}")
    return [slice(s, min(s + chunk_size, d)) for s in range(0, d, chunk_size)]


def _check_finite_chunked(name: str, x: torch.Tensor, slices: list[slice]) -> None:
    """:func:`da._checks.check_finite` a feature chunk at a time.

    torch.isfinite on the whole of x holds temporaries larger than x itself; chunk by
    chunk the check keeps the score's extra memory at O((N + M) chunk_size). The
    per-chunk verdicts stay on the device and are read once, at the end: one host
    synchronisation per check instead of one per chunk.
    """
    ok = torch.ones((), dtype=torch.bool, device=x.device)
    for s in slices:
        ok &= torch.isfinite(x[:, s]).all()
    if bool(ok):
        return
    check_finite(name, x)  # the error path: count every bad value for the message


@dataclass(frozen=True)
class PreparedPrior:
    """What :func:`da.score.mixture_score` needs of a prior that does not change between calls.

    Build it with :func:`prepare_prior` once per analysis and pass it as ``x0``: the
    prior mean, the squared norms |x_j - mean|^2 (float64 for float32 priors, summed
    over the same chunks as the score's products) and the chunking are then computed
    once instead of at every sampler step. ``centred`` holds x_j - mean when the
    prior was prepared with ``keep_centred=True`` (one extra copy of the prior, no
    subtraction per step); otherwise the chunks are centred on the fly from ``x0``.
    """

    x0: torch.Tensor  # (B, M, d) the prior, batch dims flattened
    mean: torch.Tensor | None  # (B, 1, d); None when centre=False
    centred: torch.Tensor | None  # (B, M, d) x0 - mean, or None (centred per chunk)
    norms: torch.Tensor  # (B, 1, M) in the logits' accumulation dtype
    batch: tuple[int, ...]
    features: tuple[int, ...]
    chunk_size: int | None

    @property
    def m(self) -> int:
        return self.x0.shape[1]

    def chunk(self, s: slice) -> torch.Tensor:
        """Centred prior restricted to the features ``s``, (B, M, len(s))."""
        if self.centred is not None:
            return self.centred[..., s]
        xs = self.x0[..., s]
        return xs if self.mean is None else xs - self.mean[..., s]

    def select(self, idx: torch.Tensor) -> PreparedPrior:
        """The members ``idx`` (a minibatch), keeping the full prior's mean: the
        logits do not depend on the centre, only float32's cancellation does."""
        return replace(self, x0=self.x0.index_select(1, idx), norms=self.norms.index_select(2, idx),
                       centred=None if self.centred is None
                       else self.centred.index_select(1, idx))


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype in (torch.float32, torch.float64) else dtype


def prepare_prior(
    x0: torch.Tensor,
    *,
    batch_dims: int = 0,
    chunk_size: ChunkSize = "auto",
    n_points: int | None = None,
    centre: bool = True,
    keep_centred: bool = False,
    check_inputs: bool = True,
) -> PreparedPrior:
    """Centre the prior and take its squared norms once (see :class:`PreparedPrior`).

    ``n_points``: N of the later calls, used by ``chunk_size="auto"`` on CUDA
    (default M). ``keep_centred``: store x0 - mean (one more copy of the prior)
    so that no step subtracts the mean again.
    """
    if batch_dims < 0 or x0.ndim < batch_dims + 2:
        raise ValueError(f"x0 (shape {tuple(x0.shape)}) needs {max(batch_dims, 0)} batch "
                         "dimension(s), a member dimension and features")
    batch, m = tuple(x0.shape[:batch_dims]), x0.shape[batch_dims]
    if m == 0:
        raise ValueError("x0 is an empty prior: it holds no samples")
    features = tuple(x0.shape[batch_dims + 1:])
    d = math.prod(features)
    xf = x0.reshape(-1, m, d)
    if chunk_size == "auto":
        chunk_size = auto_chunk(n_points or m, m, d, x0.element_size(), x0.device)
    slices = _chunks(d, chunk_size)
    if check_inputs:
        _check_finite_chunked("x0", xf.reshape(-1, d), slices)
    mean = None
    if centre:
        # chunk by chunk, as the score always centred: torch's reduction over a
        # strided slice can round differently from the same slice of a whole-tensor mean
        mean = xf.new_empty((xf.shape[0], 1, d))
        for s in slices:
            mean[..., s] = xf[..., s].mean(dim=1, keepdim=True)
    centred = xf - mean if centre and keep_centred else None
    prepared = PreparedPrior(xf, mean, centred, torch.empty(0), batch, features, chunk_size)
    norms = torch.zeros(xf.shape[0], 1, m, dtype=_acc_dtype(x0.dtype), device=x0.device)
    for s in slices:
        norms += prepared.chunk(s).square().sum(dim=-1).unsqueeze(1).to(norms.dtype)
    return replace(prepared, norms=norms)
