"""The kernel (Gaussian-mixture) EnSF analysis: an exact posterior score, localised.

Why: with 20 members the training-free mixture score of Rafid et al. Eq. (8) puts
all its weight on one member in tens of dimensions (the ensemble collapses), and
the paired score of the published EnSF code weighs forecast and observation by the
schedule's residual noise, not by the forecast spread (docs/ensf.md). The kernel
prior widens every member into a Gaussian of bandwidth h times the forecast
covariance, shrinking the centres so the mixture keeps the ensemble's covariance:

    p_0(x) = (1/M) sum_j N(x; xbar + s X u_j, h^2 X X^T),   s = sqrt(1 - h^2),

in the ensemble coordinates u of x = xbar + X u, X = [x_1 - xbar, ..., x_M - xbar] /
sqrt(M - 1) (the coordinates of member j are u_j = sqrt(M - 1)(e_j - 1/M)). It spans
the empirical mixture of Eq. (8) (h -> 0) and one Gaussian with the ensemble
covariance (h = 1, the EnKF limit).

For observations linear in x (or statistically linearised through the ensemble,
H x ~ mean H(x) + Y u with Y the observation-space perturbations / sqrt(M - 1), as in
the LETKF), the posterior of a Gaussian mixture is a Gaussian mixture, in closed form:

    G = Y^T R^{-1} Y,  g = Y^T R^{-1} d  (d = y - mean H(x)),  C_a = (I / h^2 + G)^{-1},
    m_j^a = C_a (s u_j / h^2 + g),
    log pi_j = -0.5 [ (d - s Y u_j)^T R^{-1} (d - s Y u_j) - b_j^T C_a b_j ],  b_j = g - s G u_j

(the last line is the component's marginal likelihood through Woodbury). Its diffused
score is closed form (:mod:`da.gaussian_mixture`) in the eigenbasis of G, so no
likelihood heuristic h(t) and no autograd are needed. The analysis transports every
member deterministically: the prior's probability-flow ODE carries u_j from t = 0
to t = 1 (one run, shared by all local domains: the prior is isotropic in u), the
posterior's carries it back to t = 0; both with the exponential integrator of
:func:`da.gaussian_mixture.mixture_flow`, which is exact for one Gaussian. With
h = 1 the map is the ETKF's symmetric square root, so the filter contains the
LETKF as its Gaussian limit.

Localisation is the LETKF's (domain + R-localisation, :mod:`da.filters.local`):
every state component gets its own G, g from the tapered local observations. The
cost is that of the LETKF: O(M^2 p_loc + M^3) per component for the ensemble-space
algebra plus O(M^2 K) per component per step for the flow, all batched.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tfda.da._checks import check_ensemble
from tfda.da.batched import matmul
from tfda.da.filters.kernel_transport import (
    TRANSPORTS,
    adaptive_posterior_mixture,
    centre_posterior_mixture,
    flow_transport,
    resample_transport,
)
from tfda.da.filters.local import (
    Sites,
    apply_site_transforms,
    local_statistics,
    prepare_observations,
)
from tfda.da.gaussian_mixture import mixture_flow
from tfda.da.protocols import ObservationOperator
from tfda.da.schedule import Schedule


def flow_times(steps: int, *, forward: bool) -> list[float]:
    """``steps`` intervals between t = 0 and 1, quadratically denser near t = 0,
    where the posterior's components are narrowest and responsibilities change most."""
    times = [(k / steps) ** 2 for k in range(steps + 1)]
    return times if forward else times[::-1]


def centred_basis(m: int, *, dtype: torch.dtype, device: torch.device | str | None = None
                  ) -> torch.Tensor:
    """An orthonormal basis (M, M - 1) of the vectors whose entries sum to zero."""
    centring = torch.eye(m, dtype=torch.float64) - 1.0 / m
    return torch.linalg.qr(centring[:, : m - 1]).Q.to(dtype=dtype, device=device)


