"""Barotropic beta-plane analogue: conservation, analytic solutions, beta drift, balance."""

from __future__ import annotations

import math
from collections import deque

import pytest
import torch

from tfda.models.barotropic import (
    EARTH_RADIUS,
    VARIABLES,
    BarotropicConfig,
    BarotropicModel,
    holland_wind,
    vortex_state,
)
from tfda.models.base import ForecastModel, check_state, rollout

CALM = {"steering_u_south": 0.0, "steering_u_north": 0.0, "steering_v": 0.0}


def forecast(model: BarotropicModel, x: torch.Tensor, n_steps: int) -> torch.Tensor:
    """The last state of an ``n_steps`` rollout."""
    return deque(rollout(model, x, n_steps), maxlen=1)[0]


def centre(model: BarotropicModel, x: torch.Tensor) -> tuple[float, float]:
    """(lat, lon) of the vortex: centroid of the vorticity above 30% of its peak, 5 deg window."""
    z = model.vorticity(x)[0].double()
    k = int(z.argmax())
    iy, ix = divmod(k, z.shape[1])
    lat, lon = model.lat[:, None], model.lon[None, :]
    near = ((lat - model.lat[iy]).abs() <= 5) & ((lon - model.lon[ix]).abs() <= 5)
    w = torch.where(near & (z > 0.3 * z.max()), z, torch.zeros_like(z))
    return float((w * lat).sum() / w.sum()), float((w * lon).sum() / w.sum())


def test_protocol_grid_and_variables():
    m = BarotropicModel()
    assert isinstance(m, ForecastModel)
    assert m.variables == VARIABLES == ("u10m", "v10m", "msl", "u850", "v850", "z850")
    assert m.lat.shape == (40,) and m.lon.shape == (50,)
    assert bool((m.lat[1:] < m.lat[:-1]).all())               # descending
    assert 280 < float(m.lon.min()) and float(m.lon.max()) < 330   # 0..360 east
    assert m.dt.total_seconds() == 6 * 3600
    x = vortex_state(m, 17.0, 308.0, members=3)
    assert x.shape == (3, 6, 40, 50)
    check_state(m, x)
    # realistic environment far from the vortex
    assert float(x[0, 2, 20, 25]) == pytest.approx(101_300, abs=300)   # box centre, 30N 55W
    assert float(x[0, 5, 20, 25]) == pytest.approx(14_200, abs=300)
    assert 99_000 < float(x[0, 2, 0, 0]) < 103_000           # westerlies: lower to the north
    assert 13_000 < float(x[0, 5, 0, 0]) < 15_500
    torch.testing.assert_close(x[:, 0], 0.8 * x[:, 3])
    with pytest.raises(ValueError, match="outside the model box"):
        vortex_state(m, 5.0, 308.0)
    with pytest.raises(ValueError, match="lat dimension"):
        m.step(x[:, :, :10])
    with pytest.raises(ValueError, match="lat_north"):
        BarotropicConfig(lat_north=5.0)


def test_vorticity_integral_conserved_without_sponge():
    """Flux form: d/dt of the domain integral of zeta' is zero to round-off (no sponge)."""
    cfg = BarotropicConfig(resolution=2.0, sponge_width=0.0)
    m = BarotropicModel(cfg, dtype=torch.float64)
    y, x = m.y[:, None], m.x[None, :]
    zeta = 1e-4 * torch.exp(-((x - 3e5) ** 2 + (y + 5e5) ** 2) / (4e5) ** 2)[None]
    zeta = zeta + 2e-5 * torch.cos(2 * math.pi * x / (m.dx * m.lon.numel()))
    after = m.advance_vorticity(zeta, 40 * cfg.substeps, ubar=1.0, vbar=-0.5)   # 10 days
    assert bool(torch.isfinite(after).all())
    assert float((after - zeta).abs().max()) > 1e-5          # it did evolve
    assert abs(float(after.mean() - zeta.mean())) < 1e-12 * float(zeta.abs().max())
    sponged = BarotropicModel(BarotropicConfig(resolution=2.0), dtype=torch.float64)
    lost = sponged.advance_vorticity(zeta, 8 * cfg.substeps)            # 2 days
    assert abs(float(lost.mean() - zeta.mean())) > 1e-3 * float(zeta.mean())


