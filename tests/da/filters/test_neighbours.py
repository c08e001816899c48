"""The neighbour search behind the local analyses (da.filters.neighbours): geometries whose
chord grows with their distance, compact blocks, candidate sets that contain every
neighbour, and filters that give the dense path's answers without its O(d p) cost."""

import math

import pytest
import torch

from tfda.da.filters import LETKF, EnSF, grid_distance, local, periodic_distance
from tfda.da.filters.local import Sites, grid_sites
from tfda.da.filters.neighbours import GridDistance, RingDistance, compact_blocks, site_blocks
from tfda.geo import great_circle_km
from tfda.observations.operators import Arctan, Identity, Subset

F64 = torch.float64


def _sphere_points(n: int, g: torch.Generator) -> torch.Tensor:
    lat = torch.rad2deg(torch.asin(2 * torch.rand(n, generator=g, dtype=F64) - 1))
    return torch.stack([lat, 360 * torch.rand(n, generator=g, dtype=F64)], dim=1)


def test_ring_distance_is_the_periodic_formula_and_its_chord_is_monotone():
    ring = RingDistance(50)
    i = torch.arange(50)
    loc = torch.tensor([0.0, 3.5, 24.0, 49.0], dtype=F64)
    d = (i.to(F64)[:, None] - loc[None]).abs() % 50
    assert torch.equal(ring(i, loc), torch.minimum(d, 50 - d))
    pts = ring.embed(i.to(F64))
    chords = torch.as_tensor(((pts[:, None] - pts[None]) ** 2).sum(-1) ** 0.5)
    dists = ring(i, i.to(F64))
    for cutoff in (0.5, 3.0, 7.3, 25.0, 40.0):  # within the distance <=> within the chord
        assert torch.equal(dists <= cutoff, chords <= ring.chord(cutoff) * (1 + 1e-12))


def test_grid_distance_is_the_haversine_and_its_chord_is_monotone():
    g = torch.Generator().manual_seed(1)
    lat = torch.linspace(80, -80, 9, dtype=F64)
    lon = torch.arange(0, 360, 30, dtype=F64)
    grid = GridDistance(lat, lon)
    obs = _sphere_points(40, g)
    idx = torch.arange(2 * 9 * 12)  # two variables share their grid point
    pos = grid.positions(idx)
    ref = great_circle_km(pos[:, None, 0], pos[:, None, 1], obs[None, :, 0], obs[None, :, 1])
    assert torch.equal(grid(idx, obs), ref)
    a, b = grid.embed(pos), grid.embed(obs)
    chords = torch.as_tensor(((a[:, None] - b[None]) ** 2).sum(-1) ** 0.5)
    for cutoff in (100.0, 1500.0, 8000.0, 19000.0):
        assert torch.equal(ref <= cutoff, chords <= grid.chord(cutoff) * (1 + 1e-12))


def test_compact_blocks_cover_every_site_once_in_small_boxes():
    n = 1000
    ring = RingDistance(n)
    blocks = compact_blocks(ring.embed(torch.arange(n, dtype=F64)), 32)
    sites = blocks[blocks >= 0]
    assert sorted(sites.tolist()) == list(range(n))
    assert blocks.shape[1] == 32
    for row in blocks:  # an arc of the ring: its spread is its length
        row = torch.as_tensor(row[row >= 0], dtype=F64)
        assert ring(row, row).max() <= 32


@pytest.mark.parametrize("geometry", ["ring", "sphere"])
def test_candidates_of_a_block_hold_every_source_within_the_cutoff(geometry):
    g = torch.Generator().manual_seed(2)
    if geometry == "ring":
        geo, cutoff = RingDistance(500), 9.0
        sites = torch.arange(500, dtype=F64)
        sources = 500 * torch.rand(300, generator=g, dtype=F64)
    else:
        geo, cutoff = GridDistance(torch.zeros(1), torch.zeros(1)), 900.0
        sites, sources = _sphere_points(700, g), _sphere_points(400, g)
    blocks = site_blocks(geo, sites, sources, cutoff, size=16)
    near = geo.between(sites[:, None], sources[None]) < cutoff
    for b in range(len(blocks)):
        rows = blocks.sites[b][blocks.sites[b] >= 0]
        cand = set(blocks.candidates(b).tolist())
        assert len(cand) == int(blocks.count[b])
        needed = set(torch.nonzero(near[rows].any(0)).flatten().tolist())
        assert needed <= cand


