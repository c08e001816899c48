"""Domain localisation shared by the local filters (LETKF, kernel EnSF).

Hunt, Kostelich & Szunyogh (2007), Sec. 2.3, with R-localisation: at state
component i the observation o enters with precision rho_io / r_o, rho the
Gaspari-Cohn (1999, Eq. 4.10) taper of distance / c. The radius follows DAPPER's
convention: c = radius * sqrt(10/3) (the taper then matches a Gaussian of length
``radius`` near 0) and observations beyond 2c are dropped.

Distances come from a callable ``distance(state_index (n,), obs_locations) -> (n, p)``
or a precomputed (n_state, p) matrix; :func:`periodic_distance` (Lorenz-96 ring) and
:func:`grid_distance` (great circle on a (variable, lat, lon) state) are provided.

:func:`local_statistics` yields, for chunks of state components, the three
ensemble-space quantities every local square-root or mixture analysis needs:
Y^T R_loc^{-1} Y (M x M), Y^T R_loc^{-1} d (M) and d^T R_loc^{-1} d, batched over the
chunk -- no Python loop over grid points.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from tfda.geo import great_circle_km as great_circle_distance

DistanceFn = Callable[[torch.Tensor, Any], torch.Tensor]
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
class Sites:
    """Positions shared by several state components and observations.

    ``state_site`` (n_state,) and ``obs_site`` (n_obs,) give each component's and each
    observation's site index; ``locations`` the sites' positions, passed to the distance
    callable as observation locations (its state index is then the site index).
    :func:`grid_sites` builds them for a (variable, lat, lon) state observed everywhere.
    """

    state_site: torch.Tensor
    obs_site: torch.Tensor
    locations: torch.Tensor


def grid_sites(lat: torch.Tensor, lon: torch.Tensor, n_variables: int) -> Sites:
    """Sites of a (variable, lat, lon) state observed at every component (H = I): the grid
    points, for :func:`grid_distance` (whose state index is taken modulo the grid)."""
    lat = torch.as_tensor(lat, dtype=torch.float64)
    lon = torch.as_tensor(lon, dtype=torch.float64)
    la, lo = torch.meshgrid(lat, lon, indexing="ij")
    n_grid = la.numel()
    site = torch.arange(n_variables * n_grid) % n_grid
    return Sites(site, site, torch.stack([la.flatten(), lo.flatten()], dim=1))


def observation_moments(
    ypert: torch.Tensor, innov: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per observation o: y_o y_o^T (p, M^2), y_o d_o (p, M), d_o^2 (p,)."""
    m = ypert.shape[1]
    outer = (ypert[:, :, None] * ypert[:, None, :]).reshape(-1, m * m)
    return outer, ypert * innov[:, None], innov * innov


def site_moments(
    ypert: torch.Tensor, innov: torch.Tensor, r_inv: torch.Tensor, obs_site: torch.Tensor,
    n_sites: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The precision-weighted moments summed over the observations at each site.

    Where the taper depends only on where an observation is (a grid point shared by
    several variables), the localised sums over observations become sums over sites:
    the distance block shrinks from components x observations to sites x sites, and
    one local analysis serves every variable at a site (the LETKF's usual grid-column
    domain)."""
    outer, yd, dd = observation_moments(ypert, innov)
    zeros = torch.zeros
    kw = {"dtype": ypert.dtype, "device": ypert.device}
    return (zeros(n_sites, outer.shape[1], **kw).index_add_(0, obs_site, outer * r_inv[:, None]),
            zeros(n_sites, yd.shape[1], **kw).index_add_(0, obs_site, yd * r_inv[:, None]),
            zeros(n_sites, **kw).index_add_(0, obs_site, dd * r_inv))


def local_statistics(
    moments: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    r_inv: torch.Tensor,
    n_state: int,
    *,
    radius: float | None,
    distance: Any,
    locations: Any,
    valid: torch.Tensor,
    chunk: int,
    offset: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (rows, Y^T R_loc^-1 Y, Y^T R_loc^-1 d, d^T R_loc^-1 d) per chunk of components.

    Args:
        moments: :func:`observation_moments` of the used observations (or
            :func:`site_moments`, with ``r_inv`` ones and ``locations`` the sites').
        r_inv: the observations' precisions 1 / r_o, (p,).
        n_state: number of state components (or sites).
        radius: localisation radius (units of the distance); None = global.
        distance: callable or (n_state, p_all) matrix, as in the module docstring.
        locations: observation locations passed to a distance callable.
        valid: (p_all,) mask of the observations in use (the moments' rows).
        chunk: state components per batch.
        offset: global index of the first component (a shard of the state: the
            distances are those of components offset .. offset + n_state - 1).

    The rows yielded are local (0 .. n_state - 1). Shapes yielded: rows (D,), (D, M, M),
    (D, M), (D,) with D <= chunk.
    """
    outer, yd, dd = moments
    m = yd.shape[1]
    for start in range(0, n_state, chunk):
        rows = torch.arange(start, min(start + chunk, n_state), device=yd.device)
        if radius is None:
            yield (rows, (r_inv @ outer).reshape(1, m, m).expand(rows.numel(), m, m),
                   (r_inv @ yd).expand(rows.numel(), m), (r_inv @ dd).expand(rows.numel()))
            continue
        w = localisation_weights(rows + offset, radius, distance, locations, valid)
        w = w.to(yd.dtype) * r_inv
        used = (w > 0).any(0)  # observations seen by this chunk only
        w = w[:, used]
        yield rows, (w @ outer[used]).reshape(-1, m, m), w @ yd[used], w @ dd[used]


def localisation_weights(
    rows: torch.Tensor, radius: float, distance: Any, locations: Any, valid: torch.Tensor
) -> torch.Tensor:
    """Gaspari-Cohn weights rho (len(rows), n_valid) of the used observations."""
    if isinstance(distance, torch.Tensor):
        d = distance.to(rows.device)[rows]
    else:
        d = distance(rows, locations)
    if d.shape != (rows.numel(), valid.numel()):
        raise ValueError(f"distance gave shape {tuple(d.shape)}, expected "
                         f"({rows.numel()}, {valid.numel()}) state x observations")
    return gaspari_cohn(d[:, valid] / (radius * _GC_SCALE))
