"""PointObservations: bilinear values by hand, the periodic seam, autograd, tables, a twin."""

import numpy as np
import pandas as pd
import pytest
import torch

from tfda.da.cycle import run_cycle
from tfda.da.filters import LETKF, EnSF, grid_distance
from tfda.models.lorenz96 import Lorenz96
from tfda.observations import PointObservations
from tfda.observations.operators import ObservationOperator

F64 = torch.float64


def _field(grid_lat, grid_lon, fn):
    la, lo = torch.meshgrid(torch.as_tensor(grid_lat, dtype=F64),
                            torch.as_tensor(grid_lon, dtype=F64), indexing="ij")
    return fn(la, lo)


def test_one_cell_by_hand():
    # cell corners (lat 0, lon 0)=1, (0, 10)=2, (10, 0)=3, (10, 10)=4; point (2.5, 7.5):
    # along lon at lat 0: 1 + 0.75 = 1.75, at lat 10: 3.75; along lat: 1.75 + 0.25 * 2
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=F64)
    op = PointObservations([2.5, 0.0, 10.0], [7.5, 0.0, 5.0], "a", 0.1,
                           grid_lat=[0.0, 10.0], grid_lon=[0.0, 10.0], variables=["a"])
    torch.testing.assert_close(op(x), torch.tensor([[2.25, 1.0, 3.5]], dtype=F64))
    assert isinstance(op, ObservationOperator)
    assert op.locations.dtype == F64 and tuple(op.locations.shape) == (3, 2)
    torch.testing.assert_close(op.locations[0], torch.tensor([2.5, 7.5], dtype=F64))


def test_a_bilinear_function_is_reproduced_exactly_and_variables_are_chosen():
    # uneven regional grid; f = 3 + 0.5 lat - 0.2 lon + 0.01 lat lon is bilinear in each
    # cell, so interpolation must return it exactly; variable "b" holds -f
    grid_lat = [5.0, 7.0, 12.0, 20.0, 21.5]
    grid_lon = [280.0, 283.0, 290.0, 291.0, 300.0, 310.0]
    f = _field(grid_lat, grid_lon, lambda la, lo: 3 + 0.5 * la - 0.2 * lo + 0.01 * la * lo)
    x = torch.stack([f, -f])[None].repeat(2, 1, 1, 1)  # (member 2, variable 2, lat, lon)
    g = torch.Generator().manual_seed(0)
    lat = 5.0 + 16.5 * torch.rand(50, generator=g, dtype=F64)
    lon = 280.0 + 30.0 * torch.rand(50, generator=g, dtype=F64)
    names = ["a" if k % 3 else "b" for k in range(50)]
    op = PointObservations(lat, lon - 360.0, names, 1.0, grid_lat=grid_lat,
                           grid_lon=grid_lon, variables=["a", "b"])  # lon given as -80..-50
    exact = 3 + 0.5 * lat - 0.2 * lon + 0.01 * lat * lon
    sign = torch.tensor([1.0 if n == "a" else -1.0 for n in names], dtype=F64)
    torch.testing.assert_close(op(x), (sign * exact).expand(2, 50), rtol=1e-12, atol=1e-12)


def test_periodic_seam_wraps_between_last_and_first_column():
    grid_lon = np.arange(0.0, 360.0, 10.0)  # 0..350, global
    x = torch.zeros(1, 1, 2, 36, dtype=F64)
    x[0, 0, :, 35] = 5.0   # 350 E
    x[0, 0, :, 0] = 15.0   # 0 E = 360 E
    op = PointObservations([0.0, 3.0, 3.0, 0.0], [359.9, -0.1, 355.0, 720.0], "u", 1.0,
                           grid_lat=[0.0, 10.0], grid_lon=grid_lon, variables=["u"])
    # 359.9: 99% of the way from 350 (5) to 360 (15); -0.1 is the same meridian
    torch.testing.assert_close(op(x), torch.tensor([[14.9, 14.9, 10.0, 15.0]], dtype=F64))