def posterior_mixture(
    centres: torch.Tensor, h2: float, big_g: torch.Tensor, g: torch.Tensor, dd: torch.Tensor,
    *, basis: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The posterior of the kernel prior sum_j N(c_j, h^2 I) / M under y = d ~ N(Y u, R),
    in the eigenbasis Q of G = Y^T R^{-1} Y (module docstring).

    Args:
        centres: prior component means c_j = s u_j, (M, M).
        h2: the components' variance h^2.
        big_g: G, (D, M, M); g: Y^T R^{-1} d, (D, M); dd: d^T R^{-1} d, (D,).
        basis: an orthonormal basis (M, K) of a subspace that holds the centres and g
            and that G maps into itself; None: all of R^M (K = M). The analysis passes
            :func:`centred_basis`: the members' coordinates, the centres and g sum to
            zero over the members (so do the perturbations), G maps the vector of ones
            to 0, and the posterior differs from the prior only in its complement,
            where the eigenbasis, the flow and its products are one dimension smaller
            (the same analysis up to round-off).

    Returns:
        Q (D, M, K), posterior means Q^T m_j^a (D, M, K), the shared posterior
        variances (eigenvalues of C_a, (D, K)) and unnormalised log weights (D, M).
    """
    if basis is None:
        gamma, q = torch.linalg.eigh(big_g)
    else:
        gamma, q = torch.linalg.eigh(matmul(basis.T, matmul(big_g, basis)))
        q = matmul(basis, q)  # (D, M, K)
    gamma = gamma.clamp_min(0.0)  # G is positive semi-definite; eigh may round below 0
    var_a = h2 / (1.0 + h2 * gamma)
    keep = var_a / h2  # 1 / (1 + h^2 gamma) = 1 - gamma var_a
    c_rot = matmul(centres, q)  # (D, M, K): row j = Q^T c_j
    g_rot = matmul(g.unsqueeze(1), q).squeeze(1)
    # m_j^a = C_a (c_j / h^2 + g) and, with b_j = g - G c_j,
    # log pi_j = -0.5 [d'd - 2 c_j'g + c_j'G c_j - b_j'C_a b_j]
    #          = -0.5 [d'd - g'C_a g] + c_j'(keep g) - 0.5 c_j'(keep G) c_j
    # (expanded, so that the per-component sums over the K coordinates are two products)
    means_a = torch.addcmul((g_rot * var_a).unsqueeze(1), c_rot, keep.unsqueeze(1))
    log_w = matmul(c_rot, (keep * g_rot).unsqueeze(-1)).squeeze(-1)
    log_w -= 0.5 * matmul(c_rot * c_rot, (keep * gamma).unsqueeze(-1)).squeeze(-1)
    log_w += (-0.5 * (dd - (g_rot * g_rot * var_a).sum(-1))).unsqueeze(-1)
    return q, means_a, var_a, log_w


def kernel_analysis(
    prior: torch.Tensor,
    y: torch.Tensor,
    obs_operator: ObservationOperator,
    *,
    bandwidth: float,
    steps: int,
    schedule: Schedule,
    inflation: float = 1.0,
    radius: float | None = None,
    distance: Any = None,
    chunk: int = 2048,
    hx: torch.Tensor | None = None,
    offset: int = 0,
    sites: Sites | None = None,
    transport: str = "flow",
    linearisation: str = "ensemble",
    generator: torch.Generator | None = None,
    ess_min: float | None = None,
) -> torch.Tensor:
    """Posterior ensemble (M, *state_shape) of the localised kernel EnSF (module docstring).

    Args:
        prior: forecast ensemble (M, *state_shape).
        y: observations shaped like H(x)[0]; NaN marks "not observed".
        obs_operator: H with an ``error`` (diagonal R: only ``error.std`` is used) and,
            for localisation, ``locations``.
        bandwidth: h in (0, 1].
        steps: flow steps in each direction.
        schedule: alpha_t, beta_t^2 of the diffusion (eps_a = 0 is fine here).
        inflation: multiplicative inflation of the forecast perturbations.
        radius, distance: localisation, as for :class:`da.filters.LETKF`; None = global.
        chunk: state components per batch.
        hx, offset: a shard of the state (the sharded analysis): ``prior`` holds
            components offset .. offset + n - 1 of every member, and ``hx`` (M, *obs_shape)
            the whole observation-space ensemble H(x), which the caller gathers (one
            all_gather of M p numbers). Each component's analysis depends only on its own
            forecast values and the observations near it, so the shards' analyses are the
            single-process one's components, with no further communication.
        sites: where the taper depends only on position (a grid point shared by several
            variables): one local analysis per site, used by all of its components
            (:class:`da.filters.local.Sites`); not with ``offset``.
        transport: "flow" (deterministic probability flow, one path per member) or
            "resample" (a draw from the mixture posterior that honours its weights);
            :mod:`da.filters.kernel_transport`.
        linearisation: "ensemble" (H x ~ mean H(x) + Y u for every component, as in the
            LETKF) or "centres" (each component's innovation y - H(its centre), the
            nonlinear H evaluated at the M centres: a Gaussian-sum update,
            :func:`da.filters.kernel_transport.centre_posterior_mixture`).
        generator: random source of the "resample" transport.
        ess_min: choose the bandwidth per domain, from ``bandwidth`` up to 1, as the
            smallest whose posterior weights keep an effective sample size >= ess_min * M
            (:func:`da.filters.kernel_transport.adaptive_posterior_mixture`); needs
            transport "resample" and linearisation "ensemble". None: ``bandwidth``.
    """
    if sites is not None and offset:
        raise ValueError("sites= and a state shard (offset=) cannot be combined")
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
    if linearisation not in ("ensemble", "centres"):
        raise ValueError(f"linearisation must be 'ensemble' or 'centres', got {linearisation!r}")
    if ess_min is not None and (transport != "resample" or linearisation != "ensemble"):
        raise ValueError("ess_min (a bandwidth per domain) needs transport='resample' and "
                         "linearisation='ensemble'")
    if linearisation == "centres" and offset:
        raise ValueError("linearisation='centres' needs the whole state (no offset=)")
    check_ensemble("prior_ensemble", prior)
    m, state_shape = prior.shape[0], tuple(prior.shape[1:])
    dtype, device = prior.dtype, prior.device
    hx, y_filled, valid, r_inv, locations = prepare_observations(
        prior, y, obs_operator, hx=hx, radius=radius, distance=distance, sites=sites)

    scale = math.sqrt(inflation / (m - 1))
    xb = prior.reshape(m, -1)
    xmean = xb.mean(0)
    xpert = (xb - xmean).T * scale  # X (n, M)
    hxf = hx.reshape(m, -1)[:, valid]
    ypert = (hxf - hxf.mean(0)).T * scale  # Y (p, M)
    innov = y_filled.flatten()[valid] - hxf.mean(0)

    h2 = bandwidth * bandwidth
    shrink = math.sqrt(1.0 - h2)
    eye = torch.eye(m, dtype=dtype, device=device)
    members = math.sqrt(m - 1) * (eye - 1.0 / m)  # row j = u_j
    centres = shrink * members
    if transport == "flow":
        encoded = mixture_flow(members[None], flow_times(steps, forward=True), centres[None],
                               h2, schedule)[0]  # (M, M): the members at t = 1
    else:
        rand = torch.rand(1, generator=generator, dtype=dtype).to(device)[0]
        perm = torch.randperm(m, generator=generator).to(device)
    if linearisation == "centres":  # component j's innovation through the nonlinear H
        with torch.no_grad():
            hc = obs_operator((xmean[:, None] + xpert @ centres.T).T.reshape(m, *state_shape))
        ypert = torch.cat([ypert, y_filled.flatten()[valid, None] - hc.reshape(m, -1)[:, valid].T],
                          dim=1)

    blocks = local_statistics(ypert, innov, r_inv, xb.shape[1], radius=radius,
                              distance=distance, locations=locations, valid=valid,
                              chunk=chunk, offset=offset, sites=sites)
    if sites is not None:
        site_weights = torch.empty(sites.n_domains, m, m, dtype=dtype, device=device)
    xa = torch.empty(xb.shape[1], m, dtype=dtype, device=device)
    backward = flow_times(steps, forward=False)
    complement = centred_basis(m, dtype=dtype, device=device)
    for rows, big_g, g, dd in blocks:
        if linearisation == "centres":
            q, means_a, var_a, log_w = centre_posterior_mixture(centres, h2, big_g)
        elif ess_min is not None:
            q, means_a, var_a, log_w = adaptive_posterior_mixture(members, bandwidth, big_g, g,
                                                                  dd, ess_min)
        else:
            q, means_a, var_a, log_w = posterior_mixture(centres, h2, big_g, g, dd,
                                                         basis=complement)
        if transport == "flow":
            u_a = flow_transport(encoded, q, means_a, var_a, log_w, times=backward,
                                 schedule=schedule)
        else:
            u_a = resample_transport(members, q, means_a, var_a, log_w, offset=rand,
                                     permutation=perm)
        if sites is None:
            xa[rows] = xmean[rows, None] + matmul(u_a, xpert[rows, :, None]).squeeze(-1)
        else:
            site_weights[rows] = u_a
    if sites is not None:  # every component takes its site's transported members
        xa = apply_site_transforms(xmean, xpert, site_weights, sites.state_site)
    return xa.T.reshape(m, *state_shape)
