"""The assimilation cycle: metrics, resume after interruption == uninterrupted run,
no corrupted checkpoint after bad input."""

import math

import numpy as np
import pytest
import torch

from tfda.da.cycle import METRICS, run_cycle
from tfda.da.filters import LETKF, EnSF, periodic_distance
from tfda.experiments.checkpoint import FileCheckpointer
from tfda.models.lorenz96 import Lorenz96
from tfda.observations.operators import Identity


class _Stop(Exception):
    pass


def _setup(nx=8, m=5):
    model = Lorenz96(nx=nx, dt=0.05)
    g = torch.Generator().manual_seed(0)
    truth = model.spin_up(50, generator=g)[0]
    ens = truth + torch.randn(m, nx, generator=g, dtype=torch.float64)
    op = Identity(1.0, locations=torch.arange(nx))
    return model, truth, ens, op


@pytest.mark.parametrize("filt", [EnSF(steps=4, score="paired"),
                                  LETKF(radius=2.0, distance=periodic_distance(8),
                                        inflation=1.05)])
def test_resume_after_interruption_is_identical(tmp_path, filt):
    model, truth, ens, op = _setup()
    full = run_cycle(model, filt, op, ens, n_cycles=6, truth=truth, seed=3, progress=False)

    ckpt = FileCheckpointer(tmp_path / "state.pt")
    with pytest.raises(_Stop):
        run_cycle(model, filt, op, ens, n_cycles=6, truth=truth, seed=3, progress=False,
                  checkpointer=_KillAfter(ckpt, 3))
    assert ckpt.load()["cycle"] == 3
    torch.manual_seed(12345)  # a new process would not share the global RNG state
    seen = []
    resumed = run_cycle(model, filt, op, ens, n_cycles=6, truth=truth, seed=3,
                        progress=False, checkpointer=ckpt,
                        callback=lambda k, e, m: seen.append(k))
    assert seen == [4, 5, 6]
    for name in METRICS:
        torch.testing.assert_close(torch.tensor(resumed[name].values),
                                   torch.tensor(full[name].values), rtol=0, atol=0)
    torch.testing.assert_close(torch.tensor(resumed["ensemble"].values),
                               torch.tensor(full["ensemble"].values), rtol=0, atol=0)


class _KillAfter:
    """A checkpointer whose process 'dies' right after the checkpoint of cycle k."""

    def __init__(self, inner, k):
        self.inner, self.k = inner, k

    def save(self, state):
        self.inner.save(state)
        if state["cycle"] == self.k:
            raise _Stop

    def load(self):
        return self.inner.load()


def test_metrics_and_dataset():
    model, truth, ens, op = _setup()
    ds = run_cycle(model, LETKF(), op, ens, n_cycles=3, truth=truth, progress=False)
    assert set(METRICS) <= set(ds.data_vars) and ds.sizes["cycle"] == 3
    assert ds["ensemble"].shape == (5, 8) and ds["truth"].shape == (8,)
    xa = torch.tensor(ds["ensemble"].values)
    rmse = float((xa.mean(0) - torch.tensor(ds["truth"].values)).square().mean().sqrt())
    assert math.isclose(rmse, float(ds["rmse_a"][-1]), rel_tol=1e-12)
    assert float(ds["spread_a"][-1]) == pytest.approx(float(xa.var(0).mean().sqrt()))
    # H = I, R = I: the analysis mean fits y better, |y - H xa| = |(P + I)^-1 (y - H xb)|.
    assert (ds["obs_rmse_a"] <= ds["obs_rmse_f"]).all()


def test_observation_callable_without_truth_and_bad_input(tmp_path):
    model, truth, ens, op = _setup()
    def observations(k, tr):
        assert tr is None
        if k == 3:
            return torch.zeros(7)  # wrong shape at cycle 3
        return torch.full((8,), 2.0)

    ckpt = FileCheckpointer(tmp_path / "c.pt")
    with pytest.raises(ValueError, match="y has shape"):
        run_cycle(model, LETKF(), op, ens, n_cycles=5, observations=observations,
                  checkpointer=ckpt, progress=False)
    state = ckpt.load()
    assert state["cycle"] == 2 and torch.isfinite(state["ensemble"]).all()
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind
    ds = run_cycle(model, LETKF(), op, ens, n_cycles=2,
                   observations=lambda k, tr: torch.full((8,), 2.0), progress=False)
    assert ds["rmse_a"].isnull().all() and (ds["obs_rmse_a"] >= 0).all()
    with pytest.raises(ValueError, match="1 member"):
        run_cycle(model, LETKF(), op, ens[:1], n_cycles=2, truth=truth, progress=False)
    with pytest.raises(ValueError, match="observations="):
        run_cycle(model, LETKF(), op, ens, n_cycles=2, progress=False)


def test_coordinates_travel_with_the_result():
    model = Lorenz96(8)
    g = torch.Generator().manual_seed(0)
    truth = model.spin_up(100, generator=g, dtype=torch.float64)[0].reshape(1, 1, 8)
    ens = truth + torch.randn(6, 1, 1, 8, generator=g, dtype=torch.float64)
    op = Identity(1.0)
    ring = np.arange(8) * 45.0
    labels = {"variable": ["x"], "lat": [0.0], "lon": ring}
    ds = run_cycle(model, LETKF(), op, ens, n_cycles=2, truth=truth, progress=False,
                   coords=labels)
    assert ds["ensemble"].dims == ("member", "variable", "lat", "lon")
    np.testing.assert_array_equal(ds["lon"].values, ring)
    assert ds["truth"].dims == ("variable", "lat", "lon")
    with pytest.raises(ValueError, match="'lon' has 7 values"):
        run_cycle(model, LETKF(), op, ens, n_cycles=1, truth=truth, progress=False,
                  coords={**labels, "lon": ring[:7]})
    with pytest.raises(ValueError, match="names 1 dimension"):
        run_cycle(model, LETKF(), op, ens, n_cycles=1, truth=truth, progress=False,
                  coords={"lon": ring})
