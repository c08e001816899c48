"""Protocol, validation, rollout, registry and the normalised-module wrapper."""

from __future__ import annotations

import datetime as dt
import importlib.util

import pytest
import torch

from tfda import models
from tfda.models.base import (
    ForecastModel,
    NormalisedModule,
    check_grid,
    check_state,
    check_variables,
    load,
    register,
    rollout,
)


class ShiftModel:
    """Advects every field one grid point east per step: step^n is roll by n."""

    variables = ("a", "b")

    def __init__(self, n_lat: int = 3, n_lon: int = 5) -> None:
        self.lat = torch.linspace(10.0, -10.0, n_lat, dtype=torch.float64)
        self.lon = torch.arange(n_lon, dtype=torch.float64) * (360.0 / n_lon)
        self.dt = dt.timedelta(hours=6)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        check_state(self, x)
        return torch.roll(x, 1, dims=-1)

    def to(self, device):
        return self


def test_protocol_is_satisfied_by_a_plain_class():
    assert isinstance(ShiftModel(), ForecastModel)
    assert not isinstance(object(), ForecastModel)


def test_rollout_yields_initial_state_first_then_steps():
    m = ShiftModel()
    x = torch.randn(4, 2, 3, 5)
    states = list(rollout(m, x, 3))
    assert len(states) == 4
    assert states[0] is x
    for n, s in enumerate(states):
        torch.testing.assert_close(s, torch.roll(x, n, dims=-1), rtol=0, atol=0)
    assert len(list(rollout(m, x, 0))) == 1
    with pytest.raises(ValueError, match="n_steps"):
        list(rollout(m, x, -1))


def test_rollout_is_lazy():
    calls = []

    class Counting(ShiftModel):
        def step(self, x):
            calls.append(1)
            return super().step(x)

    it = rollout(Counting(), torch.zeros(1, 2, 3, 5), 100)
    next(it)
    next(it)
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((2, 3, 5), "4-D"),
        ((1, 3, 3, 5), r"variable dimension \(1\) has 3 entries, model expects 2 \(a, b\)"),
        ((1, 2, 4, 5), r"lat dimension \(2\) has 4 entries, model expects 3"),
        ((1, 2, 3, 6), r"lon dimension \(3\) has 6 entries, model expects 5"),
        ((0, 2, 3, 5), "batch"),
    ],
)
def test_check_state_names_the_dimension(shape, message):
    with pytest.raises(ValueError, match=message):
        check_state(ShiftModel(), torch.zeros(shape))


def test_check_variables_and_grid():
    m = ShiftModel()
    check_variables(m, ["a", "b"])
    with pytest.raises(ValueError, match=r"order differs at position 0: got 'b'"):
        check_variables(m, ["b", "a"])
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        check_variables(m, ["a", "c"])
    check_grid(m, m.lat.clone(), m.lon.clone())
    bad = m.lon.clone()
    bad[2] += 0.5
    with pytest.raises(ValueError, match=r"lon: grid differs .* index 2"):
        check_grid(m, m.lat, bad)
    with pytest.raises(ValueError, match=r"lat: 2 points"):
        check_grid(m, m.lat[:2], m.lon)


def test_registry_callable_string_and_errors():
    name = "shift-test-model"
    register(name, ShiftModel, overwrite=True)
    m = load(name, n_lat=4)
    assert m.lat.numel() == 4
    with pytest.raises(ValueError, match="already registered"):
        register(name, ShiftModel)
    register(name + "-lazy", "tests.models.test_base:ShiftModel", overwrite=True)
    # pytest may import this file under another module name, so compare by class name
    assert type(models.load(name + "-lazy")).__name__ == "ShiftModel"
    register(name + "-absent", "no_such_package.mod:Thing", overwrite=True)
    with pytest.raises(ImportError, match="no_such_package"):
        load(name + "-absent")
    with pytest.raises(KeyError, match="barotropic"):
        load("no-such-model")
    with pytest.raises(ValueError, match="module:Attr"):
        register("x", "not_a_path")
    register(name + "-bad", lambda: object(), overwrite=True)
    with pytest.raises(TypeError, match="ForecastModel"):
        load(name + "-bad")
    assert {"fourcastnet", "barotropic", "lorenz96"} <= set(models.available())