def _dense(geometry):
    """The same distance as a plain callable: the filters then take the dense O(d p) path."""
    return lambda rows, locations: geometry(rows, locations)


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_ring_analyses_equal_the_dense_path():
    g = torch.Generator().manual_seed(3)
    n, m = 400, 10
    prior = 2.0 + torch.randn(m, n, generator=g, dtype=F64)
    op = Subset(0.1, indices=torch.arange(0, n, 2))
    y = torch.randn(n // 2, generator=g, dtype=F64)
    y[7] = float("nan")
    ring = periodic_distance(n)
    for make in (lambda d: LETKF(radius=4.0, distance=d, inflation=1.05, rtps=0.3, chunk=50),
                 lambda d: EnSF(radius=4.0, distance=d, steps=5, bandwidth=0.9,
                                domains_per_batch=50)):
        with pytest.warns(UserWarning, match="NaN"):
            fast, dense = make(ring)(prior, y, op), make(_dense(ring))(prior, y, op)
        assert _close(fast, dense) <= 1e-10
    with pytest.warns(UserWarning, match="NaN"):
        arctan = Arctan(0.05, locations=torch.arange(n, dtype=F64))
        y2 = torch.randn(n, generator=g, dtype=F64).atan()
        y2[3] = float("nan")
        fast = EnSF(radius=4.0, distance=ring, steps=4)(prior, y2, arctan)
        dense = EnSF(radius=4.0, distance=_dense(ring), steps=4)(prior, y2, arctan)
    assert _close(fast, dense) <= 1e-10


@pytest.fixture(params=[None, 1, 3 * local._BLOCK], ids=["whole", "blocks", "columns"])
def taper_pieces(request, monkeypatch):
    """Also run with the CPU's taper temporaries cut to one block each (the piece loop),
    and to three candidates of one block (a block's sum in parts)."""
    if request.param is not None:
        monkeypatch.setattr(local, "_CPU_PIECE", request.param)


def test_grid_analyses_equal_the_dense_path_with_sites_and_stations(taper_pieces):
    g = torch.Generator().manual_seed(4)
    lat = torch.linspace(75, -75, 11, dtype=F64)
    lon = torch.arange(0, 360, 15, dtype=F64)
    nv, m = 3, 8
    shape = (nv, len(lat), len(lon))
    prior = torch.randn(m, *shape, generator=g, dtype=F64)
    geo = grid_distance(lat, lon)
    la, lo = torch.meshgrid(lat, lon, indexing="ij")
    where = torch.stack([la.flatten(), lo.flatten()], 1).repeat(nv, 1)
    full = Identity(0.7, locations=where)
    y = torch.randn(shape, generator=g, dtype=F64)
    sites = grid_sites(lat, lon, nv)
    for kw in ({}, {"sites": sites}):
        for cls, opts in ((EnSF, {"steps": 4}), (LETKF, {"inflation": 1.1})):
            fast = cls(radius=1200.0, distance=geo, **opts, **kw)(prior, y, full)
            dense = cls(radius=1200.0, distance=_dense(geo), **opts, **kw)(prior, y, full)
            assert _close(fast, dense) <= 1e-10, (cls, kw)
    # stations: scattered points; one analysis per grid column (obs_site None) equals
    # one per component
    stations = _sphere_points(60, g)
    station_op = _Stations(stations, lat, lon, nv)
    ys = torch.randn(60, generator=g, dtype=F64)
    columns = Sites(sites.state_site, None, sites.locations)
    for cls, opts in ((EnSF, {"steps": 4}), (LETKF, {})):
        per_column = cls(radius=1500.0, distance=geo, sites=columns, **opts)(prior, ys,
                                                                            station_op)
        per_component = cls(radius=1500.0, distance=_dense(geo), **opts)(prior, ys, station_op)
        assert _close(per_column, per_component) <= 1e-10, cls


class _Stations:
    """Observe variable 0 at the grid point nearest each station (positions: the stations)."""

    def __init__(self, stations, lat, lon, nv):
        from tfda.observations.errors import DiagonalError

        i = (lat[None] - stations[:, :1]).abs().argmin(1)
        j = ((lon[None] - stations[:, 1:]) % 360).abs().argmin(1)
        self.index = i * len(lon) + j
        self.locations = stations
        self.error = DiagonalError(torch.full((len(stations),), 0.5, dtype=F64))

    def __call__(self, x):
        return x.reshape(x.shape[0], -1)[:, self.index]


def test_no_block_of_sites_by_observations_is_formed():
    """The cost that grew with d^2: distances are only ever taken on small blocks."""
    n = 20_000
    ring = periodic_distance(n)
    largest = []
    between = RingDistance.between

    def spy(self, a, b):
        out = between(self, a, b)
        largest.append(out.numel())
        return out

    g = torch.Generator().manual_seed(5)
    prior = torch.randn(4, n, generator=g, dtype=F64)
    op = Identity(1.0, locations=torch.arange(n, dtype=F64))
    try:
        RingDistance.between = spy
        LETKF(radius=2.0, distance=ring)(prior, torch.zeros(n, dtype=F64), op)
    finally:
        RingDistance.between = between
    assert largest and max(largest) <= 4096 * 64  # a batch of blocks, never n x n = 4e8
    # every site met at least its 2 x floor(2c) + 1 neighbours
    assert sum(largest) >= n * (2 * math.floor(2 * 2.0 * math.sqrt(10 / 3)) + 1)
