"""Domain localisation shared by the local filters (LETKF, kernel EnSF).

Hunt, Kostelich & Szunyogh (2007), Sec. 2.3, with R-localisation: at state
component i the observation o enters with precision rho_io / r_o, rho the
Gaspari-Cohn (1999, Eq. 4.10) taper of distance / c. The radius follows DAPPER's
convention: c = radius * sqrt(10/3) (the taper then matches a Gaussian of length
``radius`` near 0) and observations beyond 2c are dropped.

Distances: :func:`periodic_distance` (Lorenz-96 ring) and :func:`grid_distance` (great
circle on a (variable, lat, lon) state) are geometries (:mod:`da.filters.neighbours`):
each local domain then meets only the observations within 2c, found by a k-d tree,
in O(d) time and memory. Any other callable ``distance(state_index (n,), obs_locations)
-> (n, p)`` or a precomputed (n_state, p) matrix is used densely (O(d p); the
reference the neighbour search is tested against).

:func:`local_statistics` yields, for batches of local domains, the three
ensemble-space quantities every local square-root or mixture analysis needs:
Y^T R_loc^{-1} Y (M x M), Y^T R_loc^{-1} d (M) and d^T R_loc^{-1} d, batched over the
domains -- no Python loop over grid points.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from tfda.da._checks import observation_mask
from tfda.da.batched import matmul
from tfda.da.filters.neighbours import (
    Geometry,
    GridDistance,
    RingDistance,
    element_budget,
    site_blocks,
    supports_neighbours,
)
from tfda.geo import great_circle_km as great_circle_distance

__all__ = ["DistanceFn", "Geometry", "GridDistance", "RingDistance", "Sites",
           "apply_site_transforms", "gaspari_cohn", "great_circle_distance", "grid_distance",
           "grid_sites", "local_statistics", "localisation_weights", "periodic_distance",
           "prepare_observations", "taper_support"]

DistanceFn = Callable[[torch.Tensor, Any], torch.Tensor]
_GC_SCALE = math.sqrt(10.0 / 3.0)
_BLOCK = 32  # domains per spatial block: the candidates of 32 neighbours overlap well
_CPU_PIECE = 1 << 17  # numbers per taper temporary on a CPU (1 MB in float64)


def taper_support(radius: float) -> float:
    """2c, the distance beyond which the Gaspari-Cohn taper of ``radius`` is zero."""
    return 2.0 * radius * _GC_SCALE


def gaspari_cohn(r: torch.Tensor) -> torch.Tensor:
    """Gaspari & Cohn (1999) Eq. (4.10), compactly supported 5th-order taper of r = dist / c."""
    r = r.abs()
    inner = (((-0.25 * r + 0.5) * r + 0.625) * r - 5.0 / 3.0) * r**2 + 1.0
    outer = ((((r / 12.0 - 0.5) * r + 0.625) * r + 5.0 / 3.0) * r - 5.0) * r + 4.0
    outer = outer - 2.0 / (3.0 * r.clamp_min(1e-12))
    out = torch.where(r <= 1.0, inner, torch.where(r < 2.0, outer, torch.zeros_like(r)))
    return out.clamp_min(0.0)


def periodic_distance(n: int) -> RingDistance:
    """Distance on a ring of ``n`` points (Lorenz-96): min(|i - l|, n - |i - l|)."""
    return RingDistance(n)


def grid_distance(lat: torch.Tensor, lon: torch.Tensor) -> GridDistance:
    """Distance (km) from the components of a (..., lat, lon) state to observations at
    ``obs_locations`` (p, 2) = (lat, lon) degrees; leading state axes (variables)
    share their grid point's distance."""
    return GridDistance(lat, lon)


@dataclass(frozen=True)
class Sites:
    """Positions shared by several state components (and observations).

    ``state_site`` (n_state,) gives each component's site; ``locations`` the sites'
    positions, passed to the distance as observation locations (its state index is then
    the site index). One local analysis per site serves all of its components (the
    LETKF's usual grid-column domain). ``obs_site`` (n_obs,) gives each observation's
    site, when observations sit on sites (their moments are then summed per site
    first); None when they lie elsewhere (stations), at the operator's ``locations``.
    ``domains``: a slab of a sharded analysis analyses only its first sites; the others
    are where its halo's observations sit.
    :func:`grid_sites` builds them for a (variable, lat, lon) state.
    """

    state_site: torch.Tensor
    obs_site: torch.Tensor | None
    locations: torch.Tensor
    domains: int | None = None  # only the first ``domains`` sites are analysed (a slab)

    @property
    def n_domains(self) -> int:
        return len(self.locations) if self.domains is None else self.domains


