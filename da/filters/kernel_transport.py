"""Transports of the kernel EnSF: carry prior members to the Gaussian-mixture posterior.

:func:`da.filters.kernel.posterior_mixture` gives, per local domain, the posterior
sum_j pi_j N(m_j^a, C_a) of the kernel prior (in the eigenbasis Q of G, where C_a is
diagonal). Two ways to turn it into an analysis ensemble live here:

* ``"flow"`` (:func:`flow_transport`): the deterministic probability-flow map of
  Rafid et al. (Eq. 9) from the encoded members (t = 1) back to t = 0 -- one path per
  member. It is the ETKF's symmetric square root at h = 1, but below h ~ 1 it does
  **not** sample the mixture it computes: in the M-dimensional ensemble space the
  components c_j = s u_j are far apart in directions that the observations do not
  see, so every member stays in (the posterior image of) its own component and the
  posterior weights pi_j barely act (1-D, M = 20, forecast variance = R: transported
  mean 0.54 of the Kalman gain at h = 0.5 where the mixture's is 0.999;
  ``tests/da/filters/test_kernel_transport.py``).
* ``"resample"`` (:func:`resample_transport`): a draw from the mixture posterior that
  honours the weights. The component of member i is chosen by systematic resampling
  (Kitagawa 1996; Douc, Cappe & Moulines 2005) of pi, with one uniform offset shared
  by all domains so that neighbouring domains with similar weights pick the same
  components (the localised-particle-filter coherence device of Poterjoy 2016 and
  Penny & Miyoshi 2016), and the within-component draw is
  m^a_{k_i} + C_a^{1/2} xi_i with xi_i = u_{sigma(i)}, the ensemble coordinates of a
  randomly permuted member: exactly zero mean and identity covariance on the span of
  the ensemble, shared across domains (a spatially coherent, balanced perturbation).
  With equal weights systematic resampling keeps k_i = i. The chosen means' spread is
  scaled by sqrt((M - 1) / M) so that the ensemble's unbiased sample covariance is
  the mixture's (the draws are stratified, not independent).

Either transport has cost O(M^2 K) per domain (per flow step for "flow"), batched
over domains, without host synchronisation.
"""

from __future__ import annotations

import math

import torch

from tfda.da.batched import matmul
from tfda.da.gaussian_mixture import mixture_flow
from tfda.da.schedule import Schedule

TRANSPORTS = ("flow", "resample")


def flow_transport(
    encoded: torch.Tensor, q: torch.Tensor, means_a: torch.Tensor, var_a: torch.Tensor,
    log_w: torch.Tensor, *, times: list[float], schedule: Schedule,
) -> torch.Tensor:
    """Members' analysis coordinates u^a (D, M, K) by the posterior's probability flow.

    Args:
        encoded: the members carried to t = 1 by the prior's flow, (M, K).
        q: each domain's eigenbasis (D, M, K), K = M - 1 or M; means_a (D, M, K),
            var_a (D, K),
            log_w (D, M): the posterior mixture in that basis.
        times: decreasing flow times from 1 to 0; schedule: alpha_t, beta_t^2.
    """
    z = matmul(encoded.unsqueeze(0), q)
    z = mixture_flow(z, times, means_a, var_a, schedule, log_w)
    return matmul(z, q.transpose(1, 2))