def test_descending_latitude_equals_ascending():
    grid_lat = torch.linspace(-30, 30, 7, dtype=F64)
    grid_lon = torch.arange(0, 360, 15, dtype=F64)
    x = torch.randn(3, 2, 7, 24, generator=torch.Generator().manual_seed(1), dtype=F64)
    g = torch.Generator().manual_seed(2)
    lat = -30 + 60 * torch.rand(40, generator=g, dtype=F64)
    lon = 360 * torch.rand(40, generator=g, dtype=F64)
    kw = {"grid_lon": grid_lon, "variables": ["a", "b"]}
    up = PointObservations(lat, lon, "b", 1.0, grid_lat=grid_lat, **kw)(x)
    down = PointObservations(lat, lon, "b", 1.0, grid_lat=grid_lat.flip(0), **kw)(x.flip(2))
    torch.testing.assert_close(down, up, rtol=1e-12, atol=1e-12)


def test_autograd_matches_finite_differences():
    grid_lat, grid_lon = [40.0, 30.0, 20.0], np.arange(0.0, 360.0, 30.0)
    op = PointObservations([35.0, 21.0, 29.0], [350.0, 10.0, 100.0], ["v", "u", "v"], 0.5,
                           grid_lat=grid_lat, grid_lon=grid_lon, variables=["u", "v"])
    x = torch.randn(2, 2, 3, 12, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: op(z).square().sum(), (x,))
    assert torch.autograd.gradcheck(op, (x,))


def test_float32_states_and_per_point_errors():
    op = PointObservations([2.5, 5.0], [7.5, 0.0], ["a", "b"], torch.tensor([0.5, 2.0]),
                           grid_lat=[0.0, 10.0], grid_lon=[0.0, 10.0], variables=["a", "b"])
    x = torch.arange(16, dtype=torch.float32).reshape(2, 2, 2, 2)
    out = op(x)
    assert out.dtype == torch.float32
    # member 1: variable a = [[8, 9], [10, 11]] at (2.5, 7.5), b = [[12, 13], [14, 15]] at (5, 0)
    torch.testing.assert_close(out[1], torch.tensor([9.25, 13.0]))
    torch.testing.assert_close(op(x.double())[1], torch.tensor([9.25, 13.0], dtype=F64))
    with pytest.raises(ValueError, match="error has 3 values for 2 points"):
        PointObservations([2.5, 5.0], [7.5, 0.0], "a", torch.ones(3), grid_lat=[0.0, 10.0],
                          grid_lon=[0.0, 10.0], variables=["a"])


def test_dataframe_round_trip():
    grid_lat, grid_lon = [10.0, 0.0, -10.0], np.arange(0.0, 360.0, 20.0)
    frame = pd.DataFrame({
        "time": pd.to_datetime(["2023-09-08"] * 3),  # extra columns are ignored
        "lat": [5.0, -2.0, 0.0], "lon": [10.0, 355.0, 40.0],
        "variable": ["z850", "u850", "z850"], "observation": [1.5, np.nan, -3.0],
        "error": [0.5, 1.0, 2.0],
    })
    op, y = PointObservations.from_dataframe(frame, grid_lat=grid_lat, grid_lon=grid_lon,
                                             variables=["u850", "z850"])
    same, y2 = PointObservations.from_arrays(frame["lat"], frame["lon"], frame["variable"],
                                             frame["observation"], frame["error"],
                                             grid_lat=grid_lat, grid_lon=grid_lon,
                                             variables=["u850", "z850"])
    torch.testing.assert_close(y, torch.tensor([1.5, np.nan, -3.0], dtype=F64), equal_nan=True)
    torch.testing.assert_close(y2, y, equal_nan=True)
    torch.testing.assert_close(op.error.std, torch.tensor([0.5, 1.0, 2.0], dtype=F64))
    torch.testing.assert_close(op.locations, torch.tensor(frame[["lat", "lon"]].values))
    x = torch.randn(4, 2, 3, 18, dtype=F64)
    torch.testing.assert_close(op(x), same(x))
    # the point at (0, 40) sits on a grid point of z850
    torch.testing.assert_close(op(x)[:, 2], x[:, 1, 1, 2])


