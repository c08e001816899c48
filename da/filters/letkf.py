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

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from da.filters.ensf import check_ensemble, observation_mask

DistanceFn = Callable[[torch.Tensor, Any], torch.Tensor]
EARTH_RADIUS_KM = 6371.0
_GC_SCALE = math.sqrt(10.0 / 3.0)


def gaspari_cohn(r: torch.Tensor) -> torch.Tensor:
    """Gaspari & Cohn (1999) Eq. (4.10), compactly supported 5th-order taper of r = dist / c."""
    r = r.abs()
    inner = (((-0.25 * r + 0.5) * r + 0.625) * r - 5.0 / 3.0) * r**2 + 1.0
    outer = ((((r / 12.0 - 0.5) * r + 0.625) * r + 5.0 / 3.0) * r - 5.0) * r + 4.0
    outer = outer - 2.0 / (3.0 * r.clamp_min(1e-12))
    out = torch.where(r <= 1.0, inner, torch.where(r < 2.0, outer, torch.zeros_like(r)))
    return out.clamp_min(0.0)


def periodic_distance(n: int) -> DistanceFn:
    """Distance on a ring of ``n`` points (Lorenz-96): min(|i - l|, n - |i - l|)."""

    def distance(state_index: torch.Tensor, obs_locations: Any) -> torch.Tensor:
        loc = torch.as_tensor(obs_locations, dtype=torch.float64, device=state_index.device)
        d = (state_index.to(torch.float64)[:, None] - loc[None, :]).abs() % n
        return torch.minimum(d, n - d)

    return distance


def great_circle_distance(
    lat1: torch.Tensor, lon1: torch.Tensor, lat2: torch.Tensor, lon2: torch.Tensor
) -> torch.Tensor:
    """Great-circle distance in km between points in degrees (haversine), broadcasting."""
    p1, p2 = torch.deg2rad(lat1), torch.deg2rad(lat2)
    dp, dl = p2 - p1, torch.deg2rad(lon2 - lon1)
    a = torch.sin(dp / 2) ** 2 + torch.cos(p1) * torch.cos(p2) * torch.sin(dl / 2) ** 2
    return 2.0 * EARTH_RADIUS_KM * torch.asin(a.clamp(0.0, 1.0).sqrt())