def centre_posterior_mixture(
    centres: torch.Tensor, h2: float, big_g_aug: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernel prior's posterior with each component linearised at its own centre.

    Component j of the prior, N(c_j, h^2 I) in ensemble coordinates, sees the
    observations through H(x(u)) ~ H(x(c_j)) + Y (u - c_j): the nonlinear H at the
    component's centre x(c_j) = xbar + X c_j and the ensemble's Jacobian Y (a
    Gaussian-sum filter, Alspach & Sorenson 1972, with a shared gain). With
    d_j = y - H(x(c_j)) and b_j = Y^T R^{-1} d_j:

        C_a = (I / h^2 + G)^{-1},  m_j^a = c_j + C_a b_j,
        log pi_j = -0.5 [ d_j^T R^{-1} d_j - b_j^T C_a b_j ].

    For a linear H, d_j = d - Y c_j and this is :func:`da.filters.kernel.posterior_mixture`
    exactly; for a sign-ambiguous or saturating H the weights see what the ensemble
    linearisation averages away (|x| of a variable whose members straddle 0: Y ~ 0).

    Args:
        centres: c_j (M, K).
        h2: h^2.
        big_g_aug: the localised moments of [Y, D] with D = [d_1 .. d_M] (D, 2K, 2K):
            the blocks are Y^T R^-1 Y, Y^T R^-1 D and D^T R^-1 D.

    Returns:
        Q (D, K, K), Q^T m_j^a (D, M, K), the eigenvalues of C_a (D, K), log pi (D, M).
    """
    k = centres.shape[-1]
    gamma, q = torch.linalg.eigh(big_g_aug[:, :k, :k])
    gamma = gamma.clamp_min(0.0)
    var_a = h2 / (1.0 + h2 * gamma)
    b_rot = big_g_aug[:, k:, :k] @ q  # (D, M, K): row j = Q^T Y^T R^-1 d_j
    dd = torch.diagonal(big_g_aug[:, k:, k:], dim1=1, dim2=2)
    means_a = centres @ q + var_a.unsqueeze(1) * b_rot
    log_w = -0.5 * (dd - (b_rot * b_rot * var_a.unsqueeze(1)).sum(-1))
    return q, means_a, var_a, log_w


def adaptive_posterior_mixture(
    members: torch.Tensor, bandwidth: float, big_g: torch.Tensor, g: torch.Tensor,
    dd: torch.Tensor, ess_min: float, levels: int = 5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`da.filters.kernel.posterior_mixture` with a bandwidth chosen per domain.

    With M = 20 members and tens of local observations the posterior weights of a
    narrow kernel go one-hot and resampling collapses the ensemble onto one component
    (the particle filter's degeneracy). Each domain takes the smallest h on the grid
    ``bandwidth`` .. 1 (``levels`` points) whose posterior weights keep an effective
    sample size 1 / sum_j pi_j^2 of at least ``ess_min`` M, with every larger h on the
    grid also passing; h = 1 (one Gaussian, the LETKF's posterior) where none does.
    This is the EnKPF's adaptive gamma (Frei & Kuensch 2013) for the kernel prior: the
    non-Gaussian part of the prior is used only where the weights can carry it. Unlike
    tempering the weights at a fixed h, no information is discarded (each domain's
    posterior is the exact one of its own kernel prior).

    Shapes as in :func:`da.filters.kernel.posterior_mixture`; ``members`` (M, K).
    """
    gamma, q = torch.linalg.eigh(big_g)
    gamma = gamma.clamp_min(0.0)
    u_rot = members @ q  # (D, M, K)
    g_rot = (g.unsqueeze(1) @ q).squeeze(1)
    m = members.shape[0]
    one = torch.ones(gamma.shape[0], 1, dtype=gamma.dtype, device=gamma.device)
    chosen = one.clone()
    alive = torch.ones_like(chosen, dtype=torch.bool)
    for k in range(levels - 1, -1, -1):  # from h = 1 down to ``bandwidth``
        h = bandwidth + (1.0 - bandwidth) * k / max(levels - 1, 1)
        _, _, log_w = _mixture_in_basis(u_rot, h * h * one, gamma, g_rot, dd)
        p = torch.softmax(log_w, -1)
        alive = alive & (1.0 / (p * p).sum(-1, keepdim=True) >= ess_min * m)
        chosen = torch.where(alive, h * h * one, chosen)
    means_a, var_a, log_w = _mixture_in_basis(u_rot, chosen, gamma, g_rot, dd)
    return q, means_a, var_a, log_w


def _mixture_in_basis(
    u_rot: torch.Tensor, h2: torch.Tensor, gamma: torch.Tensor, g_rot: torch.Tensor,
    dd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Posterior means, variances and log weights of the kernel prior with a per-domain
    h^2 (D, 1), in the eigenbasis of G (the formulas of :mod:`da.filters.kernel`)."""
    c_rot = (1.0 - h2).clamp_min(0.0).sqrt().unsqueeze(-1) * u_rot
    var_a = h2 / (1.0 + h2 * gamma)
    means_a = (c_rot + (h2 * g_rot).unsqueeze(1)) / (1.0 + h2 * gamma).unsqueeze(1)
    resid = g_rot.unsqueeze(1) - gamma.unsqueeze(1) * c_rot
    log_w = -0.5 * (dd.unsqueeze(1) - 2.0 * (c_rot * g_rot.unsqueeze(1)).sum(-1)
                    + (gamma.unsqueeze(1) * c_rot * c_rot).sum(-1)
                    - (resid * resid * var_a.unsqueeze(1)).sum(-1))
    return means_a, var_a, log_w


def systematic_resample(log_w: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Component indices (D, M) drawn by systematic resampling of softmax(log_w) (D, M).

    Draw i of domain d is the first j with cumsum_j pi_dj > (i + offset) / M: each
    component is chosen floor(M pi_j) or ceil(M pi_j) times, the variance-minimal
    unbiased scheme. ``offset`` is a scalar tensor in [0, 1) shared by all domains.
    """
    m = log_w.shape[-1]
    cdf = torch.softmax(log_w, dim=-1).cumsum(-1)
    points = (torch.arange(m, dtype=log_w.dtype, device=log_w.device) + offset) / m
    idx = torch.searchsorted(cdf.contiguous(), points.expand_as(cdf).contiguous(), right=True)
    return idx.clamp_max(m - 1)


def resample_transport(
    members: torch.Tensor, q: torch.Tensor, means_a: torch.Tensor, var_a: torch.Tensor,
    log_w: torch.Tensor, *, offset: torch.Tensor, permutation: torch.Tensor,
) -> torch.Tensor:
    """Members' analysis coordinates u^a (D, M, K), a draw from the mixture posterior.

    Args:
        members: the members' ensemble coordinates u_j, (M, K).
        q, means_a, var_a, log_w: the posterior mixture per domain, as in
            :func:`flow_transport` (K = M or M - 1).
        offset: scalar in [0, 1), the systematic-resampling offset shared by all domains.
        permutation: (M,) the member whose coordinates are member i's within-component
            noise, shared by all domains.
    """
    k = systematic_resample(log_w, offset)  # (D, M)
    chosen = torch.gather(means_a, 1, k.unsqueeze(-1).expand(-1, -1, means_a.shape[-1]))
    # the M draws are stratified (their empirical weights are pi up to 1/M rounding), so
    # their spread about their mean is the mixture's with the 1/M normalisation; rescale
    # to the ensemble's 1/(M - 1) convention so that the sample covariance is unbiased
    m = chosen.shape[1]
    centre = chosen.mean(1, keepdim=True)
    chosen = centre + math.sqrt((m - 1) / m) * (chosen - centre)
    noise = members[permutation].unsqueeze(0) @ q  # (D, M, K) in each eigenbasis
    z = chosen + var_a.sqrt().unsqueeze(1) * noise
    return z @ q.transpose(1, 2)
