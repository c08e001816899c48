from __future__ import annotations

import math

import numpy as np
import pytest

from tfda.diagnostics.track_metrics import ensemble_ellipse
from tfda.experiments.plot_tracks import TrackFigure, draw_track_figure
from tfda.geo import KM_PER_DEG, great_circle_km


def _gaussian_positions(rng, n, lat0, lon0, cov_km2):
    d = rng.multivariate_normal([0.0, 0.0], cov_km2, size=n)
    lat = lat0 + d[:, 1] / KM_PER_DEG
    lon = (lon0 + d[:, 0] / (KM_PER_DEG * math.cos(math.radians(lat0)))) % 360.0
    return lat, lon


def _figure_data(rng, *, lose: int = 0) -> TrackFigure:
    """Two 10-member ensembles around a straight truth, 4 steps a day for 3 days."""
    steps = 13
    t = np.arange(steps) / 4.0
    truth = (18.0 + 1.5 * t, (-55.0 - 2.0 * t) % 360)
    ens = {}
    for name, s in (("Baseline", 200.0), ("EnSF", 60.0)):
        lat, lon = np.empty((10, steps)), np.empty((10, steps))
        for k in range(steps):
            lat[:, k], lon[:, k] = _gaussian_positions(rng, 10, truth[0][k], truth[1][k],
                                                       np.eye(2) * (s * (0.2 + t[k])) ** 2)
        ens[name] = (lat, lon)
    ens["Baseline"][0][:lose, 7:] = np.nan
    ens["Baseline"][1][:lose, 7:] = np.nan
    best = (np.array([-6.0, 0.0, 24.0, 48.0, 80.0]), np.array([17.0, 18.0, 19.6, 21.0, 23.0]),
            np.array([303.0, 305.0, 303.0, 301.0, 298.0]))
    return TrackFigure(ens, 4, truth=truth, best_track=best, truth_label="analogue truth",
                       title="test")


def test_figure_metrics_match_the_ellipse_module(tmp_path):
    rng = np.random.default_rng(2)
    data = _figure_data(rng, lose=3)
    assert data.days == [1, 2, 3]
    rows = data.metrics()
    for j, row in enumerate(rows):
        lat, lon = data.ensembles["Baseline"][0][:, 4 * (j + 1)], \
            data.ensembles["Baseline"][1][:, 4 * (j + 1)]
        e = ensemble_ellipse(lat, lon)
        assert row["baseline_ellipse_area_km2"] == pytest.approx(e.area_km2)
        assert row["baseline_tracked_members"] == (10 if j == 0 else 7)
    # the best track has fixes on Days 1 and 2 only (80 h is not a day)
    assert np.isfinite(rows[0]["truth_vs_best_track_km"])
    assert np.isfinite(rows[1]["truth_vs_best_track_km"])
    assert np.isnan(rows[2]["truth_vs_best_track_km"])
    assert rows[0]["truth_vs_best_track_km"] == pytest.approx(
        float(great_circle_km(19.5, 303.0, 19.6, 303.0)), rel=1e-6)


def test_plot_writes_png_and_pdf(tmp_path):
    rng = np.random.default_rng(2)
    paths = draw_track_figure(_figure_data(rng, lose=2), tmp_path / "fig")
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    assert not list(tmp_path.glob(".*tmp*"))
    bad = TrackFigure({"x": (np.zeros((3, 2)), np.zeros((3, 3)))}, 4)
    with pytest.raises(ValueError, match="member"):
        draw_track_figure(bad, tmp_path / "b")


def test_land_polygons_come_from_the_installed_package():
    from tfda.experiments.coastlines import land_polygons

    polys = land_polygons((-80.0, -60.0, 15.0, 50.0))
    assert polys and all(p.shape[1] == 2 for _, p in polys)
    # Hispaniola (about 18-20N, 68-74W) is land in the low-resolution set
    hit = [p for level, p in polys if level == 1 and p[:, 1].min() > 17 and p[:, 1].max() < 21
           and p[:, 0].min() > -75 and p[:, 0].max() < -68]
    assert hit
    # the same polygons, shifted, for an extent given in 0..360 east
    east = land_polygons((280.0, 300.0, 15.0, 50.0))
    assert len(east) == len(polys)
    assert land_polygons((-30.0, -20.0, 30.0, 31.0)) == []  # open Atlantic
