"""A localised training-free mixture score: softmax weights per state component.

The mixture score of Rafid et al. Eq. (8) weighs the prior members with one softmax
over the whole state; with 20 members in tens of dimensions those weights go
one-hot and the ensemble collapses. Localising the weights, as the LETKF localises
its analysis, lets every component pick its own members from the evidence nearby:

    S(z_i, t)_k = -(z_ik - alpha_t sum_j w_ijk x_jk) / beta_t^2,
    w_ijk       = softmax_j( sum_l rho_kl [(alpha/beta^2) z_il x_jl - (alpha^2/2beta^2) x_jl^2] ),

with rho a Gaspari-Cohn taper (rho_kk = 1). With rho = 1 everywhere this is Eq. (8)
exactly (tested). The logits are the elementwise products of the two matrix
products of Eq. (8), filtered along the state by the taper: O(N M d w) work for a
taper of width w, O(N M d) memory (the paper's N x M x d tensor, which the global
score avoids; fine for Lorenz-96, a patch-wise version is what a 10^7-component state
would need). Under sharding along the state the filter needs a halo of w/2
components from each neighbour instead of the global all-reduce (not implemented).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from tfda.da.filters.local import gaspari_cohn
from tfda.da.schedule import Schedule

Taper = Callable[[torch.Tensor], torch.Tensor]


def ring_taper(n: int, radius: float) -> Taper:
    """rho applied along the last axis of a (..., n) tensor on a ring (Lorenz-96), as a
    circular convolution with the Gaspari-Cohn weights of half-width radius sqrt(10/3)
    (the LETKF's convention, :mod:`da.filters.local`)."""
    half = min(int(math.floor(2 * radius * math.sqrt(10.0 / 3.0))), (n - 1) // 2)
    offsets = torch.arange(-half, half + 1, dtype=torch.float64)
    weights = gaspari_cohn(offsets / (radius * math.sqrt(10.0 / 3.0)))

    def apply(v: torch.Tensor) -> torch.Tensor:
        flat = v.reshape(-1, 1, n)
        kernel = weights.to(v).reshape(1, 1, -1)
        padded = F.pad(flat, (half, half), mode="circular") if half else flat
        return F.conv1d(padded, kernel).reshape(v.shape)

    return apply


def localised_mixture_score(
    z: torch.Tensor, x0: torch.Tensor, t: float, schedule: Schedule, taper: Taper
) -> torch.Tensor:
    """The localised score above for z (N, d) and prior members x0 (M, d)."""
    alpha, beta2 = schedule.alpha(t), schedule.beta2(t)
    mean = x0.mean(0, keepdim=True)  # the logits are translation invariant: centre first
    xc, zc = x0 - mean, z - alpha * mean
    per_feature = (alpha / beta2) * zc.unsqueeze(1) * xc.unsqueeze(0)  # (N, M, d)
    per_feature = per_feature - (0.5 * alpha * alpha / beta2) * (xc * xc).unsqueeze(0)
    weights = torch.softmax(taper(per_feature), dim=1)
    return -(zc - alpha * (weights * xc.unsqueeze(0)).sum(1)) / beta2