def grid_sites(lat: torch.Tensor, lon: torch.Tensor, n_variables: int, *,
               obs_index: torch.Tensor | None = None, on_grid: bool = True) -> Sites:
    """Sites of a (variable, lat, lon) state: its grid points, for :func:`grid_distance`
    (whose state index is taken modulo the grid). Observations sit on the sites of the
    components ``obs_index`` (flat state indices; None: every component, H = I), or, with
    ``on_grid=False``, elsewhere (the operator's locations)."""
    lat = torch.as_tensor(lat, dtype=torch.float64)
    lon = torch.as_tensor(lon, dtype=torch.float64)
    la, lo = torch.meshgrid(lat, lon, indexing="ij")
    n_grid = la.numel()
    site = torch.arange(n_variables * n_grid) % n_grid
    obs_site = None if not on_grid else site if obs_index is None else site[obs_index]
    return Sites(site, obs_site, torch.stack([la.flatten(), lo.flatten()], dim=1))


def _moments(ypert: torch.Tensor, innov: torch.Tensor) -> torch.Tensor:
    """Per observation o, the row [y_o y_o^T (M^2), y_o d_o (M), d_o^2]: (..., M^2 + M + 1)."""
    outer = (ypert[..., :, None] * ypert[..., None, :]).flatten(-2)
    return torch.cat([outer, ypert * innov[..., None], (innov * innov)[..., None]], dim=-1)


