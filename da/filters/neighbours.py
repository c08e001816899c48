"""Which observations are near which analysis sites: the one neighbour search behind
every local analysis (LETKF, kernel EnSF, scattered points, the sharded halo).

A local analysis at a site needs only the observations within the taper's support
(2c, :mod:`da.filters.local`). Measuring the distance from every site to every
observation costs O(sites x observations) time and memory -- 1e12 numbers for a
FourCastNet-size state. Instead a geometry embeds positions in R^k such that the
straight-line (chord) distance grows with the geometry's own distance -- the ring of
Lorenz-96 on a circle, the sphere as unit vectors scaled by the Earth's radius -- so a
k-d tree (scipy's cKDTree, built once per analysis) answers "which observations lie
within 2c" exactly, with no false negatives. The sites are cut into small, spatially
compact blocks (a k-d partition of the embedded points); each block gets the
observations within (block radius + 2c) of its centre, a superset of every member's
neighbourhood, and the taper is then evaluated only on (block x candidates): the
time and memory per site are bounded by the local observation density, O(d) in all.

Two geometries are provided; both are also the dense distance callables of the
original contract ``distance(state_index (n,), obs_locations) -> (n, p)``:

* :class:`RingDistance` (Lorenz-96, positions in grid units, periodic);
* :class:`GridDistance` (great-circle km on a (variable, lat, lon) state).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from tfda.geo import EARTH_RADIUS_KM, great_circle_km

# chords are enlarged by this relative margin so round-off never drops a neighbour;
# extra candidates cost nothing (their taper is exactly 0 beyond 2c)
_MARGIN = 1e-9


@runtime_checkable
class Geometry(Protocol):
    """A distance with an embedding, so neighbours can be found without a dense matrix."""

    def positions(self, index: torch.Tensor) -> torch.Tensor:
        """Positions of state components ``index`` (the same form as observation
        locations: (n,) on a ring, (n, 2) lat/lon degrees on a grid)."""
        ...

    def between(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Elementwise distances between positions ``a`` and ``b`` (broadcasting)."""
        ...

    def embed(self, positions: torch.Tensor) -> np.ndarray:
        """Points (n, k) in R^k whose Euclidean distance grows with :meth:`between`."""
        ...

    def chord(self, distance: float) -> float:
        """The largest embedded distance of two positions ``distance`` apart."""
        ...