def test_rossby_wave_phase_speed():
    """A plane Rossby wave is an exact nonlinear solution: c_x = -beta / (k^2 + l^2)."""
    cfg = BarotropicConfig(resolution=2.0, sponge_width=0.0, hyperdiffusion_hours=1e12, **CALM)
    m = BarotropicModel(cfg, dtype=torch.float64)
    k = 2 * math.pi * 2 / (m.dx * m.lon.numel())
    l = 2 * math.pi * 1 / (m.dy * m.lat.numel())
    y, x = m.y[:, None], m.x[None, :]
    a = 2e-5
    zeta0 = a * torch.cos(k * x + l * y)[None]
    hours = 48
    after = m.advance_vorticity(zeta0, hours * cfg.substeps // 6)
    c = -m.beta / (k**2 + l**2)
    exact = a * torch.cos(k * (x - c * hours * 3600) + l * y)[None]
    assert c < 0 and abs(c * hours * 3600) > 0.1 * 2 * math.pi / k   # westward, visible
    torch.testing.assert_close(after, exact, rtol=0, atol=1e-6 * a)


def test_uniform_steering_translates_vortex_exactly_on_f_plane():
    u0, v0, days = 5.0, 2.0, 2
    cfg = BarotropicConfig(beta=False, steering_u_south=u0, steering_u_north=u0, steering_v=v0)
    m = BarotropicModel(cfg)
    x = vortex_state(m, 25.5, 295.5)
    lat0, lon0 = centre(m, x)
    x = forecast(m, x, 4 * days)
    lat1, lon1 = centre(m, x)
    t = days * 86400.0
    dlon = math.degrees(u0 * t / (EARTH_RADIUS * math.cos(math.radians(m.lat0))))
    dlat = math.degrees(v0 * t / EARTH_RADIUS)
    assert lon1 - lon0 == pytest.approx(dlon, abs=0.15)
    assert lat1 - lat0 == pytest.approx(dlat, abs=0.15)


def test_axisymmetric_vortex_is_steady_on_f_plane_and_balanced():
    cfg = BarotropicConfig(beta=False, **CALM)
    m = BarotropicModel(cfg)
    x0 = vortex_state(m, 30.5, 305.5)
    x = forecast(m, x0, 12)
    c0, c1 = centre(m, x0), centre(m, x)
    assert abs(c1[0] - c0[0]) < 0.1 and abs(c1[1] - c0[1]) < 0.1
    v0 = torch.hypot(x0[0, 3], x0[0, 4]).max()
    assert float(torch.hypot(x[0, 3], x[0, 4]).max()) > 0.8 * float(v0)


def test_msl_from_nonlinear_balance_matches_gradient_wind():
    """Axisymmetric vortex: NBE == gradient wind, dPhi/dr = f V + V^2 / r (f-plane)."""
    cfg = BarotropicConfig(beta=False, resolution=0.5, lat_south=20.0, lat_north=40.0,
                           lon_west=290.0, lon_east=320.0, **CALM)
    m = BarotropicModel(cfg, dtype=torch.float64)
    x = vortex_state(m, 30.25, 305.25, vmax=40.0, rmax=150e3, r_outer=600e3)
    r = torch.linspace(1.0, 3e6, 300_001, dtype=torch.float64)
    v = holland_wind(r, vmax=40.0, rmax=150e3, r_outer=600e3)
    deficit = cfg.rho * float(torch.trapezoid(m.f0 * v + v**2 / r, r))
    model_deficit = cfg.msl_ref - float(x[0, 2].min())
    assert model_deficit == pytest.approx(deficit, rel=0.05)
    iy, ix = divmod(int(x[0, 2].argmin()), m.lon.numel())
    assert float(m.lat[iy]) == 30.25 and float(m.lon[ix]) == 305.25


def test_beta_drift_is_north_westward_at_one_to_three_metres_per_second():
    m = BarotropicModel(BarotropicConfig(**CALM))
    days = 3
    x = vortex_state(m, 25.5, 305.5)
    lat0, lon0 = centre(m, x)
    x = forecast(m, x, 4 * days)
    lat1, lon1 = centre(m, x)
    east = math.radians(lon1 - lon0) * EARTH_RADIUS * math.cos(math.radians(m.lat0))
    north = math.radians(lat1 - lat0) * EARTH_RADIUS
    speed = math.hypot(east, north) / (days * 86400)
    bearing = math.degrees(math.atan2(east, north)) % 360
    assert east < 0 and north > 0, (east, north)
    assert 280 < bearing < 350, bearing
    assert 0.5 < speed < 4.0, speed


def test_members_are_independent_and_state_is_rediagnosed():
    m = BarotropicModel(BarotropicConfig(resolution=2.0))
    a = vortex_state(m, 20.0, 300.0)
    b = vortex_state(m, 30.0, 310.0, vmax=30.0)
    both = torch.cat([a, b])
    out = m.step(both)
    torch.testing.assert_close(out[:1], m.step(a), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out[1:], m.step(b), rtol=1e-5, atol=1e-4)
    # only u850/v850 are prognostic: changing msl/z850/u10m alone changes nothing
    fiddled = both.clone()
    fiddled[:, [0, 1, 2, 5]] += torch.randn_like(fiddled[:, [0, 1, 2, 5]])
    torch.testing.assert_close(m.step(fiddled), out)
    # a model state is a fixed point of analyse -> diagnose
    zh, ub, vb = m.analyse(out)
    torch.testing.assert_close(m.diagnose(zh, ub, vb), out, rtol=1e-4, atol=1e-3)
    # a uniform wind increment is kept as steering and moves the field
    pushed = both.clone()
    pushed[:, 3] += 3.0
    assert float((m.step(pushed)[:, 3] - out[:, 3]).mean()) == pytest.approx(3.0, abs=1e-3)


@pytest.mark.slow
def test_ten_days_stable_and_default_track_recurves_like_lee():
    m = BarotropicModel()
    x = vortex_state(m, 17.0, 308.0)
    v0 = float(torch.hypot(x[0, 3], x[0, 4]).max())
    track = []
    for n, state in enumerate(rollout(m, x, 40)):
        if n % 4 == 0:
            track.append(centre(m, state))
    x = state
    assert bool(torch.isfinite(x).all())
    assert 0.3 * v0 < float(torch.hypot(x[0, 3], x[0, 4]).max()) < 1.5 * v0
    (lat0, lon0), (lat3, lon3) = track[0], track[3]
    assert lon3 < lon0 - 5 and lat3 > lat0 + 2            # west-north-west first
    lat6, lon6 = track[6]
    lat8, lon8 = track[8]
    assert lat8 > 35 and lon8 > lon6                       # north, then turning east


def test_uniform_steering_field_equals_a_uniform_wind_and_fades_without_a_vortex():
    """A field that is (u0, v0) everywhere must move the vortex like the uniform wind
    (u0, v0) of the environment: both are Galilean translations (f-plane)."""
    u0, v0 = -4.0, 2.5
    knots = ((20.0, 300.0, u0, v0), (30.0, 320.0, u0, v0), (40.0, 290.0, u0, v0))
    field = BarotropicModel(BarotropicConfig(beta=False, steering_knots=knots, **CALM))
    wind = BarotropicModel(BarotropicConfig(beta=False, steering_u_south=u0,
                                            steering_u_north=u0, steering_v=v0))
    torch.testing.assert_close(field.steer_u, torch.full_like(field.steer_u, u0))
    xf = forecast(field, vortex_state(field, 25.5, 305.5), 8)
    xw = forecast(wind, vortex_state(wind, 25.5, 305.5), 8)
    cf, cw = centre(field, xf), centre(wind, xw)
    assert cf[0] == pytest.approx(cw[0], abs=0.03) and cf[1] == pytest.approx(cw[1], abs=0.03)
    assert abs(cf[1] - 305.5) > 5                                   # it did move
    # the state carries the steering wind; analyse recovers a zero member-mean wind
    zh, ub, vb = field.analyse(xf)
    assert float(xf[0, 3].mean()) == pytest.approx(u0, abs=0.02)
    assert abs(float(ub)) < 1e-3 and abs(float(vb)) < 1e-3
    torch.testing.assert_close(field.diagnose(zh, ub, vb), xf, rtol=1e-4, atol=1e-3)
    # no vortex: no steering, and a calm state stays calm
    calm = field.diagnose(torch.zeros_like(zh), ub * 0, vb * 0)
    us, vs = field.steering(field._ifft(field.analyse(calm)[0]))
    assert float(us.abs().max()) < 1e-6 and float(vs.abs().max()) < 1e-6


def test_storm_feels_the_steering_field_where_it_is():
    """Two knots 20 degrees apart with opposite meridional winds: a vortex near each
    knot moves with that knot's wind (its own position decides its steering)."""
    knots = ((25.0, 295.0, 0.0, 3.0), (25.0, 315.0, 0.0, -3.0))
    m = BarotropicModel(BarotropicConfig(beta=False, steering_knots=knots,
                                         steering_knot_km=400.0, **CALM))
    x = torch.cat([vortex_state(m, 25.5, 295.5), vortex_state(m, 25.5, 315.5)])
    us, vs = m.steering(m._ifft(m.analyse(x)[0]))
    assert float(vs[0]) == pytest.approx(3.0, abs=0.1)
    assert float(vs[1]) == pytest.approx(-3.0, abs=0.1)
    y = forecast(m, x, 4)
    north = [centre(m, y[i:i + 1])[0] - 25.5 for i in range(2)]
    expect = math.degrees(3.0 * 86400 / EARTH_RADIUS)               # 2.3 degrees a day
    assert north[0] == pytest.approx(expect, abs=0.3)
    assert north[1] == pytest.approx(-expect, abs=0.3)
    with pytest.raises(ValueError, match="steering_knots"):
        BarotropicConfig(steering_knots=((1.0, 2.0, 3.0),))
