"""Batched products of many small matrices, and a column maximum, fast on the CPU.

The local filters multiply millions of 20 x 20 matrices (one pair per local domain and
flow evaluation). On the CPU, ``torch.bmm`` spends 1-2 us on each such product, float32
or float64, while numpy's stacked ``matmul`` (OpenBLAS small-matrix kernels) spends
0.3-0.5 us on the same numbers (2-core AMD EPYC, one thread, batches of 2048; the
script is in docs/performance.md). :func:`matmul` therefore hands CPU tensors to numpy
and everything else (accelerators, autograd) to torch. The result is the same product
up to the order of the floating-point sums.

:func:`column_max` is ``x.amax(-2, keepdim=True)``; on the CPU in float32 a halving
tree of elementwise maxima of whole rows is several times faster than torch's reduction
(a (2048, 20, 20) batch: 0.12-0.15 against 0.55-0.82 us per matrix, docs/performance.md;
float64's reduction is not slow). Both are exact: a maximum does not round.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["column_max", "matmul"]

_NUMPY_DTYPES = (torch.float32, torch.float64)


def _numpy_ready(t: torch.Tensor) -> bool:
    return (t.device.type == "cpu" and t.dtype in _NUMPY_DTYPES and not t.is_conj()
            and not t.is_neg() and not (t.requires_grad and torch.is_grad_enabled()))


def matmul(a: torch.Tensor, b: torch.Tensor, *, out: torch.Tensor | None = None
           ) -> torch.Tensor:
    """``a @ b`` with torch.matmul's broadcasting; numpy's stacked product on the CPU.
    ``out``: an array of the product's shape and dtype to write it into (returned)."""
    if a.dtype == b.dtype and _numpy_ready(a) and _numpy_ready(b) and (
            out is None or _numpy_ready(out) and out.dtype == a.dtype):
        if out is None:
            return torch.from_numpy(np.matmul(a.detach().numpy(), b.detach().numpy()))
        np.matmul(a.detach().numpy(), b.detach().numpy(), out=out.detach().numpy())
        return out
    return a @ b if out is None else torch.matmul(a, b, out=out)


def column_max(x: torch.Tensor, *, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """The maximum over the second-last axis, keeping it: (..., n, k) -> (..., 1, k).

    ``scratch``: an array (..., ceil(n / 2), k) the CPU float32 path may overwrite (no
    temporaries then); the result may be a view of it."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return x.amax(-2, keepdim=True)
    height = x.shape[-2]
    if scratch is None:
        scratch = x.new_empty(*x.shape[:-2], (height + 1) // 2, x.shape[-1])
    half = height // 2
    torch.maximum(x[..., :half, :], x[..., height - half:, :], out=scratch[..., :half, :])
    if height % 2:
        scratch[..., half, :] = x[..., half, :]
    height -= half
    while height > 1:  # the middle row of an odd height waits for the next halving
        half = height // 2
        torch.maximum(scratch[..., :half, :], scratch[..., height - half:height, :],
                      out=scratch[..., :half, :])
        height -= half
    return scratch[..., :1, :]
