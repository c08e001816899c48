"""Track-uncertainty ellipses against a bivariate Gaussian with known covariance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tfda.diagnostics.track_metrics import ensemble_ellipse
from tfda.geo import KM_PER_DEG


def _gaussian_positions(rng, n, lat0, lon0, cov_km2):
    d = rng.multivariate_normal([0.0, 0.0], cov_km2, size=n)
    lat = lat0 + d[:, 1] / KM_PER_DEG
    lon = (lon0 + d[:, 0] / (KM_PER_DEG * math.cos(math.radians(lat0)))) % 360.0
    return lat, lon


def test_ellipse_area_and_coverage_match_a_bivariate_gaussian():
    rng = np.random.default_rng(0)
    cov = np.array([[150.0**2, 0.6 * 150 * 80], [0.6 * 150 * 80, 80.0**2]])
    lat, lon = _gaussian_positions(rng, 20000, 25.0, 290.0, cov)
    e = ensemble_ellipse(lat, lon, quantile=0.9)
    expect = math.pi * math.sqrt(np.linalg.det(cov)) * (-2 * math.log(0.1))
    assert e.area_km2 == pytest.approx(expect, rel=0.03)
    inside = np.mean([e.contains(a, o) for a, o in zip(lat[:2000], lon[:2000], strict=True)])
    assert inside == pytest.approx(0.9, abs=0.02)
    # the 2-sigma ellipse: chi2 = 4
    assert ensemble_ellipse(lat, lon, quantile=1 - math.exp(-2)).chi2 == pytest.approx(4.0)


def test_ellipse_is_seam_invariant_and_handles_nan_members():
    rng = np.random.default_rng(1)
    cov = np.diag([100.0**2, 60.0**2])
    lat, lon = _gaussian_positions(rng, 30, 20.0, 300.0, cov)
    a = ensemble_ellipse(lat, lon)
    b = ensemble_ellipse(lat, (lon + 60.5) % 360.0)  # now straddling 0/360
    assert b.area_km2 == pytest.approx(a.area_km2, rel=1e-6)
    assert (b.lon - a.lon) % 360 == pytest.approx(60.5, abs=1e-6)
    assert b.contains(b.lat, b.lon) and not b.contains(b.lat + 10, b.lon)
    lat[:5] = np.nan
    c = ensemble_ellipse(lat, lon)
    assert c.n_members == 25 and np.isfinite(c.area_km2)
    assert math.isnan(ensemble_ellipse([np.nan], [np.nan]).area_km2)
    with pytest.raises(ValueError, match="quantile"):
        ensemble_ellipse(lat, lon, quantile=1.5)
