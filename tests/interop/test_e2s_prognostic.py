"""earth2studio prognostic models as tfda forecast models: Persistence through the adapter
cycles bit for bit like tfda's own persistence, earth2studio's package loader builds a
test-defined model, handshakes name the dimension, and ``tfda cycle`` runs one."""

import json
from collections import OrderedDict
from datetime import timedelta

import numpy as np
import pytest
import torch

pytest.importorskip("earth2studio", reason="the optional extra: pip install 'tfda[earth2studio]'")

from earth2studio.models.auto import AutoModelMixin, Package  # noqa: E402
from earth2studio.models.px import Persistence  # noqa: E402
from earth2studio.models.px.utils import PrognosticMixin  # noqa: E402

from tfda import models  # noqa: E402
from tfda.da.cycle import run_cycle  # noqa: E402
from tfda.da.filters import LETKF, EnSF, grid_distance  # noqa: E402
from tfda.interop.e2s_prognostic import E2SForecastModel, load_model  # noqa: E402
from tfda.models.base import ForecastModel, NormalisedModule  # noqa: E402
from tfda.observations import PointObservations  # noqa: E402

LAT = np.linspace(40.0, -40.0, 9)
LON = np.arange(0.0, 360.0, 20.0)
VARS = ["u10m", "t2m"]
F64 = torch.float64


def _persistence(**kw) -> Persistence:
    domain = OrderedDict({"lat": LAT, "lon": LON})
    return Persistence(VARS, domain, **kw)


def _tfda_persistence() -> NormalisedModule:
    """tfda's own persistence: the normalised wrapper around an identity core."""
    return NormalisedModule(torch.nn.Identity(), torch.zeros(2), torch.ones(2), variables=VARS,
                            lat=torch.as_tensor(LAT), lon=torch.as_tensor(LON),
                            dt=timedelta(hours=6))


class Advect(torch.nn.Module, AutoModelMixin, PrognosticMixin):
    """A test prognostic model with a model package: rolls every field ``shift`` columns
    east per 6 h step; SFNO-like coords (batch, time, lead_time, variable, lat, lon)."""

    def __init__(self, shift: int, variables: list[str]) -> None:
        super().__init__()
        self.shift = shift
        self.variables = np.array(variables)
        self.scale = torch.nn.Parameter(torch.ones(()))  # float32 weights, like a network

    def input_coords(self):
        return OrderedDict({"batch": np.empty(0), "time": np.empty(0),
                            "lead_time": np.array([np.timedelta64(0, "h")]),
                            "variable": self.variables, "lat": LAT, "lon": LON})

    def output_coords(self, input_coords):
        out = OrderedDict(input_coords)
        out["lead_time"] = input_coords["lead_time"] + np.timedelta64(6, "h")
        return out

    def __call__(self, x, coords):
        assert x.dtype == torch.float32 and x.shape[-4:-3] == (1,)  # lead_time, one step
        return self.scale * torch.roll(x, self.shift, dims=-1), self.output_coords(coords)

    def create_iterator(self, x, coords):
        yield x, coords
        while True:
            x, coords = self(x, coords)
            yield x, coords

    package_root = None  # set by the test: where load_default_package points

    @classmethod
    def load_default_package(cls):
        return Package(str(cls.package_root))

    @classmethod
    def load_model(cls, package, variables=("u10m", "t2m")):
        with open(package.resolve("config.json")) as f:
            return cls(json.load(f)["shift"], list(variables))


def test_persistence_adapter_is_a_forecast_model_and_exact():
    model = E2SForecastModel(_persistence())
    assert isinstance(model, ForecastModel)
    assert model.variables == tuple(VARS) and model.dt == timedelta(hours=6)
    torch.testing.assert_close(model.lat, torch.as_tensor(LAT))
    x = torch.randn(4, 2, 9, 18, dtype=F64, generator=torch.Generator().manual_seed(0))
    y = model.step(x)
    assert torch.equal(y, x) and y.dtype == F64 and not y.is_inference()


