"""tfda's EnSF and LETKF as an earth2studio AssimilationModel: the protocol check, a twin
where the analysis beats the forecast, equality with the filter called directly, the
time window, errors naming the column or dimension, and the generator."""

from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

pytest.importorskip("earth2studio", reason="the optional extra: pip install 'tfda[earth2studio]'")

from earth2studio.models.da.base import AssimilationModel  # noqa: E402
from earth2studio.models.px import Persistence  # noqa: E402

from tfda.da.filters import LETKF, EnSF, grid_distance  # noqa: E402
from tfda.interop.e2s_assimilation import E2SAssimilation  # noqa: E402
from tfda.interop.e2s_prognostic import E2SForecastModel  # noqa: E402
from tfda.observations import PointObservations  # noqa: E402

LAT = np.linspace(30.0, -30.0, 7)
LON = np.arange(0.0, 360.0, 15.0)
VARS = ["t2m", "u10m"]
T0 = np.datetime64("2024-01-01T00", "ns")
ERR = {"t2m": 0.2, "u10m": 0.2}


def _fields(rng: np.random.Generator, n: int) -> np.ndarray:
    """n smooth random (variable, lat, lon) fields: low zonal and meridional waves with
    N(0, 1) amplitudes, so members and the truth are draws of one distribution."""
    la, lo = np.meshgrid(np.deg2rad(LAT), np.deg2rad(LON), indexing="ij")
    out = np.zeros((n, 2, LAT.size, LON.size))
    for k in range(1, 4):
        for m in range(3):
            a, b = rng.normal(size=(2, n, 2, 1, 1))
            out += (a * np.cos(k * lo) + b * np.sin(k * lo)) * np.cos(m * la) / (k + m)
    return out


def _prior(values: np.ndarray, lead_hours: int = 0) -> xr.DataArray:
    return xr.DataArray(values[:, None, None], dims=["ensemble", "time", "lead_time",
                                                     "variable", "lat", "lon"],
                        coords={"ensemble": np.arange(values.shape[0]), "time": [T0],
                                "lead_time": [np.timedelta64(lead_hours, "h")],
                                "variable": VARS, "lat": LAT, "lon": LON})


def _twin(seed: int = 0, n_obs: int = 60):
    rng = np.random.default_rng(seed)
    truth, members = _fields(rng, 1)[0], _fields(rng, 20)
    lat, lon = rng.uniform(-30, 30, n_obs), rng.uniform(-180, 180, n_obs)  # -180..180 E
    var = rng.choice(VARS, n_obs)
    op = PointObservations(lat, lon, list(var), 0.2, grid_lat=LAT, grid_lon=LON,
                           variables=VARS)
    clean = op(torch.as_tensor(truth)[None])[0].numpy()
    frame = pd.DataFrame({"time": T0, "lat": lat, "lon": lon, "variable": var,
                          "observation": clean + 0.2 * rng.normal(size=n_obs)})
    return truth, _prior(members), frame


def _filters():
    dist = grid_distance(LAT, LON)
    return {"letkf": LETKF(radius=2000.0, distance=dist),
            "ensf": EnSF(radius=2000.0, distance=dist)}


def _rmse(x: xr.DataArray, truth: np.ndarray) -> float:
    mean = x.mean("ensemble").transpose("variable", "lat", "lon", ...).values.reshape(truth.shape)
    return float(np.sqrt(((mean - truth) ** 2).mean()))


@pytest.mark.parametrize("name", ["letkf", "ensf"])
def test_protocol_and_a_twin_where_the_analysis_beats_the_forecast(name):
    truth, prior, frame = _twin()
    model = E2SAssimilation(_filters()[name], variables=VARS, lat=LAT, lon=LON, obs_error=ERR)
    assert isinstance(model, AssimilationModel)
    post = model(prior, frame)
    assert post.dims == prior.dims and post.shape == prior.shape
    assert isinstance(post.data, np.ndarray)  # the model's device is the CPU
    for d in prior.dims:
        np.testing.assert_array_equal(post[d].values, prior[d].values)
    # the prior mean is ~1.1 from the truth; 60 observations with error 0.2 must help a lot
    assert _rmse(post, truth) < 0.5 * _rmse(prior, truth)


def test_letkf_through_the_wrapper_equals_the_filter_called_directly():
    truth, prior, frame = _twin(seed=1)
    filt = _filters()["letkf"]
    frame = frame.assign(error=0.3)  # the column wins over obs_error
    post = E2SAssimilation(filt, variables=VARS, lat=LAT, lon=LON, obs_error=ERR)(prior, frame)
    op, y = PointObservations.from_dataframe(frame, grid_lat=LAT, grid_lon=LON, variables=VARS)
    direct = filt(torch.as_tensor(prior.values[:, 0, 0]), y, op)
    np.testing.assert_array_equal(post.values[:, 0, 0], direct.numpy())