def grid_distance(lat: torch.Tensor, lon: torch.Tensor) -> DistanceFn:
    """Distance (km) from the components of a (..., lat, lon) state to observations at
    ``obs_locations`` (p, 2) = (lat, lon) degrees; leading state axes (variables)
    share their grid point's distance."""
    lat = torch.as_tensor(lat, dtype=torch.float64)
    lon = torch.as_tensor(lon, dtype=torch.float64)
    n_grid = lat.numel() * lon.numel()
    on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def distance(state_index: torch.Tensor, obs_locations: Any) -> torch.Tensor:
        dev = state_index.device
        loc = torch.as_tensor(obs_locations, dtype=torch.float64).to(dev)
        if loc.ndim != 2 or loc.shape[1] != 2:
            raise ValueError(f"obs locations must be (p, 2) lat/lon, got {tuple(loc.shape)}")
        # the grid is copied to the rows' device once, not once per chunk of rows
        if dev not in on_device:
            on_device[dev] = (lat.to(dev), lon.to(dev))
        lat_d, lon_d = on_device[dev]
        g = state_index % n_grid
        la, lo = lat_d[g // lon.numel()], lon_d[g % lon.numel()]
        return great_circle_distance(la[:, None], lo[:, None], loc[None, :, 0], loc[None, :, 1])

    return distance


@dataclass(frozen=True)
class LETKF:
    """LETKF configuration; call :meth:`analysis`.

    Attributes:
        radius: localisation radius (units of the distance); None = global ETKF.
        distance: callable distance(state_index, obs_locations) -> (n, p), or a
            precomputed (n_state, p) tensor; needed when radius is set.
        inflation: multiplicative inflation lambda >= 1 of the background covariance.
        rtps: relaxation-to-prior-spread factor alpha in [0, 1].
        chunk: state components per batched eigen-decomposition.
    """

    radius: float | None = None
    distance: Any = None
    inflation: float = 1.0
    rtps: float = 0.0
    chunk: int = 4096

    def __post_init__(self) -> None:
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

    def settings(self) -> dict[str, Any]:
        return {"radius": self.radius, "inflation": self.inflation, "rtps": self.rtps,
                "localisation": "Gaspari-Cohn, c = radius * sqrt(10/3)"}

    def __call__(self, prior: torch.Tensor, y: torch.Tensor, obs_operator: Any, *,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        del generator  # deterministic
        return self.analysis(prior, y, obs_operator)

    def _rho(self, rows: torch.Tensor, locations: Any, valid: torch.Tensor) -> torch.Tensor:
        if isinstance(self.distance, torch.Tensor):
            d = self.distance.to(rows.device)[rows]
        else:
            d = self.distance(rows, locations)
        if d.shape != (rows.numel(), valid.numel()):
            raise ValueError(f"distance gave shape {tuple(d.shape)}, expected "
                             f"({rows.numel()}, {valid.numel()}) state x observations")
        return gaspari_cohn(d[:, valid] / (self.radius * _GC_SCALE))

    def analysis(self, prior_ensemble: torch.Tensor, y: torch.Tensor,
                 obs_operator: Any) -> torch.Tensor:
        """Analysis ensemble (M, *state_shape); NaN in y are left out (with a warning)."""
        check_ensemble("prior_ensemble", prior_ensemble)
        m, state_shape = prior_ensemble.shape[0], tuple(prior_ensemble.shape[1:])
        dtype = prior_ensemble.dtype
        with torch.no_grad():
            hx = obs_operator(prior_ensemble)
        y = torch.as_tensor(y, dtype=dtype, device=prior_ensemble.device)
        std = torch.as_tensor(obs_operator.error.std, dtype=dtype, device=y.device)
        _, valid = observation_mask(y, hx, std)
        valid = valid.flatten()
        r_inv = (1.0 / std.square()).expand(y.shape).flatten()[valid]
        locations = getattr(obs_operator, "locations", None)
        if self.radius is not None and locations is None and not isinstance(
            self.distance, torch.Tensor
        ):
            raise ValueError("localisation needs obs_operator.locations (or a distance matrix)")

        xb = prior_ensemble.reshape(m, -1)
        xmean = xb.mean(0)
        xpert = (xb - xmean).T  # (n, M)
        hxf = hx.reshape(m, -1)[:, valid]
        ypert = (hxf - hxf.mean(0)).T  # (p, M)
        innov = y.flatten()[valid] - hxf.mean(0)  # (p,)
        outer = (ypert[:, :, None] * ypert[:, None, :]).reshape(-1, m * m)  # (p, M^2)
        yd = ypert * innov[:, None]  # (p, M)
        eye = torch.eye(m, dtype=dtype, device=xb.device)
        n = xb.shape[1]
        increment = torch.empty_like(xmean)
        xa_pert = torch.empty_like(xpert)
        for start in range(0, n, self.chunk):
            rows = torch.arange(start, min(start + self.chunk, n), device=xb.device)
            if self.radius is None:
                c = (r_inv @ outer).reshape(1, m, m).expand(rows.numel(), m, m)
                b = (r_inv @ yd).expand(rows.numel(), m)
            else:
                w = self._rho(rows, locations, valid).to(dtype) * r_inv  # (chunk, p)
                used = (w > 0).any(0)  # observations seen by this chunk only
                w = w[:, used]
                c = (w @ outer[used]).reshape(-1, m, m)
                b = w @ yd[used]
            a = (m - 1) / self.inflation * eye + c
            lam, q = torch.linalg.eigh(a)
            qt = q.transpose(1, 2)
            wa = q @ ((qt @ b[:, :, None]) / lam[:, :, None])  # A^{-1} b, (chunk, M, 1)
            wroot = q @ (((m - 1) / lam).sqrt()[:, :, None] * qt)  # [(M-1) A^{-1}]^{1/2}
            xr = xpert[rows, None, :]  # (chunk, 1, M)
            increment[rows] = (xr @ wa).reshape(-1)
            xa_pert[rows] = (xr @ wroot).squeeze(1)
        if self.rtps > 0:
            sb = xpert.std(1, keepdim=True)
            sa = xa_pert.std(1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
            xa_pert = xa_pert * (1.0 + self.rtps * (sb - sa) / sa)
        return (xmean + increment + xa_pert.T).reshape(m, *state_shape)