@pytest.mark.parametrize("name", ["ensf", "letkf"])
def test_cycle_with_e2s_persistence_equals_tfda_persistence_bit_for_bit(name):
    g = torch.Generator().manual_seed(1)
    truth = torch.randn(2, 9, 18, generator=g, dtype=F64)
    ensemble = truth + torch.randn(10, 2, 9, 18, generator=g, dtype=F64)
    lat = -35 + 70 * torch.rand(40, generator=g, dtype=F64)
    lon = 360 * torch.rand(40, generator=g, dtype=F64)
    op = PointObservations(lat, lon, ["u10m", "t2m"] * 20, 0.5, grid_lat=LAT, grid_lon=LON,
                           variables=VARS)
    dist = grid_distance(LAT, LON)
    filt = (EnSF(steps=20, radius=3000.0, distance=dist) if name == "ensf"
            else LETKF(radius=3000.0, distance=dist))
    kw = {"n_cycles": 3, "truth": truth, "progress": False, "seed": 3}
    theirs = run_cycle(E2SForecastModel(_persistence()), filt, op, ensemble, **kw)
    ours = run_cycle(_tfda_persistence(), filt, op, ensemble, **kw)
    for var in ("ensemble", "truth", "rmse_a", "rmse_f", "spread_a"):
        assert np.array_equal(theirs[var].values, ours[var].values), var
    # the analysis acted: observations shrink the spread every cycle
    assert (theirs["spread_a"].values < theirs["spread_f"].values).all()


def test_package_loader_builds_a_test_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"shift": 2}))
    Advect.package_root = tmp_path
    model = models.load("earth2studio", model=Advect)  # the default package
    assert isinstance(model.model, Advect) and model.dt == timedelta(hours=6)
    x = torch.randn(3, 2, 9, 18, dtype=F64, generator=torch.Generator().manual_seed(2))
    y = model.step(x)
    assert y.dtype == F64  # float32 inside, the state's dtype outside
    torch.testing.assert_close(y, torch.roll(x, 2, dims=-1).float().double())
    other = tmp_path / "pkg3"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"shift": 3}))
    three = load_model(Advect, package=str(other), model_options={"variables": ["t2m"]})
    assert three.variables == ("t2m",)
    x1 = x[:, 1:]
    torch.testing.assert_close(three.step(x1), torch.roll(x1, 3, dims=-1).float().double())


def test_registry_names_and_unknown_models():
    model = models.load("earth2studio:Persistence", model_options={
        "variable": VARS, "domain_coords": {"lat": LAT.tolist(), "lon": LON.tolist()}})
    assert isinstance(model.model, Persistence) and model.lon.numel() == 18
    with pytest.raises(ValueError, match="'NoSuchModel' is not a class of earth2studio"):
        models.load("earth2studio:NoSuchModel")
    with pytest.raises(ValueError, match="package: Persistence has no model package"):
        load_model("Persistence", package="/nowhere", model_options={
            "variable": VARS, "domain_coords": {"lat": LAT, "lon": LON}})


def test_a_model_missing_its_earth2studio_extra_is_one_line(capfd):
    import inspect

    from earth2studio.models.px import SFNO
    from earth2studio.utils.imports import OptionalDependencyFailure

    if inspect.getfile(SFNO) not in OptionalDependencyFailure.failures:
        pytest.skip("earth2studio's 'sfno' group is installed here")
    with pytest.raises(ImportError, match=r"group 'sfno' .*install it as https://"):
        models.load("earth2studio:SFNO")
    captured = capfd.readouterr()
    assert "Earth2Studio Extra Dependency Error" not in captured.out + captured.err


class _Renamed(Advect):
    def output_coords(self, input_coords):
        out = super().output_coords(input_coords)
        out["variable"] = np.array(["u10m", "v10m"])
        return out


class _Coarsened(Advect):
    def output_coords(self, input_coords):
        out = super().output_coords(input_coords)
        out["lat"] = LAT[::2]
        return out


class _NoBatch(Advect):
    def input_coords(self):
        coords = super().input_coords()
        del coords["batch"]
        return coords


