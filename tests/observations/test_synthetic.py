"""Synthetic observations: correlated-noise statistics, exact precision, reproducibility, I/O."""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import pytest
import torch
import xarray as xr

from tfda.observations.era5 import FOURCASTNET_CHANNELS
from tfda.observations.errors import DiagonalError, ObservationError, log_likelihood
from tfda.observations.synthetic import (
    DEFAULT_ERROR_STD,
    EARTH_RADIUS_KM,
    CorrelatedGridError,
    default_error,
    make_observations,
    observation_times,
    random_mask,
)

LAT = np.arange(30.0, 22.0, -1.0)  # 8 rows, 1 degree, descending
LON = np.arange(280.0, 296.0, 1.0)  # 16 columns
ONE_DEG_KM = EARTH_RADIUS_KM * math.pi / 180.0  # meridional length of one degree
NUGGET = 1e-2


def reference_covariance(stds, length_km, lat, lon, nugget, ref_lat) -> np.ndarray:
    """R built densely in numpy from the pairwise distances (independent of the class)."""
    phi = np.deg2rad(np.repeat(lat, lon.size))
    lam = np.deg2rad(np.tile(lon, lat.size))
    dy = EARTH_RADIUS_KM * np.abs(phi[:, None] - phi[None, :])
    dx = 2 * EARTH_RADIUS_KM * np.cos(np.deg2rad(ref_lat)) * np.abs(
        np.sin((lam[:, None] - lam[None, :]) / 2))
    same_row = (phi[:, None] == phi[None, :]).astype(float)
    same_col = (lam[:, None] == lam[None, :]).astype(float)
    cy = (np.exp(-0.5 * (dy / length_km) ** 2) + nugget * same_row) / (1 + nugget)
    cx = (np.exp(-0.5 * (dx / length_km) ** 2) + nugget * same_col) / (1 + nugget)
    corr = cy * cx
    blocks = [s * s * corr for s in stds]
    n = corr.shape[0]
    out = np.zeros((len(stds) * n, len(stds) * n))
    for k, b in enumerate(blocks):
        out[k * n:(k + 1) * n, k * n:(k + 1) * n] = b
    return out


GLOBAL_LAT = np.linspace(60.0, -60.0, 7)
GLOBAL_LON = np.arange(0.0, 360.0, 15.0)  # periodic: the FFT path along longitude


@pytest.mark.parametrize(("lat", "lon", "length"), [(LAT, LON, 250.0),
                                                    (GLOBAL_LAT, GLOBAL_LON, 2000.0)],
                         ids=["regional", "global"])
def test_protocol_and_exact_precision_against_dense_solve(lat, lon, length):
    err = CorrelatedGridError([2.0, 0.5], length, lat, lon, nugget=NUGGET)
    assert isinstance(err, ObservationError)
    assert err.periodic_lon == (lon is GLOBAL_LON)
    r = torch.randn(3, 2, lat.size, lon.size, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1))
    cov = reference_covariance([2.0, 0.5], length, lat, lon, NUGGET, lat.mean())
    expected = np.linalg.solve(cov, r.reshape(3, -1).numpy().T).T
    got = err.precision_matvec(r).reshape(3, -1).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-10)
    # float32 keeps a useful accuracy with the default nugget (cond(C_axis) < 1e3 here)
    got32 = err.precision_matvec(r.float()).double().reshape(3, -1).numpy()
    np.testing.assert_allclose(got32, expected, rtol=0, atol=2e-4 * np.abs(expected).max())
    # differentiable (the EnSF likelihood score goes through autograd)
    z = r[:1].clone().requires_grad_(True)
    log_likelihood(err, z).sum().backward()
    np.testing.assert_allclose(z.grad.numpy(), -err.precision_matvec(r[:1]).numpy(), rtol=1e-10)


