"""Local ensemble transform Kalman filter (LETKF).

Hunt, Kostelich & Szunyogh (2007), "Efficient data assimilation for
spatiotemporal chaos: a local ensemble transform Kalman filter", Physica D 230,
steps 1-9 of their Sec. 2.3, with R-localisation: at each state component i the
observation j enters with precision rho_ij / r_j, rho = Gaspari-Cohn (1999,
Eq. 4.10) of distance / c. For one local domain, with background perturbations
X (n, M), Y = H-perturbations (p, M), innovation d = y - mean H(x):

    A      = (M - 1) / lambda I + Y^T R_loc^{-1} Y          (lambda: multiplicative inflation)
    w_a    = A^{-1} Y^T R_loc^{-1} d,     W_a = [(M - 1) A^{-1}]^{1/2}  (symmetric root)
    x_a,k  = mean x_b + X (w_a + W_a[:, k])

A = Q diag(l) Q^T by ``torch.linalg.eigh`` on a batch of (chunk, M, M) matrices, one
per state component: no Python loop over grid points (only over chunks of
components, to bound memory). Relaxation to prior spread (RTPS, Whitaker & Hamill
2012): X_a <- X_a (1 + alpha (sigma_b - sigma_a) / sigma_a) per component.

The localisation radius follows DAPPER's convention: the Gaspari-Cohn half-width
is c = radius * sqrt(10/3) (the GC taper then matches a Gaussian of length
``radius`` near 0) and observations beyond 2c are dropped. Distances come from a
callable ``distance(state_index (n,), obs_locations) -> (n, p)`` or a precomputed
(n_state, p) matrix; :func:`periodic_distance` (Lorenz-96 ring) and
:func:`grid_distance` (great circle on a (variable, lat, lon) state) are provided.
R must be diagonal here: only ``error.std`` is used (a correlated R is treated by
its marginal variances).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from tfda.da._checks import check_ensemble, check_fields
from tfda.da.batched import matmul
from tfda.da.filters.halo import check_shardable, sharded_analysis, sharding
from tfda.da.filters.inflation import check_adaptive_inflation, innovation_inflation
from tfda.da.filters.local import (
    Sites,
    apply_site_transforms,
    gaspari_cohn,
    great_circle_distance,
    grid_distance,
    local_statistics,
    periodic_distance,
    prepare_observations,
)
from tfda.da.protocols import ObservationOperator

__all__ = ["LETKF", "gaspari_cohn", "great_circle_distance", "grid_distance",
           "periodic_distance"]

@dataclass(frozen=True)
class LETKF:
    """LETKF configuration; call :meth:`analysis`.

    Attributes:
        radius: localisation radius (units of the distance); None = global ETKF.
        distance: callable distance(state_index, obs_locations) -> (n, p), or a
            precomputed (n_state, p) tensor; needed when radius is set.
        inflation: multiplicative inflation lambda >= 1 of the background covariance.
        adaptive_inflation: lambda_max >= 1 of an innovation-driven inflation (None: off):
            each analysis multiplies the covariance further by lambda^2 = (d^T R^-1 d - p)
            / tr(R^-1 Y Y^T) clipped to [1, lambda_max] (Desroziers et al. 2005; Li,
            Kalnay & Miyoshi 2009; :mod:`da.filters.inflation`), the same estimate as
            the kernel EnSF's; not with ``group``.
        rtps: relaxation-to-prior-spread factor alpha in [0, 1].
        chunk: local domains per batched eigen-decomposition (at most).
        sites: one local analysis per site (a grid column) instead of per component,
            when the taper depends only on position (:class:`da.filters.local.Sites`).
        group: a process group: each rank analyses a slab of the local domains
            (:mod:`da.filters.halo`); needs ``radius`` and a geometry ``distance``.
    """

    radius: float | None = None
    distance: Any = None
    inflation: float = 1.0
    adaptive_inflation: float | None = None
    rtps: float = 0.0
    chunk: int = 4096
    sites: Any = None
    group: Any = None

    def __post_init__(self) -> None:
        check_fields(self)  # types and finite numbers first, each error naming its field
        if self.radius is not None and not self.radius > 0:
            raise ValueError(f"radius must be > 0 or None, got {self.radius}")
        if self.radius is not None and self.distance is None:
            raise ValueError("a localisation radius needs distance= (callable or matrix)")
        if not self.inflation >= 1.0:
            raise ValueError(f"inflation must be >= 1, got {self.inflation}")
        if not 0.0 <= self.rtps <= 1.0:
            raise ValueError(f"rtps must lie in [0, 1], got {self.rtps}")
        if self.chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {self.chunk}")
        check_adaptive_inflation(self.adaptive_inflation)
        if self.adaptive_inflation is not None and self.group is not None:
            raise ValueError("adaptive_inflation needs the whole observation vector: "
                             "not with group=")
        check_shardable(self.group, self.radius, self.distance)

    def settings(self) -> dict[str, Any]:
        out = {"radius": self.radius, "inflation": self.inflation, "rtps": self.rtps,
               "localisation": "Gaspari-Cohn, c = radius * sqrt(10/3)"}
        if self.adaptive_inflation is not None:
            out["adaptive_inflation"] = self.adaptive_inflation
        return out

    def __call__(self, prior: torch.Tensor, y: torch.Tensor, obs_operator: ObservationOperator, *,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        del generator  # deterministic
        return self.analysis(prior, y, obs_operator)

    def analysis(self, prior_ensemble: torch.Tensor, y: torch.Tensor,
                 obs_operator: ObservationOperator) -> torch.Tensor:
        """Analysis ensemble (M, *state_shape); NaN in y are left out (with a warning).
        With ``group`` (several processes) each rank analyses its slab of the local
        domains from its halo of observations (:mod:`da.filters.halo`)."""
        options = {"radius": self.radius, "distance": self.distance,
                   "inflation": self.inflation, "rtps": self.rtps, "chunk": self.chunk}
        if self.adaptive_inflation is not None:
            lam2, hx = innovation_inflation(prior_ensemble, y, obs_operator,
                                            inflation=self.inflation,
                                            maximum=self.adaptive_inflation)
            options["inflation"] = self.inflation * lam2
            return letkf_analysis(prior_ensemble, y, obs_operator, sites=self.sites, hx=hx,
                                  **options)
        if sharding(self.group):
            return sharded_analysis(partial(letkf_analysis, **options), prior_ensemble, y,
                                    obs_operator, geometry=self.distance, radius=self.radius,
                                    sites=self.sites, group=self.group)
        return letkf_analysis(prior_ensemble, y, obs_operator, sites=self.sites, **options)


def letkf_analysis(
    prior_ensemble: torch.Tensor,
    y: torch.Tensor,
    obs_operator: ObservationOperator,
    *,
    radius: float | None,
    distance: Any,
    inflation: float,
    rtps: float,
    chunk: int,
    hx: torch.Tensor | None = None,
    offset: int = 0,
    sites: Sites | None = None,
) -> torch.Tensor:
    """The LETKF analysis (module docstring) of ``prior_ensemble`` (M, *state_shape).

    ``hx``, ``offset``: a slab of the state (components offset .. offset + n - 1) with
    the observation-space ensemble of the observations given (the sharded analysis)."""
    check_ensemble("prior_ensemble", prior_ensemble)
    m, state_shape = prior_ensemble.shape[0], tuple(prior_ensemble.shape[1:])
    dtype = prior_ensemble.dtype
    hx, y, valid, r_inv, locations = prepare_observations(
        prior_ensemble, y, obs_operator, hx=hx, radius=radius, distance=distance, sites=sites)

    xb = prior_ensemble.reshape(m, -1)
    xmean = xb.mean(0)
    xpert = (xb - xmean).T  # (n, M)
    hxf = hx.reshape(m, -1)[:, valid]
    ypert = (hxf - hxf.mean(0)).T  # (p, M)
    innov = y.flatten()[valid] - hxf.mean(0)  # (p,)
    eye = torch.eye(m, dtype=dtype, device=xb.device)
    blocks = local_statistics(ypert, innov, r_inv, xb.shape[1], radius=radius,
                              distance=distance, locations=locations, valid=valid,
                              chunk=chunk, offset=offset, sites=sites)
    if sites is not None:
        transforms = torch.empty(sites.n_domains, m, m, dtype=dtype, device=xb.device)
    else:
        increment = torch.empty_like(xmean)
        xa_pert = torch.empty_like(xpert)
    for rows, c, b, _ in blocks:
        a = (m - 1) / inflation * eye + c
        lam, q = torch.linalg.eigh(a)
        qt = q.transpose(1, 2).contiguous()
        wa = matmul(q, matmul(qt, b[:, :, None]) / lam[:, :, None])  # A^{-1} b, (chunk, M, 1)
        wroot = matmul(q, ((m - 1) / lam).sqrt()[:, :, None] * qt)  # [(M-1) A^{-1}]^{1/2}
        if sites is not None:  # member j of the site: wa + W_a[:, j]
            transforms[rows] = (wa + wroot).transpose(1, 2)
            continue
        xr = xpert[rows, None, :]  # (chunk, 1, M)
        increment[rows] = matmul(xr, wa).reshape(-1)
        xa_pert[rows] = matmul(xr, wroot).squeeze(1)
    if sites is not None:
        xa = apply_site_transforms(xmean, xpert, transforms, sites.state_site)
        increment = xa.mean(1)  # W_a 1 = 1, so the members' mean is xbar + X w_a
        xa_pert = xa - increment[:, None]
        increment = increment - xmean
    if rtps > 0:
        sb = xpert.std(1, keepdim=True)
        sa = xa_pert.std(1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
        xa_pert = xa_pert * (1.0 + rtps * (sb - sa) / sa)
    return (xmean + increment + xa_pert.T).reshape(m, *state_shape)