def _split(stats: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(D, M^2 + M + 1) -> Y^T R^-1 Y (D, M, M), Y^T R^-1 d (D, M), d^T R^-1 d (D,)."""
    return stats[:, : m * m].reshape(-1, m, m), stats[:, m * m: m * m + m], stats[:, -1]


Statistics = Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


def local_statistics(
    ypert: torch.Tensor,
    innov: torch.Tensor,
    r_inv: torch.Tensor,
    n_state: int,
    *,
    radius: float | None,
    distance: Any,
    locations: Any,
    valid: torch.Tensor,
    chunk: int,
    offset: int = 0,
    sites: Sites | None = None,
) -> Statistics:
    """Yield (rows, Y^T R_loc^-1 Y, Y^T R_loc^-1 d, d^T R_loc^-1 d) per batch of domains.

    Args:
        ypert: observation-space perturbations Y of the used observations, (p, M).
        innov: their innovations d, (p,); r_inv: their precisions 1 / r_o, (p,).
        n_state: number of state components (of this shard).
        radius: localisation radius (units of the distance); None = global.
        distance: a :class:`da.filters.neighbours.Geometry` (neighbour search, O(d)),
            another callable or an (n_state, p_all) matrix (dense, O(d p)).
        locations: the positions of all observations (p_all, ...).
        valid: (p_all,) mask of the observations in use (the rows of ``ypert``).
        chunk: domains per batch (at most).
        offset: global index of the first component (a shard of the state).
        sites: one domain per site instead of per component (:class:`Sites`).

    The domains are the state components 0 .. n_state - 1 (local to the shard) or the
    sites; ``rows`` (D,) lists the domains of a batch, in no particular order. Shapes
    yielded: (D,), (D, M, M), (D, M), (D,).
    """
    m = ypert.shape[1]
    n_domains = n_state if sites is None else sites.n_domains
    if radius is None:
        total = r_inv @ _moments(ypert, innov)
        for start in range(0, n_domains, chunk):
            rows = torch.arange(start, min(start + chunk, n_domains), device=ypert.device)
            yield rows, *_split(total.expand(rows.numel(), -1), m)
        return
    source = _Sources.build(ypert, innov, r_inv, locations, valid, sites)
    if supports_neighbours(distance):
        yield from _neighbour_statistics(source, m, n_state, radius=radius, geometry=distance,
                                         chunk=chunk, offset=offset, sites=sites)
    else:
        yield from _dense_statistics(source, m, n_domains, radius=radius, distance=distance,
                                     chunk=chunk, offset=offset)


@dataclass(frozen=True)
class _Sources:
    """What the local sums run over: the used observations one by one (``moments`` None:
    made per batch from ``ypert``, weights rho / r_o), or summed per site (``moments``
    (n_groups, M^2 + M + 1) with the precision folded in, weights rho)."""

    ypert: torch.Tensor
    innov: torch.Tensor
    r_inv: torch.Tensor
    positions: Any
    moments: torch.Tensor | None
    valid: torch.Tensor  # the used columns of ``positions``: observations, or observed sites

    @classmethod
    def build(cls, ypert, innov, r_inv, locations, valid, sites) -> _Sources:
        if sites is None or sites.obs_site is None:
            positions = None if locations is None else torch.as_tensor(locations)
            return cls(ypert, innov, r_inv, positions, None, valid)
        # only the sites that hold an observation get a row of summed moments
        observed, group = torch.unique(sites.obs_site.to(ypert.device)[valid],
                                       return_inverse=True)
        moments = torch.zeros(len(observed), ypert.shape[1] ** 2 + ypert.shape[1] + 1,
                              dtype=ypert.dtype, device=ypert.device)
        moments.index_add_(0, group, _moments(ypert, innov) * r_inv[:, None])
        mask = torch.zeros(len(sites.locations), dtype=torch.bool, device=ypert.device)
        mask[observed] = True
        return cls(ypert, innov, r_inv, sites.locations, moments, mask)

    def stats(self, cand: torch.Tensor) -> torch.Tensor:
        """Moments of candidate sources ``cand`` (any shape, -1 = none) (..., Q)."""
        safe = cand.clamp_min(0)
        if self.moments is not None:
            return self.moments[safe]
        return _moments(self.ypert[safe], self.innov[safe])

    def precision(self, cand: torch.Tensor) -> torch.Tensor:
        """The factor the taper is multiplied by: 1 / r_o, or 1 for summed moments."""
        if self.moments is not None:
            return (cand >= 0).to(self.ypert.dtype)
        return torch.where(cand >= 0, self.r_inv[cand.clamp_min(0)], 0.0)


def _dense_statistics(source: _Sources, m: int, n_domains: int, *, radius: float,
                      distance: Any, chunk: int, offset: int) -> Statistics:
    """The reference path: each batch's distance to every observation, O(d p)."""
    everything = torch.arange(int(source.valid.sum()), device=source.ypert.device)
    for start in range(0, n_domains, chunk):
        rows = torch.arange(start, min(start + chunk, n_domains), device=source.ypert.device)
        w = localisation_weights(rows + offset, radius, distance, source.positions,
                                 source.valid)
        w = w.to(source.ypert.dtype) * source.precision(everything)
        used = (w > 0).any(0)  # observations seen by this batch only
        yield rows, *_split(w[:, used] @ source.stats(everything[used]), m)


def _neighbour_statistics(source: _Sources, m: int, n_state: int, *, radius: float,
                          geometry: Geometry, chunk: int, offset: int,
                          sites: Sites | None) -> Statistics:
    """The O(d) path: compact blocks of domains, each with the sources near it only."""
    device, dtype = source.ypert.device, source.ypert.dtype
    if sites is None:
        domains = geometry.positions(torch.arange(offset, offset + n_state))
    else:
        domains = torch.as_tensor(sites.locations, dtype=torch.float64)[: sites.n_domains]
    positions = torch.as_tensor(source.positions, dtype=torch.float64)[source.valid.cpu()]
    cutoff = taper_support(radius)
    blocks = site_blocks(geometry, domains, positions, cutoff, size=_BLOCK)
    domains, positions = domains.to(device), positions.to(device)
    budget = element_budget(device, dtype)
    # on a CPU the taper's temporaries are made in pieces that stay in the cache: a fresh
    # large temporary per elementwise operation is page-faulted in anew (much slower per
    # element in the development VM); the batch handed on stays as large as before
    piece = _CPU_PIECE if device.type == "cpu" else budget
    for run in blocks.runs(budget // (_BLOCK + m * m + m + 1), max_blocks=max(chunk // _BLOCK, 1)):
        rows, cand = (t.to(device) for t in blocks.batch(run))
        stats = torch.empty(len(rows), _BLOCK, m * m + m + 1, dtype=dtype, device=device)
        width = cand.shape[1]
        step = max(piece // (_BLOCK * width), 1)
        cols = max(piece // _BLOCK, 1)  # a block wider than a piece is summed in parts
        for start in range(0, len(rows), step):
            part = slice(start, start + step)
            where = domains[rows[part].clamp_min(0)]  # padding rows: dropped below
            stats[part] = _local_sums(source, geometry, radius, where, positions,
                                      cand[part, :cols], dtype)
            for col in range(cols, width, cols):
                stats[part] += _local_sums(source, geometry, radius, where, positions,
                                           cand[part, col:col + cols], dtype)
        keep = rows >= 0
        yield rows[keep], *_split(stats[keep], m)


def _local_sums(source: _Sources, geometry: Geometry, radius: float, domains: torch.Tensor,
                positions: torch.Tensor, cand: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """sum_o rho(domain, o) / r_o [moments of o] over the candidates of blocks of domains:
    (blocks, size, M^2 + M + 1); ``cand`` (blocks, width), -1 padded."""
    d = geometry.between(domains[:, :, None], positions[cand.clamp_min(0)][:, None, :])
    # the taper in the analysis' dtype (distances in float64: nearby points stay exact)
    w = gaspari_cohn((d / (radius * _GC_SCALE)).to(dtype)) * source.precision(cand)[:, None, :]
    return matmul(w, source.stats(cand))


def prepare_observations(
    prior: torch.Tensor, y: torch.Tensor, obs_operator: Any, *, hx: torch.Tensor | None,
    radius: float | None, distance: Any, sites: Sites | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Any]:
    """What every local analysis reads of the observations: (H(x) (M, *obs), y with NaN
    filled, the (p_all,) mask of used observations, their precisions 1 / r_o, their
    locations); checked (shapes, errors, NaN: :func:`da._checks.observation_mask`)."""
    if hx is None:
        with torch.no_grad():
            hx = obs_operator(prior)
    y = torch.as_tensor(y, dtype=prior.dtype, device=prior.device)
    std = torch.as_tensor(obs_operator.error.std, dtype=prior.dtype, device=prior.device)
    y_filled, valid = observation_mask(y, hx, std)
    valid = valid.flatten()
    r_inv = (1.0 / std.square()).expand(y.shape).flatten()[valid]
    locations = getattr(obs_operator, "locations", None)
    if (radius is not None and (sites is None or sites.obs_site is None)
            and locations is None and not isinstance(distance, torch.Tensor)):
        raise ValueError("localisation needs obs_operator.locations (or a distance matrix)")
    return hx, y_filled, valid, r_inv, locations


def apply_site_transforms(xmean: torch.Tensor, xpert: torch.Tensor, transforms: torch.Tensor,
                          state_site: torch.Tensor) -> torch.Tensor:
    """x_a[i, j] = xbar_i + sum_k T_s[j, k] X[i, k] with s the site of component i:
    (n, M), with no (n, M, M) temporary.

    On a (variable, lat, lon) state with one site per grid column (``grid_sites``) the
    components of a site are every n_sites-th: one batched product per site, (M, M) by
    (M, variables). Otherwise components are taken in bounded batches."""
    n, m = xpert.shape
    n_sites = transforms.shape[0]
    state_site = state_site.to(xpert.device)
    if n % n_sites == 0 and torch.equal(
            state_site, torch.arange(n, device=xpert.device) % n_sites):
        columns = xpert.reshape(n // n_sites, n_sites, m).permute(1, 2, 0)  # (site, M, var)
        xa = matmul(transforms, columns).permute(2, 0, 1).reshape(n, m)
        return xa.add_(xmean[:, None])
    xa = torch.empty_like(xpert)
    step = max(element_budget(xpert.device, xpert.dtype) // (m * m), 1)
    for start in range(0, n, step):
        part = slice(start, start + step)
        t = transforms[state_site[part]]
        xa[part] = xmean[part, None] + matmul(t, xpert[part, :, None]).squeeze(-1)
    return xa


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
