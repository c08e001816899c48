"""Lorenz-96: fixed point, RK4 accuracy against scipy, shapes, time convention."""

import datetime

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from tfda.models.lorenz96 import Lorenz96, tendency


def test_fixed_point_and_tendency_formula():
    model = Lorenz96(nx=10, forcing=8.0)
    x = torch.full((2, 10), 8.0, dtype=torch.float64)
    torch.testing.assert_close(model.step(x), x)
    z = torch.randn(10, dtype=torch.float64)
    i = 3  # dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F, written out by hand
    expected = (z[i + 1] - z[i - 2]) * z[i - 1] - z[i] + 8.0
    torch.testing.assert_close(tendency(z, 8.0)[i], expected)


def test_rk4_matches_scipy_reference():
    model = Lorenz96(nx=12, dt=0.05, rk4_dt=0.01)
    x0 = model.spin_up(200, generator=torch.Generator().manual_seed(1))[0]

    def rhs(_t, x):
        return (np.roll(x, -1) - np.roll(x, 2)) * np.roll(x, 1) - x + 8.0

    ref = solve_ivp(rhs, (0, 0.05), x0.numpy(), rtol=1e-12, atol=1e-12, method="DOP853").y[:, -1]
    got = model.step(x0[None])[0].numpy()
    # RK4 with h = 0.01 over 0.05: local error O(h^5 * |x^(5)|) ~ 1e-6 on the attractor.
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_shapes_batching_and_convention():
    model = Lorenz96(nx=8)
    x = torch.randn(5, 8, dtype=torch.float64)
    flat = model.step(x)
    grid = model.step(x.reshape(5, 1, 1, 8))
    torch.testing.assert_close(grid.reshape(5, 8), flat)
    torch.testing.assert_close(model.step(x[2:3])[0], flat[2])
    assert model.dt == datetime.timedelta(hours=6)
    assert model.variables == ("x",) and model.lat.shape == (1,)
    torch.testing.assert_close(model.lon, torch.arange(8, dtype=torch.float64))
    with pytest.raises(ValueError, match="x must be shaped"):
        model.step(torch.zeros(2, 9))
    with pytest.raises(ValueError, match="multiple"):
        Lorenz96(dt=0.05, rk4_dt=0.02)