def test_sample_statistics_and_correlation_at_length_scale():
    """n independent fields: at each point the sample variance of eps/std has relative
    sd sqrt(2/n) and the mean sd 1/sqrt(n); a sample correlation rho has sd
    (1 - rho^2)/sqrt(n). Bounds are 5 sd (for 2*8*16 = 256 points, a false alarm has
    probability ~1e-4 under the model; the seed is fixed anyway)."""
    n = 4000
    length = ONE_DEG_KM  # rows one degree apart are exactly one length scale apart
    err = CorrelatedGridError([2.0, 0.5], length, LAT, LON, nugget=NUGGET)
    eps = err.sample((n, 2, LAT.size, LON.size), generator=torch.Generator().manual_seed(0),
                     dtype=torch.float64)
    w = eps / torch.tensor([2.0, 0.5], dtype=torch.float64)[:, None, None]
    assert w.mean(0).abs().max() < 5 / math.sqrt(n)
    assert (w.var(0) - 1).abs().max() < 5 * math.sqrt(2 / n)
    # meridional correlation at lag d = L: exp(-1/2) / (1 + nugget)
    rho_model = math.exp(-0.5) / (1 + NUGGET)
    rho = (w[:, :, :-1, :] * w[:, :, 1:, :]).mean(0)  # means are ~0 (checked above)
    sd = (1 - rho_model**2) / math.sqrt(n)
    assert abs(float(rho.mean()) - rho_model) < 5 * sd
    assert (rho - rho_model).abs().max() < 6 * sd + 5 / math.sqrt(n)
    # zonal: chord on the reference parallel, lag 2 columns
    dx = 2 * EARTH_RADIUS_KM * math.cos(math.radians(LAT.mean())) * math.sin(math.radians(1.0))
    rho_x_model = math.exp(-0.5 * (dx / length) ** 2) / (1 + NUGGET)
    rho_x = (w[..., :-2] * w[..., 2:]).mean(0)
    assert abs(float(rho_x.mean()) - rho_x_model) < 5 * (1 - rho_x_model**2) / math.sqrt(n)
    # variables are independent of each other
    cross = (w[:, 0] * w[:, 1]).mean(0)
    assert cross.abs().max() < 5 / math.sqrt(n) * 1.2
    # sample and precision describe the same R: E[eps^T R^-1 eps] = dimension, sd sqrt(2d/n)
    d = 2 * LAT.size * LON.size
    q = -2 * log_likelihood(err, eps)
    assert abs(float(q.mean()) - d) < 5 * math.sqrt(2 * d / n)


def test_global_sample_covariance_matches_dense_reference():
    """Entries of a sample covariance of n draws have sd <= sqrt(2/n) (unit variances)."""
    n = 20000
    err = CorrelatedGridError([1.0], 1500.0, GLOBAL_LAT[2:5], GLOBAL_LON, nugget=NUGGET)
    eps = err.sample((n, 1, 3, GLOBAL_LON.size), generator=torch.Generator().manual_seed(2),
                     dtype=torch.float64).reshape(n, -1)
    emp = (eps.T @ eps / n).numpy()
    ref = reference_covariance([1.0], 1500.0, GLOBAL_LAT[2:5], GLOBAL_LON, NUGGET, 0.0)
    assert np.abs(emp - ref).max() < 5 * math.sqrt(2 / n)
    assert ref[0, 1] > 0.3 and ref[0, 12] < 0.01  # the test spans strong and weak correlation


def test_wrong_shapes_and_parameters_are_rejected():
    err = CorrelatedGridError([1.0, 1.0], 100.0, LAT, LON)
    with pytest.raises(ValueError, match="lat=8, lon=16"):
        err.precision_matvec(torch.zeros(1, 2, 8, 15))
    with pytest.raises(ValueError, match="variable=2"):
        err.sample((1, 3, 8, 16))
    with pytest.raises(ValueError, match="length_scale_km"):
        CorrelatedGridError([1.0], 0.0, LAT, LON)
    with pytest.raises(ValueError, match="std_per_variable"):
        CorrelatedGridError([1.0, -1.0], 100.0, LAT, LON)
    with pytest.raises(ValueError, match="nugget"):
        CorrelatedGridError([1.0], 100.0, LAT, LON, nugget=0.0)