def test_bad_inputs_are_named():
    kw = {"grid_lat": [0.0, 10.0, 20.0], "grid_lon": [280.0, 290.0, 300.0],
          "variables": ["u", "v"]}
    with pytest.raises(ValueError, match=r"lat\[1\] = 25.0 is outside the grid's latitude"):
        PointObservations([5.0, 25.0], [285.0, 285.0], "u", 1.0, **kw)
    with pytest.raises(ValueError, match=r"lon\[0\] = 10.0 is outside .* not global"):
        PointObservations([5.0], [10.0], "u", 1.0, **kw)
    with pytest.raises(ValueError, match="variable 't2m' is not among"):
        PointObservations([5.0, 6.0], [285.0, 285.0], ["u", "t2m"], 1.0, **kw)
    with pytest.raises(ValueError, match="error"):
        PointObservations([5.0], [285.0], "u", -1.0, **kw)
    with pytest.raises(ValueError, match="grid_lat must be strictly"):
        PointObservations([5.0], [285.0], "u", 1.0, grid_lat=[0.0, 10.0, 5.0],
                          grid_lon=[280.0, 290.0], variables=["u"])
    frame = pd.DataFrame({"lat": [5.0], "lon": [285.0], "variable": ["u"], "error": [1.0]})
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['observation'\]"):
        PointObservations.from_dataframe(frame, **kw)
    frame["observation"] = [2.0]
    frame["variable"] = ["msl"]
    with pytest.raises(ValueError, match="variable 'msl' is not among"):
        PointObservations.from_dataframe(frame, **kw)
    frame["variable"], frame["lat"] = ["u"], [np.nan]
    with pytest.raises(ValueError, match=r"lat\[0\] is not finite"):
        PointObservations.from_dataframe(frame, **kw)
    frame["observation"] = ["high"]
    with pytest.raises(ValueError, match="column 'observation' must be numbers"):
        PointObservations.from_dataframe(frame, **kw)
    op = PointObservations([5.0], [285.0], "u", 1.0, **kw)
    with pytest.raises(ValueError, match="state shape"):
        op(torch.zeros(2, 1, 3, 3))


# -- a twin: three Lorenz-96 rings along latitudes 20 N, 0, 20 S of a global grid,
# observed at random points (each observation mixes up to four grid values)
GRID_LAT = torch.tensor([20.0, 0.0, -20.0], dtype=F64)
NX = 40
GRID_LON = torch.arange(NX, dtype=F64) * 9.0


class _Rings:
    """Each latitude row of a (member, 1, lat, lon) state is a Lorenz-96 ring."""

    def __init__(self) -> None:
        self.l96 = Lorenz96(NX)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        return self.l96.step(x.reshape(-1, NX)).reshape(x.shape)


def _no_assimilation(prior, y, operator, *, generator=None):
    return prior


@pytest.mark.parametrize("name", ["letkf", "ensf"])
def test_point_observation_twin_with_both_filters(name):
    torch.set_num_threads(1)
    model = _Rings()
    g = torch.Generator().manual_seed(0)
    truth = model.l96.spin_up(200, batch=3, generator=g).reshape(1, 1, 3, NX)
    # a background 2 away from the truth, and members spread by 2 about it
    background = truth + 2.0 * torch.randn(1, 1, 3, NX, generator=g, dtype=F64)
    ensemble = background + 2.0 * torch.randn(20, 1, 3, NX, generator=g, dtype=F64)
    lat = -20.0 + 40.0 * torch.rand(90, generator=g, dtype=F64)
    lon = 360.0 * torch.rand(90, generator=g, dtype=F64)
    op = PointObservations(lat, lon, "x", 1.0, grid_lat=GRID_LAT, grid_lon=GRID_LON,
                           variables=["x"])
    dist = grid_distance(GRID_LAT, GRID_LON)
    filt = (LETKF(radius=1000.0, distance=dist, inflation=1.1) if name == "letkf"
            else EnSF(radius=1000.0, distance=dist, inflation=1.1))
    kw = {"n_cycles": 12, "truth": truth[0], "progress": False, "seed": 1}
    ds = run_cycle(model, filt, op, ensemble, **kw)
    free = run_cycle(model, _no_assimilation, op, ensemble, **kw)
    rmse_a, rmse_f = ds["rmse_a"].values, ds["rmse_f"].values
    assert rmse_a.mean() < rmse_f.mean()
    assert ds["obs_rmse_a"].values.mean() < ds["obs_rmse_f"].values.mean()
    assert rmse_a[-1] < 0.6 * float(free["rmse_a"].values[-1])