@dataclass(frozen=True)
class RingDistance:
    """Distance on a ring of ``n`` points (Lorenz-96): min(|i - l| mod n, n - ...)."""

    n: int

    def positions(self, index: torch.Tensor) -> torch.Tensor:
        return index.to(torch.float64)

    def between(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d = (a - b).abs() % self.n
        return torch.minimum(d, self.n - d)

    def embed(self, positions: torch.Tensor) -> np.ndarray:
        theta = 2.0 * math.pi * positions.detach().cpu().to(torch.float64).numpy() / self.n
        return (self.n / (2.0 * math.pi)) * np.stack([np.cos(theta), np.sin(theta)], axis=1)

    def chord(self, distance: float) -> float:
        half = min(distance, self.n / 2.0)
        return (self.n / math.pi) * math.sin(math.pi * half / self.n)

    def __call__(self, state_index: torch.Tensor, obs_locations: Any) -> torch.Tensor:
        loc = torch.as_tensor(obs_locations, dtype=torch.float64, device=state_index.device)
        return self.between(self.positions(state_index)[:, None], loc[None, :])


@dataclass(frozen=True)
class GridDistance:
    """Great-circle km from the components of a (..., lat, lon) state (leading axes,
    the variables, share their grid point) to (lat, lon) positions in degrees."""

    lat: torch.Tensor
    lon: torch.Tensor
    _on_device: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lat", torch.as_tensor(self.lat, dtype=torch.float64).cpu())
        object.__setattr__(self, "lon", torch.as_tensor(self.lon, dtype=torch.float64).cpu())

    def _grid(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # copied to a device once, not once per block of sites
        if device not in self._on_device:
            self._on_device[device] = (self.lat.to(device), self.lon.to(device))
        return self._on_device[device]

    def positions(self, index: torch.Tensor) -> torch.Tensor:
        lat, lon = self._grid(index.device)
        g = index % (lat.numel() * lon.numel())
        return torch.stack([lat[g // lon.numel()], lon[g % lon.numel()]], dim=-1)

    def between(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return great_circle_km(a[..., 0], a[..., 1], b[..., 0], b[..., 1])

    def embed(self, positions: torch.Tensor) -> np.ndarray:
        p = np.radians(positions.detach().cpu().to(torch.float64).numpy())
        cos_lat = np.cos(p[:, 0])
        return EARTH_RADIUS_KM * np.stack(
            [cos_lat * np.cos(p[:, 1]), cos_lat * np.sin(p[:, 1]), np.sin(p[:, 0])], axis=1)

    def chord(self, distance: float) -> float:
        return 2.0 * EARTH_RADIUS_KM * math.sin(min(distance / (2.0 * EARTH_RADIUS_KM),
                                                    math.pi / 2.0))

    def __call__(self, state_index: torch.Tensor, obs_locations: Any) -> torch.Tensor:
        loc = torch.as_tensor(obs_locations, dtype=torch.float64).to(state_index.device)
        if loc.ndim != 2 or loc.shape[1] != 2:
            raise ValueError(f"obs locations must be (p, 2) lat/lon, got {tuple(loc.shape)}")
        return self.between(self.positions(state_index)[:, None], loc[None, :])


def reach(geometry: Geometry, distance: float, extra: float = 0.0) -> float:
    """The embedded radius that holds every position within ``distance`` (plus ``extra``
    embedded units), enlarged so that round-off never drops a neighbour."""
    return (extra + geometry.chord(distance)) * (1.0 + _MARGIN) + _MARGIN


def compact_blocks(points: np.ndarray, size: int) -> np.ndarray:
    """Site indices (n_blocks, size), -1 padded: ``points`` (n, k) cut by recursive
    bisection along the widest axis of each piece (a k-d partition, all pieces of a level
    at once) until every piece holds at most ``size``, so every block is a small box."""
    n = len(points)
    order = np.arange(n)
    starts = np.array([0, n])
    while True:
        sizes = np.diff(starts)
        big = sizes > size
        if not big.any():
            break
        seg = np.repeat(np.arange(len(sizes)), sizes)
        pts = points[order]
        extent = np.maximum.reduceat(pts, starts[:-1]) - np.minimum.reduceat(pts, starts[:-1])
        axis = np.argmax(extent, axis=1)
        order = order[np.lexsort((pts[np.arange(n), axis[seg]], seg))]
        # split a piece of b blocks into b // 2 full blocks and the rest
        cut = starts[:-1][big] + size * (-(-sizes[big] // size) // 2)
        starts = np.union1d(starts, cut)
    sizes = np.diff(starts)
    block = np.repeat(np.arange(len(sizes)), sizes)
    padded = np.full((len(sizes), size), -1, dtype=np.int64)
    padded[block, np.arange(n) - starts[:-1][block]] = order
    return padded


@dataclass(frozen=True, eq=False)
class Blocks:
    """Sites grouped into compact blocks, and a k-d tree that finds their candidates.

    ``sites`` (n_blocks, size): site indices, -1 padding; ``count`` (n_blocks,): how many
    candidate sources each block has. A block's candidates (sorted source indices) are
    looked up when its batch is made (:meth:`batch`), so the candidate lists of all
    blocks are never held at once: at 721 x 1440 sites observed everywhere with a
    300 km radius they would be ~5e8 indices. Blocks are ordered by candidate count so
    that consecutive blocks pad to similar widths."""

    sites: torch.Tensor
    count: torch.Tensor
    centres: np.ndarray  # (n_blocks, dim) embedded block centres
    radii: np.ndarray  # (n_blocks,) chord radius that holds every candidate
    tree: Any  # scipy.spatial.cKDTree of the embedded sources

    def __len__(self) -> int:
        return self.sites.shape[0]

    def runs(self, max_width_items: int, max_blocks: int) -> list[slice]:
        """Runs of at most ``max_blocks`` consecutive blocks whose padded (blocks x width)
        stays under ``max_width_items`` (at least one block per run)."""
        out, start = [], 0
        counts = self.count.tolist()
        while start < len(counts):
            stop = start + 1
            while (stop < len(counts) and stop - start < max_blocks
                   and (stop + 1 - start) * counts[stop] <= max_width_items):
                stop += 1
            out.append(slice(start, stop))
            start = stop
        return out

    def candidates(self, block: int) -> torch.Tensor:
        """The sorted candidate sources of one block."""
        return self.batch(slice(block, block + 1))[1][0, : int(self.count[block])]

    def batch(self, run: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """(sites (B, size), candidates (B, width)) of a run of blocks, -1 padded."""
        count = self.count[run].numpy()
        width = max(int(count.max()), 1)
        cand = np.full((len(count), width), -1, dtype=np.int64)
        if count.sum():
            found = self.tree.query_ball_point(self.centres[run], self.radii[run],
                                               return_sorted=True)
            flat = np.concatenate([np.asarray(f, dtype=np.int64) for f in found])
            row = np.repeat(np.arange(len(count)), count)
            starts = np.concatenate([[0], np.cumsum(count)[:-1]])
            cand[row, np.arange(len(flat)) - starts[row]] = flat
        return self.sites[run], torch.from_numpy(cand)


def site_blocks(geometry: Geometry, site_positions: torch.Tensor,
                source_positions: torch.Tensor, cutoff: float, *, size: int = 32) -> Blocks:
    """Cut the sites into blocks of ``size`` and prepare, per block, the lookup of every
    source within ``cutoff`` (the geometry's distance) of any of its sites (and possibly
    a few more). Memory: O(sites + sources); the candidates come batch by batch."""
    from scipy.spatial import cKDTree

    sites = geometry.embed(site_positions)
    padded = compact_blocks(sites, size)
    pts = sites[np.maximum(padded, 0)]
    mask = (padded >= 0)[..., None]
    centre = (pts * mask).sum(1) / mask.sum(1)
    spread = np.sqrt((((pts - centre[:, None]) ** 2).sum(-1) * mask[..., 0]).max(1))
    radius = np.broadcast_to(reach(geometry, cutoff, spread), spread.shape)
    tree = cKDTree(geometry.embed(source_positions))
    count = np.asarray(tree.query_ball_point(centre, radius, return_length=True),
                       dtype=np.int64).reshape(len(padded))
    by_count = np.argsort(count, kind="stable")
    return Blocks(torch.from_numpy(padded[by_count]), torch.from_numpy(count[by_count]),
                  centre[by_count], np.ascontiguousarray(radius[by_count]), tree)


def element_budget(device: torch.device, dtype: torch.dtype) -> int:
    """How many numbers one temporary of a batch may hold: 1/64 of the memory free on
    ``device`` (CUDA), or of the machine's available memory, between 1e5 and 3e7."""
    free = None
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            free = None
    if free is None:
        free = 2 << 30
    itemsize = torch.empty((), dtype=dtype).element_size()
    return int(min(max(free // 64 // itemsize, 100_000), 30_000_000))


def supports_neighbours(distance: Any) -> bool:
    """Whether ``distance`` can find neighbours without a dense matrix."""
    return isinstance(distance, Geometry) and not isinstance(distance, torch.Tensor)