def test_handshake_errors_name_the_dimension():
    with pytest.raises(ValueError, match="lead_time takes 2 history steps"):
        E2SForecastModel(_persistence(history=2))
    hrrr = Persistence(VARS, OrderedDict({"hrrr_y": np.arange(5), "hrrr_x": np.arange(6)}))
    with pytest.raises(ValueError, match=r"do not end with \['variable', 'lat', 'lon'\]"):
        E2SForecastModel(hrrr)
    with pytest.raises(ValueError, match=r"variable coordinates differ .*\['t2m'\].*\['v10m'\]"):
        E2SForecastModel(_Renamed(1, VARS))
    with pytest.raises(ValueError, match="no leading 'batch' dimension"):
        E2SForecastModel(_NoBatch(1, VARS))
    with pytest.raises(ValueError, match="lat grid of the output"):
        E2SForecastModel(_Coarsened(1, VARS))
    model = E2SForecastModel(_persistence())
    with pytest.raises(ValueError, match=r"variable dimension \(1\) has 3 entries"):
        model.step(torch.zeros(2, 3, 9, 18))
    with pytest.raises(ValueError, match=r"lon dimension \(3\) has 17 entries"):
        model.step(torch.zeros(2, 2, 9, 17))
    with pytest.raises(TypeError, match="PrognosticModel"):
        E2SForecastModel(torch.nn.Identity())


def _write_state(path, values):
    import xarray as xr

    xr.DataArray(values, dims=("variable", "lat", "lon"),
                 coords={"variable": VARS, "lat": LAT, "lon": LON}).to_dataset(
        name="state").to_netcdf(path)


def test_tfda_cycle_runs_an_earth2studio_model(tmp_path):
    from tfda.experiments import cycle

    state = np.random.default_rng(0).normal(size=(2, 9, 18)).astype(np.float32)
    _write_state(tmp_path / "x0.nc", state)
    lat = ", ".join(map(str, LAT))
    lon = ", ".join(map(str, LON))
    (tmp_path / "c.toml").write_text(f"""
[model]
name = "earth2studio:Persistence"
[model.options]
initial_state = "{tmp_path / 'x0.nc'}"
[model.options.model_options]
variable = ["u10m", "t2m"]
domain_coords = {{ lat = [{lat}], lon = [{lon}] }}
[truth]
spin_up_steps = 2
[ensemble]
members = 6
spread = 1.0
[observations]
operator = "every"
stride = 3
std = 0.5
[filter]
name = "letkf"
[cycle]
n_cycles = 3
""")
    rc = cycle.main([str(tmp_path / "c.toml"), "--out", str(tmp_path / "run"), "--no-progress"])
    assert rc == 0
    import xarray as xr

    with xr.open_dataset(tmp_path / "run" / "cycle.nc") as ds:
        np.testing.assert_array_equal(ds["truth"].values, state)  # persistence keeps it
        assert list(ds["truth"].dims) == ["variable", "lat", "lon"]
        assert float(ds["rmse_a"][-1]) < float(ds["rmse_f"][0])


def test_initial_state_errors_name_the_file_and_variable(tmp_path, capsys):
    from tfda.experiments import cycle

    bad = tmp_path / "x0.nc"
    import xarray as xr

    xr.DataArray(np.zeros((1, 9, 18)), dims=("variable", "lat", "lon"),
                 coords={"variable": ["u10m"], "lat": LAT, "lon": LON}).to_dataset(
        name="state").to_netcdf(bad)
    model = E2SForecastModel(_persistence(), initial_state=str(bad))
    with pytest.raises(ValueError, match=r"variable\(s\) \['t2m'\] absent"):
        model.spin_up(0)
    with pytest.raises(ValueError, match="initial_state .* is needed"):
        E2SForecastModel(_persistence()).spin_up(0)
    (tmp_path / "c.toml").write_text('[model]\nname = "earth2studio:Persistence"\n'
                                     '[model.options]\nnot_an_option = 1\n'
                                     '[filter]\nname = "letkf"\n')
    assert cycle.main([str(tmp_path / "c.toml"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.options.not_an_option: unknown key" in err[0]


def test_the_cheap_caller_lookup_names_the_same_file_as_inspect():
    """earth2studio keys its optional-dependency registry by the caller's file name: the
    cheap stack() of interop/_e2s.py must give what inspect.stack() gives."""
    import inspect

    from earth2studio.utils import imports

    def caller_file(stack):
        return stack()[1].filename

    assert caller_file(imports.inspect.stack) == caller_file(inspect.stack) == __file__
