"""Batched products of many small matrices, and a row maximum, fast on the CPU.

The local filters multiply millions of 20 x 20 matrices (one pair per local domain and
flow evaluation). On the CPU, ``torch.bmm`` spends 1-2 us on each such product, float32
or float64, while numpy's stacked ``matmul`` (OpenBLAS small-matrix kernels) spends
0.3-0.5 us on the same numbers (2-core AMD EPYC, one thread, batches of 2048; the
script is in docs/performance.md). :func:`matmul` therefore hands CPU tensors to numpy
and everything else (accelerators, autograd) to torch. The result is the same product
up to the order of the floating-point sums.

:func:`row_max` is ``x.amax(-1, keepdim=True)``; on the CPU in float32 a halving tree
of elementwise maxima was faster than torch's reduction over a short last axis on the
development machine (float64's reduction is not slow there). Both are exact: a maximum
does not round.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["matmul", "row_max"]

_NUMPY_DTYPES = (torch.float32, torch.float64)


def _numpy_ready(t: torch.Tensor) -> bool:
    return (t.device.type == "cpu" and t.dtype in _NUMPY_DTYPES and not t.is_conj()
            and not t.is_neg() and not (t.requires_grad and torch.is_grad_enabled()))


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` with torch.matmul's broadcasting; numpy's stacked product on the CPU."""
    if a.dtype == b.dtype and _numpy_ready(a) and _numpy_ready(b):
        return torch.from_numpy(np.matmul(a.detach().numpy(), b.detach().numpy()))
    return a @ b


def row_max(x: torch.Tensor) -> torch.Tensor:
    """The maximum over the last axis, keeping it: (..., n) -> (..., 1)."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return x.amax(-1, keepdim=True)
    while x.shape[-1] > 1:  # two overlapping halves cover an odd width
        width = x.shape[-1]
        half = (width + 1) // 2
        x = torch.maximum(x[..., :half], x[..., width - half:])
    return x
