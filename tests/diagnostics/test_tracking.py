"""Tracker tests on analytic Holland (1980) vortices placed at known sub-grid positions."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from tfda.diagnostics.tracking import (
    TrackerConfig,
    along_cross_track_error,
    bearing_deg,
    find_centres,
    relative_vorticity,
    track_storm,
)
from tfda.geo import KM_PER_DEG, great_circle_km

RHO = 1.15


def holland(lat, lon, centres, *, rmax_km, dp=4000.0, b=1.5, penv=101000.0, cyclonic=True):
    """msl, u, v (member, lat, lon) of Holland vortices centred at ``centres`` (member, 2).

    p(r) = p_c + dp exp(-(R/r)^B); the wind is the cyclostrophic Holland wind
    V(r) = sqrt(B dp/rho (R/r)^B exp(-(R/r)^B)), counter-clockwise in the north.
    """
    lat2, lon2 = np.meshgrid(lat, lon, indexing="ij")
    msl, us, vs = [], [], []
    for clat, clon in centres:
        r = np.maximum(great_circle_km(clat, clon, lat2, lon2), 1e-3)
        x = (rmax_km / r) ** b
        msl.append(penv - dp + dp * np.exp(-x))
        speed = np.sqrt(b * dp / RHO * x * np.exp(-x))
        towards = np.radians(bearing_deg(clat, clon, lat2, lon2) - (90.0 if cyclonic else -90.0))
        us.append(speed * np.sin(towards))
        vs.append(speed * np.cos(towards))
    as_t = lambda a: torch.tensor(np.stack(a))  # noqa: E731
    return as_t(msl), as_t(us), as_t(vs)


def test_great_circle_and_bearing():
    assert great_circle_km(0, 0, 1, 0) == pytest.approx(KM_PER_DEG, rel=1e-9)
    assert great_circle_km(0, 0, 0, 90) == pytest.approx(math.pi / 2 * 6371.0, rel=1e-9)
    assert great_circle_km(10, 359.5, 10, 0.5) == pytest.approx(great_circle_km(10, 0, 10, 1))
    assert bearing_deg(0, 0, 0, 1) == pytest.approx(90.0)


def test_along_cross_track_error_signs():
    ref_lat, ref_lon = np.array([10.0, 11.0, 12.0]), np.array([300.0, 300.0, 300.0])
    along, cross = along_cross_track_error(ref_lat, ref_lon + 1.0, ref_lat, ref_lon)
    # 1 degree east of a northward-moving storm: to the right, not ahead
    np.testing.assert_allclose(cross, KM_PER_DEG * np.cos(np.radians(ref_lat)), rtol=1e-3)
    np.testing.assert_allclose(along, 0.0, atol=1.0)
    along, cross = along_cross_track_error(ref_lat + 0.5, ref_lon, ref_lat, ref_lon)
    np.testing.assert_allclose(along, 0.5 * KM_PER_DEG, rtol=1e-6)
    np.testing.assert_allclose(cross, 0.0, atol=1e-6)


def test_relative_vorticity_solid_body():
    # solid-body rotation about the pole, u = U cos(phi), v = 0: zeta = 2 U sin(phi) / a
    lat = torch.linspace(60, 0, 61, dtype=torch.float64)
    lon = torch.arange(0, 360, 1.0, dtype=torch.float64)
    u = 10 * torch.cos(torch.deg2rad(lat))[:, None].expand(61, 360)
    zeta = relative_vorticity(u, torch.zeros_like(u), lat, lon)
    expect = 2 * 10 * torch.sin(torch.deg2rad(lat)) / 6.371e6
    torch.testing.assert_close(zeta[1:-1, 0], expect[1:-1], rtol=1e-3, atol=1e-9)


@pytest.mark.parametrize(
    ("spacing", "rmax_km"), [(0.25, 40.0), (0.25, 80.0), (1.0, 150.0), (1.0, 250.0)]
)
def test_subgrid_centre_within_a_tenth_of_a_grid_spacing(spacing, rmax_km):
    if spacing == 1.0:  # global grid: periodic longitudes
        lat = np.arange(90, -90 - 1e-9, -spacing)
        lon = np.arange(0, 360, spacing)
    else:  # regional 0.25-degree box
        lat = np.arange(35, 5 - 1e-9, -spacing)
        lon = np.arange(290, 320 + 1e-9, spacing)
    rng = np.random.default_rng(7)
    base = np.array([[18.0, 300.0]])
    centres = base + rng.uniform(-0.5, 0.5, (6, 2)) * spacing + np.arange(6)[:, None] * spacing
    msl, u, v = holland(lat, lon, centres, rmax_km=rmax_km)
    found = find_centres(msl, lat, lon, centres[:, 0] + 0.6, centres[:, 1] - 0.7,
                         search_km=300.0, u850=u, v850=v)
    err_lat = (found[0].numpy() - centres[:, 0]) / spacing
    dlon = (found[1].numpy() - centres[:, 1] + 180) % 360 - 180
    err_lon = dlon / spacing
    assert np.all(np.isfinite(err_lat))
    assert np.max(np.hypot(err_lat, err_lon)) < 0.1, (err_lat, err_lon)
    np.testing.assert_allclose(found[2].numpy(), 97000.0, atol=1500.0)


def test_plain_argmin_is_not_enough():
    """The sub-grid fit must beat the nearest grid point (guards against a no-op fit)."""
    lat = np.arange(35, 5 - 1e-9, -0.25)
    lon = np.arange(290, 320 + 1e-9, 0.25)
    centres = np.array([[18.1, 300.1], [20.12, 301.37]])
    msl, _, _ = holland(lat, lon, centres, rmax_km=60.0)
    found = find_centres(msl, lat, lon, centres[:, 0], centres[:, 1], search_km=200.0)
    err = great_circle_km(found[0].numpy(), found[1].numpy(), centres[:, 0], centres[:, 1])
    nearest = great_circle_km(np.round(centres[:, 0] * 4) / 4, np.round(centres[:, 1] * 4) / 4,
                              centres[:, 0], centres[:, 1])
    assert np.all(err < 0.3 * nearest)


def test_weak_absent_and_anticyclonic_vortices_are_rejected():
    lat = np.arange(35, 5 - 1e-9, -0.5)
    lon = np.arange(280, 330 + 1e-9, 0.5)
    centres = np.array([[18.0, 300.0]] * 4)
    strong, u, v = holland(lat, lon, centres, rmax_km=80.0, dp=3000.0)
    weak, wu, wv = holland(lat, lon, centres, rmax_km=80.0, dp=150.0)
    _, au, av = holland(lat, lon, centres, rmax_km=80.0, dp=3000.0, cyclonic=False)
    lat2 = torch.tensor(lat)[:, None].expand(len(lat), len(lon))
    absent = 101000.0 + 30.0 * (lat2 - 20.0)  # smooth gradient: a minimum at the edge only
    msl = torch.stack([strong[0], weak[1], absent, strong[3]])
    uu = torch.stack([u[0], wu[1], torch.zeros_like(u[0]), au[3]])
    vv = torch.stack([v[0], wv[1], torch.zeros_like(v[0]), av[3]])
    found = find_centres(msl, lat, lon, centres[:, 0], centres[:, 1], search_km=500.0,
                         u850=uu, v850=vv)
    ok = np.isfinite(found[0].numpy())
    assert ok.tolist() == [True, False, False, False]
    # without winds, the anticyclonic-wind member passes the pressure test alone
    found = find_centres(msl, lat, lon, centres[:, 0], centres[:, 1], search_km=500.0)
    assert np.isfinite(found[0].numpy()).tolist() == [True, False, False, True]


def test_track_across_the_longitude_seam_and_loss():
    lat = np.arange(60, -60 - 1e-9, -1.0)
    lon = np.arange(0, 360, 1.0)
    times = 6
    path = np.stack([np.linspace(20.0, 22.5, times), np.linspace(357.3, 362.3, times) % 360], 1)
    fields = [holland(lat, lon, path[t:t + 1], rmax_km=200.0, dp=3000.0) for t in range(times)]
    msl = torch.stack([f[0][0] for f in fields])[None]  # (1, time, lat, lon)
    u = torch.stack([f[1][0] for f in fields])[None]
    v = torch.stack([f[2][0] for f in fields])[None]
    # a second member whose storm decays after the third time
    msl2 = msl.clone()
    msl2[0, 3:] = 101000.0
    tr = track_storm(torch.cat([msl, msl2]), lat, lon, (20.0, -2.7), u850=torch.cat([u, u]),
                     v850=torch.cat([v, v]))
    err = great_circle_km(tr.lat[0], tr.lon[0], path[:, 0], path[:, 1])
    assert np.all(err < 0.1 * KM_PER_DEG), err
    assert np.all(np.isfinite(tr.lat[1, :3])) and np.all(np.isnan(tr.lat[1, 3:]))


def test_search_radius_prevents_jumping_to_a_neighbour():
    lat = np.arange(40, 0 - 1e-9, -0.5)
    lon = np.arange(270, 340 + 1e-9, 0.5)
    a, _, _ = holland(lat, lon, np.array([[15.0, 300.0]]), rmax_km=80.0, dp=2000.0)
    b, _, _ = holland(lat, lon, np.array([[25.0, 320.0]]), rmax_km=80.0, dp=5000.0)
    both = (a + b - 101000.0)[None].expand(1, 2, -1, -1)  # deeper neighbour 2400 km away
    tr = track_storm(both, lat, lon, (15.2, 300.3), config=TrackerConfig())
    np.testing.assert_allclose(tr.lat[0], 15.0, atol=0.05)


@pytest.mark.skipif(importlib.util.find_spec("tfda.observations.besttrack") is None,
                    reason="observations.besttrack (issue 7) not written yet")
def test_against_an_atcf_best_track(tmp_path):
    from tfda.observations.besttrack import read_atcf

    rows = [("2023090800", "165N", "520W"), ("2023090806", "170N", "531W"),
            ("2023090812", "176N", "543W"), ("2023090818", "183N", "555W")]
    text = "".join(
        f"AL, 13, {t},   , BEST,   0, {la}, {lo}, 120,  940, HU,  34, NEQ,  100,"
        "   90,   70,   90, 1010,  240,  15, 145,   0,   L,   0,    ,   0,   0,"
        "        LEE, D,\n" for t, la, lo in rows)
    path = tmp_path / "bal132023.dat"
    path.write_text(text)
    bt = read_atcf(path)
    ref_lat, ref_lon = np.asarray(bt.lat, float), np.asarray(bt.lon, float) % 360
    lat = np.arange(30, 5 - 1e-9, -0.25)
    lon = np.arange(295, 320 + 1e-9, 0.25)
    fields = [holland(lat, lon, np.array([[a, o]]), rmax_km=60.0)[0][0]
              for a, o in zip(ref_lat, ref_lon, strict=True)]
    tr = track_storm(torch.stack(fields)[None], lat, lon, (ref_lat[0], ref_lon[0]))
    along, cross = along_cross_track_error(tr.lat[0], tr.lon[0], ref_lat, ref_lon)
    assert np.max(np.abs(along)) < 3.0 and np.max(np.abs(cross)) < 3.0