def test_only_observations_valid_at_the_state_time_count_and_dims_may_be_reordered():
    truth, prior, frame = _twin(seed=2)
    model = E2SAssimilation(_filters()["letkf"], variables=VARS, lat=LAT, lon=LON,
                            obs_error=ERR, time_tolerance=np.timedelta64(1, "h"))
    # valid time = time + lead_time = T0 + 6 h: the T0 observations are 6 h off
    late = _prior(prior.values[:, 0, 0], lead_hours=6)
    np.testing.assert_array_equal(model(late, frame).values, late.values)
    shifted = frame.assign(time=T0 + np.timedelta64(6, "h") + np.timedelta64(30, "m"))
    assert not np.array_equal(model(late, shifted).values, late.values)
    # any dim order comes back in that order, with the same numbers
    reordered = prior.transpose("lon", "variable", "ensemble", "time", "lat", "lead_time")
    a = model(reordered, frame)
    assert a.dims == reordered.dims
    b = model(prior, frame)
    np.testing.assert_array_equal(a.transpose(*prior.dims).values, b.values)
    np.testing.assert_array_equal(model(prior, None).values, prior.values)


def test_errors_name_the_column_dimension_and_variable():
    truth, prior, frame = _twin(seed=3)
    model = E2SAssimilation(_filters()["letkf"], variables=VARS, lat=LAT, lon=LON,
                            obs_error=ERR)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['observation'\]"):
        model(prior, frame.drop(columns="observation"))
    with pytest.raises(ValueError, match="'ensemble' missing"):
        model(prior.rename(ensemble="member"), frame)
    with pytest.raises(ValueError, match="lat coordinate"):
        model(prior.assign_coords(lat=LAT + 1.0), frame)
    with pytest.raises(ValueError, match="variable coordinate"):
        model(prior.assign_coords(variable=["t2m", "v10m"]), frame)
    with pytest.raises(ValueError, match="'time' has 2 entries"):
        model(xr.concat([prior, prior.assign_coords(time=[T0 + 1])], "time"), frame)
    with pytest.raises(ValueError, match=r"variable 'z500' is not among"):
        model(prior, frame.assign(variable="z500", error=1.0))
    bare = E2SAssimilation(_filters()["letkf"], variables=VARS, lat=LAT, lon=LON)
    with pytest.raises(ValueError, match=r"no 'error' column and no obs_error for .*'t2m'"):
        bare(prior, frame)
    assert "error" in bare.input_coords()[1] and "error" not in model.input_coords()[1]
    with pytest.raises(ValueError, match=r"obs_error: \['q'\]"):
        E2SAssimilation(_filters()["letkf"], variables=VARS, lat=LAT, lon=LON, obs_error={"q": 1})


def test_generator_forecasts_with_a_model_then_assimilates():
    truth, prior, frame = _twin(seed=4)
    persistence = E2SForecastModel(Persistence(VARS, OrderedDict({"lat": LAT, "lon": LON})))
    model = E2SAssimilation(_filters()["letkf"], variables=VARS, lat=LAT, lon=LON,
                            obs_error=ERR, model=persistence)
    (init,) = model.init_coords()
    assert list(init) == ["ensemble", "time", "lead_time", "variable", "lat", "lon"]
    gen = model.create_generator(prior)
    assert gen.send(None) is prior
    # persistence keeps the state; the observations are valid at T0 + 6 h
    step1 = gen.send(frame.assign(time=T0 + np.timedelta64(6, "h")))
    assert step1["lead_time"].values[0] == np.timedelta64(6, "h")
    assert _rmse(step1, truth) < 0.5 * _rmse(prior, truth)
    step2 = gen.send(None)  # no observations: persistence of step 1, 12 h
    assert step2["lead_time"].values[0] == np.timedelta64(12, "h")
    np.testing.assert_array_equal(step2.values, step1.values)
    # (prior, obs) pairs: the forecast ran elsewhere
    again = gen.send((prior, frame))
    np.testing.assert_array_equal(again.values, model(prior, frame).values)
    gen.close()
    lone = E2SAssimilation(_filters()["letkf"], variables=VARS, lat=LAT, lon=LON).create_generator()
    lone.send(None)
    with pytest.raises(ValueError, match="send\\(obs\\) forecasts the last state"):
        lone.send(frame)