def test_default_stds_cover_fourcastnet_and_barotropic_variables():
    needed = set(FOURCASTNET_CHANNELS) | {"u10m", "v10m", "msl", "u850", "v850", "z850"}
    assert needed <= set(DEFAULT_ERROR_STD)
    assert all(v > 0 for v in DEFAULT_ERROR_STD.values())
    diag = default_error(["msl", "u850"], LAT, LON)
    assert isinstance(diag, DiagonalError)
    assert diag.std.flatten().tolist() == [100.0, 1.8]
    corr = default_error(["msl", "u850"], LAT, LON, length_scale_km=300.0, std={"msl": 50.0})
    assert isinstance(corr, CorrelatedGridError) and corr.std.flatten().tolist() == [50.0, 1.8]
    with pytest.raises(ValueError, match="q700"):
        default_error(["q700"], LAT, LON)


def test_lee_observation_times():
    assert observation_times() == [datetime(2023, 9, d) for d in (5, 6, 7, 8)]


def _truth(times, nv=2):
    g = torch.Generator().manual_seed(5)
    return torch.randn(len(times), nv, LAT.size, LON.size, generator=g, dtype=torch.float64)


def test_make_observations_reproducible_masked_and_written(tmp_path):
    times = observation_times()
    truth = _truth(times)
    err = CorrelatedGridError([2.0, 0.5], 300.0, LAT, LON)
    kw = dict(variables=["msl", "u850"], lat=LAT, lon=LON, error=err)
    a = make_observations(truth, times, generator=torch.Generator().manual_seed(3), **kw)
    b = make_observations(truth, times, generator=torch.Generator().manual_seed(3), **kw)
    c = make_observations(truth, times, generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(a.y, b.y) and not torch.equal(a.y, c.y)
    assert a.y.shape == truth.shape and bool(a.mask.all())
    noise = err.sample(truth.shape, generator=torch.Generator().manual_seed(3),
                       dtype=torch.float64)
    torch.testing.assert_close(a.y - truth, noise, rtol=0, atol=1e-12)

    mask = random_mask((LAT.size, LON.size), 0.3, generator=torch.Generator().manual_seed(0))
    m = make_observations(truth, times, mask=mask, generator=torch.Generator().manual_seed(3),
                          **kw)
    assert torch.equal(torch.isnan(m.y), ~m.mask) and m.mask.shape == truth.shape
    torch.testing.assert_close(m.y[m.mask], a.y[m.mask])  # same draw, just hidden
    hx = truth[1:2].expand(3, -1, -1, -1)
    r = m.residual(hx, 1)
    assert r.shape == hx.shape and bool((r[:, ~m.mask[1]] == 0).all())
    torch.testing.assert_close(r[:, m.mask[1]], (a.y[1] - truth[1])[m.mask[1]].expand(3, -1))
    with pytest.raises(ValueError, match="hx must be"):
        m.residual(truth[..., :5], 0)

    out = m.to_netcdf(tmp_path / "obs" / "lee_obs.nc")
    assert not list(out.parent.glob("*.part"))
    with xr.open_dataset(out) as ds:
        np.testing.assert_array_equal(ds["y"].values, m.y.numpy())
        np.testing.assert_array_equal(ds["mask"].values.astype(bool), m.mask.numpy())
        assert list(ds["variable"].values) == ["msl", "u850"]
        np.testing.assert_array_equal(ds["error_std"].values[:, 0, 0], [2.0, 0.5])
        assert "CorrelatedGridError" in ds.attrs["error_model"]
        assert ds["time"].values[0] == np.datetime64("2023-09-05T00")


def test_make_observations_picks_rows_by_truth_times_and_rejects_bad_input():
    day = [datetime(2023, 9, 5, h) for h in (0, 6, 12, 18)]
    truth = _truth(day)
    err = DiagonalError(1e-9)
    kw = dict(variables=["msl", "u850"], lat=LAT, lon=LON, error=err)
    obs = make_observations(truth, [day[2], day[0]], truth_times=day, **kw)
    torch.testing.assert_close(obs.y, truth[[2, 0]], rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="2023-09-06"):
        make_observations(truth, [datetime(2023, 9, 6)], truth_times=day, **kw)
    with pytest.raises(ValueError, match="truth must be"):
        make_observations(truth, day[:2], **kw)
    with pytest.raises(ValueError, match="mask"):
        make_observations(truth, day, mask=torch.ones(3, 3, dtype=torch.bool), **kw)
