"""LETKF: equals the ETKF closed form without localisation, equals a per-point loop
reference with localisation, masks NaN observations, rejects bad input."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.linalg import sqrtm

from tfda.da.filters import (
    LETKF,
    MaskedObservationWarning,
    gaspari_cohn,
    great_circle_distance,
    periodic_distance,
)
from tfda.observations.operators import Identity, Subset


def _problem(m=6, n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    prior = 3.0 + torch.randn(m, n, generator=g, dtype=torch.float64)
    y = 3.0 + torch.randn(n, generator=g, dtype=torch.float64)
    std = 0.5 + torch.rand(n, generator=g, dtype=torch.float64)
    return prior, y, std


def _etkf_reference(prior, y, hx, r_diag, inflation=1.0, rho=None):
    """Hunt et al. (2007) Eqs. (20)-(24) in numpy, one analysis (one local domain)."""
    x, hx = prior.numpy().T, hx.numpy().T
    m = x.shape[1]
    xm, ym = x.mean(1, keepdims=True), hx.mean(1, keepdims=True)
    xp, yp = x - xm, hx - ym
    rinv = np.diag((rho if rho is not None else 1.0) / r_diag)
    pa = np.linalg.inv((m - 1) / inflation * np.eye(m) + yp.T @ rinv @ yp)
    wa = pa @ yp.T @ rinv @ (y.numpy()[:, None] - ym)
    wroot = np.real(sqrtm((m - 1) * pa))
    return (xm + xp @ (wa + wroot)).T


def test_global_letkf_equals_etkf_closed_form():
    prior, y, std = _problem()
    op = Identity(std)
    for inflation in (1.0, 1.1):
        xa = LETKF(inflation=inflation).analysis(prior, y, op)
        ref = _etkf_reference(prior, y, prior, std.numpy() ** 2, inflation)
        np.testing.assert_allclose(xa.numpy(), ref, rtol=1e-10, atol=1e-10)
    # The ETKF mean is the Kalman mean with the ensemble covariance P = X X^T / (M-1).
    xp = (prior - prior.mean(0)).T
    p = xp @ xp.T / (prior.shape[0] - 1)
    k = p @ torch.linalg.inv(p + torch.diag(std**2))
    kf_mean = prior.mean(0) + k @ (y - prior.mean(0))
    torch.testing.assert_close(LETKF().analysis(prior, y, op).mean(0), kf_mean)


def test_localised_equals_loop_reference_and_chunking():
    n = 12
    prior, y, std = _problem(n=n, seed=1)
    op = Subset(std[::2], indices=list(range(0, n, 2)))  # sparse stations, locations = index
    radius = 1.5
    dist = periodic_distance(n)
    xa = LETKF(radius=radius, distance=dist, inflation=1.05).analysis(prior, y[::2], op)
    xa_chunked = LETKF(radius=radius, distance=dist, inflation=1.05, chunk=5).analysis(
        prior, y[::2], op)
    torch.testing.assert_close(xa_chunked, xa)
    hx = op(prior)
    locs = op.locations
    for i in range(n):  # independent per-grid-point loop (the thing the filter vectorises)
        d = dist(torch.tensor([i]), locs)[0]
        rho = gaspari_cohn(d / (radius * math.sqrt(10 / 3))).numpy()
        ref = _etkf_reference(prior[:, i:i + 1], y[::2], hx, std[::2].numpy() ** 2, 1.05, rho)
        np.testing.assert_allclose(xa[:, i].numpy(), ref[:, 0], rtol=1e-9, atol=1e-9)


def test_nan_observations_masked_with_warning():
    prior, y, std = _problem(seed=2)
    y_nan = y.clone()
    y_nan[[1, 4]] = float("nan")
    keep = [i for i in range(10) if i not in (1, 4)]
    filt = LETKF(radius=2.0, distance=periodic_distance(10))
    with pytest.warns(MaskedObservationWarning, match="2 of 10"):
        xa = filt.analysis(prior, y_nan, Identity(std, locations=torch.arange(10)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ref = filt.analysis(prior, y[keep], Subset(std[keep], indices=keep))
    torch.testing.assert_close(xa, ref)


def test_rtps_restores_prior_spread():
    prior, y, std = _problem(seed=3)
    xa = LETKF(rtps=1.0).analysis(prior, y, Identity(std))
    torch.testing.assert_close(xa.std(0), prior.std(0))


def test_bad_input():
    prior, y, std = _problem()
    op = Identity(std)
    with pytest.raises(ValueError, match="1 member"):
        LETKF().analysis(prior[:1], y, op)
    with pytest.raises(ValueError, match="y has shape"):
        LETKF().analysis(prior, y[:5], op)
    with pytest.raises(ValueError, match="every value is NaN"):
        LETKF().analysis(prior, torch.full_like(y, float("nan")), op)
    with pytest.raises(ValueError, match="locations"):
        LETKF(radius=2.0, distance=periodic_distance(10)).analysis(prior, y, op)
    with pytest.raises(ValueError, match="inflation"):
        LETKF(inflation=0.9)
    with pytest.raises(ValueError, match="distance"):
        LETKF(radius=2.0)


def test_gaspari_cohn_and_distances():
    gc = gaspari_cohn(torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(gc, torch.tensor([1.0, 5 / 24, 0.0, 0.0], dtype=torch.float64))
    r = torch.linspace(0.9, 1.1, 201, dtype=torch.float64)
    assert float(gaspari_cohn(r).diff().abs().max()) < 1e-2  # continuous at r = 1
    d = periodic_distance(40)(torch.tensor([0, 39, 20]), torch.tensor([1.0, 38.0]))
    torch.testing.assert_close(d, torch.tensor([[1.0, 2.0], [2.0, 1.0], [19.0, 18.0]],
                                               dtype=torch.float64))
    z = torch.tensor(0.0, dtype=torch.float64)
    quarter = great_circle_distance(z, z, z, torch.tensor(90.0, dtype=torch.float64))
    assert abs(float(quarter) - math.pi / 2 * 6371.0) < 1e-6
    pole = great_circle_distance(z, z, torch.tensor(90.0, dtype=torch.float64), z)
    assert abs(float(pole) - float(quarter)) < 1e-6