def test_registry_builds_the_shipped_models(tmp_path):
    from tfda.models.barotropic import BarotropicConfig, BarotropicModel

    cfg = BarotropicConfig(resolution=2.0)
    m = load("barotropic", config=cfg)
    assert isinstance(m, BarotropicModel) and m.config == cfg
    with pytest.raises(FileNotFoundError, match="backbone.ckpt"):
        load("fourcastnet", weights=tmp_path)
    if importlib.util.find_spec("tfda.models.lorenz96") is None:
        pytest.skip("models/lorenz96.py not written yet")
    l96 = load("lorenz96", nx=40)
    assert isinstance(l96, ForecastModel)
    x = torch.randn(2, 1, 1, 40)
    assert l96.step(x).shape == x.shape


# ----------------------------------------------------------------------------- wrapper


class Identity(torch.nn.Module):
    def forward(self, x):
        return x


class Doubling(torch.nn.Module):
    def forward(self, x):
        return 2.0 * x


def _wrapped(core, *, rows=None, pad="persist", n_lat=7, n_lon=8, n_var=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(n_var, generator=g) * 100
    std = torch.rand(n_var, generator=g) * 10 + 0.5
    lat = torch.linspace(90, -90, n_lat)
    lon = torch.arange(n_lon) * 360.0 / n_lon
    return NormalisedModule(core, mean, std, variables=[f"v{i}" for i in range(n_var)],
                            lat=lat, lon=lon, dt=dt.timedelta(hours=6), core_rows=rows, pad=pad)


def test_persistence_core_reproduces_input_exactly_with_crop_and_repad():
    m = _wrapped(Identity(), rows=6)
    x = torch.randn(5, 3, 7, 8) * 50 + 1000
    out = m.step(x)
    assert torch.equal(out, x)
    states = list(rollout(m, x, 4))
    assert all(torch.equal(s, x) for s in states)


def test_nearest_repad_copies_last_core_row():
    m = _wrapped(Identity(), rows=5, pad="nearest")
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    out = m.step(x)
    assert torch.equal(out[:, :, :5], x[:, :, :5])
    torch.testing.assert_close(out[:, :, 5], x[:, :, 4])
    torch.testing.assert_close(out[:, :, 6], x[:, :, 4])


def test_core_runs_in_normalised_space():
    m = _wrapped(Doubling())
    x = torch.randn(3, 3, 7, 8, dtype=torch.float64) * 20
    mean = m.mean.double()
    std = m.std.double()
    expected = std * (2.0 * (x - mean) / std) + mean
    torch.testing.assert_close(m.step(x), expected, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(m.denormalise(m.normalise(x)), x, rtol=1e-12, atol=1e-9)


def test_wrapper_validation():
    with pytest.raises(ValueError, match="mean has 2 entries"):
        NormalisedModule(Identity(), torch.zeros(2), torch.ones(3), variables="abc",
                         lat=torch.zeros(2), lon=torch.zeros(2), dt=dt.timedelta(hours=6))
    with pytest.raises(ValueError, match="std must be positive"):
        NormalisedModule(Identity(), torch.zeros(3), torch.tensor([1.0, 0.0, 1.0]),
                         variables="abc", lat=torch.zeros(2), lon=torch.zeros(2),
                         dt=dt.timedelta(hours=6))
    with pytest.raises(ValueError, match="pad"):
        _wrapped(Identity(), pad="zero")
    m = _wrapped(Identity(), rows=6)
    with pytest.raises(ValueError, match="variable dimension"):
        m.step(torch.zeros(1, 2, 7, 8))
