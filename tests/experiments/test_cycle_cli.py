from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr

from tfda.experiments import cycle, rundir

TINY = """
[model]
name = "lorenz96"
options = { nx = 8 }
[truth]
spin_up_steps = 50
[ensemble]
members = 6
spread = 1.0
[observations]
operator = "every"
stride = 2
std = 0.5
[filter]
name = "ensf"
options = { steps = 20, score = "paired", sampler = "ode", standardise = true }
[cycle]
n_cycles = 4
steps_per_cycle = 1
seed = 3
"""


def test_cycle_runs_and_resumes_identically(tmp_path, monkeypatch):
    conf = tmp_path / "c.toml"
    conf.write_text(TINY)
    ref = tmp_path / "ref"
    assert cycle.main([str(conf), "--out", str(ref), "--no-progress"]) == 0
    assert (ref / "COMPLETE").is_file()
    with xr.open_dataset(ref / "cycle.nc") as ds:
        assert ds.sizes["cycle"] == 4
        rmse_a = ds["rmse_a"].values
        final = ds["ensemble"].values
    assert np.all(np.isfinite(rmse_a))
    # filter works: the analysis beats the 0.5-std observations' own error level x2
    assert rmse_a.mean() < 1.0
    assert json.loads((ref / "config.json").read_text())["model"]["name"] == "lorenz96"

    # kill the run in cycle 3, then restart it: it resumes and ends identical
    real = cycle.make_filter
    calls = {"n": 0}

    def flaky(name, options, **kwargs):
        filt = real(name, options, **kwargs)

        def analysis(prior, y, operator, *, generator=None):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
            return filt.analysis(prior, y, operator, generator=generator)

        return analysis

    out = tmp_path / "run"
    monkeypatch.setattr(cycle, "make_filter", flaky)
    with pytest.raises(KeyboardInterrupt):
        cycle.main([str(conf), "--out", str(out), "--no-progress"])
    # nothing in --out yet; the checkpoint is staged beside it (experiments.rundir)
    assert not out.exists() and list(rundir.staging_dir(out).glob("checkpoint-*.pt"))
    monkeypatch.setattr(cycle, "make_filter", real)
    assert cycle.main([str(conf), "--out", str(out), "--no-progress"]) == 0
    with xr.open_dataset(out / "cycle.nc") as ds:
        np.testing.assert_array_equal(ds["ensemble"].values, final)
        np.testing.assert_array_equal(ds["rmse_a"].values, rmse_a)
    assert not list(out.glob("checkpoint-*.pt")) and not rundir.staging_dir(out).exists()


def test_bad_configs(tmp_path, capsys):
    assert cycle.main([str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.replace('name = "lorenz96"', 'name = "nope"'))
    assert cycle.main([str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    bad.write_text(TINY + "[extra]\nx = 1\n")
    assert cycle.main([str(bad)]) == 2
    assert "extra: unknown key" in capsys.readouterr().err


POINTS = """
[model]
name = "barotropic"
options = {{ config = {{ resolution = 2.0, substeps = 6 }} }}
[truth]
lat = 30.0
lon = 305.0
[ensemble]
members = 8
spread = 1.0
[observations]
operator = "points"
file = "{file}"
[filter]
name = "{filter}"
options = {{ {options} }}
[cycle]
n_cycles = 3
steps_per_cycle = 1
seed = 5
"""


def _stations(n: int = 40, seed: int = 0, variables=("u850", "v850", "msl")):
    import pandas as pd

    rng = np.random.default_rng(seed)
    names = rng.choice(list(variables), n)
    return pd.DataFrame({"lat": rng.uniform(12.0, 48.0, n), "lon": rng.uniform(282.0, 328.0, n),
                         "variable": names, "error": np.where(names == "msl", 50.0, 0.5)})


def _points_config(tmp_path, table, name: str, *, filt: str = "letkf",
                   options: str = "radius = 800.0"):
    path = tmp_path / name
    if name.endswith(".csv"):
        table.to_csv(path, index=False)
    elif name.endswith(".nc"):
        table.to_xarray().to_netcdf(path)
    else:
        table.to_parquet(path)
    conf = tmp_path / f"{name}.toml"
    conf.write_text(POINTS.format(file=name, filter=filt, options=options))
    return conf


@pytest.mark.slow
@pytest.mark.parametrize("filt", ["letkf", "ensf"])
def test_point_observation_twin_from_a_station_file(tmp_path, filt):
    """The twin draws y = H(truth) + eps at the file's stations; assimilating them,
    localised within 800 km (the cycle supplies the grid's distance), brings the
    ensemble mean closer to them than the forecast, with either filter. (The state RMSE
    mixes Pa, m/s and m2/s2 and is ruled by the unobserved msl and z850 of an ensemble
    spread by 1 unit in every variable: not a measure of the point operator.)"""
    conf = _points_config(tmp_path, _stations(80, variables=("u850", "v850")), "stations.csv",
                          filt=filt,
                          options="radius = 800.0, inflation = 1.05")
    ds, _ = cycle.run(cycle.load_config(conf), tmp_path / "run", progress=False)
    assert np.all(ds["obs_rmse_a"].values < 0.95 * ds["obs_rmse_f"].values)


def test_point_files_in_every_format_give_the_same_run(tmp_path):
    """CSV and netCDF (and Parquet, where pyarrow is installed) hold the same table."""
    table = _stations(12)
    names = ["s.csv", "s.nc"]
    try:
        import pyarrow  # noqa: F401

        names.append("s.parquet")
    except ImportError:
        pass
    runs = []
    for name in names:
        cfg = cycle.load_config(_points_config(tmp_path, table, name))
        cfg = cycle.replace(cfg, cycle=cycle.replace(cfg.cycle, n_cycles=1))
        runs.append(cycle.run(cfg, tmp_path / f"run-{name}", progress=False)[0])
    for ds in runs[1:]:
        np.testing.assert_array_equal(ds["ensemble"].values, runs[0]["ensemble"].values)


def test_observed_values_in_the_file_are_assimilated_at_their_cycle(tmp_path):
    """Values given in the file (here noise-free H(truth), written by hand from the same
    truth run) are the y of their cycle: y of the first cycle equals them, a cycle without
    rows leaves the points unobserved (NaN) and is a forecast only, and the filter pulls
    the ensemble towards the truth at the points."""
    from tfda import models
    from tfda.models.barotropic import vortex_state
    from tfda.observations.points import PointObservations

    table = _stations(30, variables=("u850", "v850"))
    from tfda.models.barotropic import BarotropicConfig

    model = models.load("barotropic", config=BarotropicConfig(resolution=2.0, substeps=6))
    truth = vortex_state(model, 30.0, 305.0, vmax=40.0, rmax=150e3)
    op, _ = PointObservations.from_dataframe(table.assign(observation=0.0), grid_lat=model.lat,
                                             grid_lon=model.lon, variables=model.variables)
    rows = []
    for k in (1, 2):  # cycle 3 has no rows
        truth = model.step(truth)
        rows.append(table.assign(observation=op(truth)[0].numpy(), cycle=k))
    import pandas as pd

    observed = pd.concat(rows, ignore_index=True)
    ops, y = cycle.point_observations(observed, model, 3, torch.float64)
    np.testing.assert_allclose(y[0].numpy(), rows[0]["observation"].to_numpy(), rtol=1e-12)
    assert bool(torch.isnan(y[2]).all()) and not bool(torch.isnan(y[:2]).any())
    conf = _points_config(tmp_path, observed, "observed.csv")
    ds, _ = cycle.run(cycle.load_config(conf), tmp_path / "run", progress=False)
    fit_a, fit_f = ds["obs_rmse_a"].values, ds["obs_rmse_f"].values  # = error at the points
    assert np.all(fit_a[:2] < fit_f[:2])
    assert np.isnan(fit_a[2]) and ds["rmse_a"].values[2] == ds["rmse_f"].values[2]


@pytest.mark.parametrize("table, message", [
    ("lat,lon,variable\n30,300,msl\n", "lacks column(s) ['error']"),
    ("lat,lon,variable,error\n30,300,t2m,1\n", "'t2m' is not among the state's variables"),
    ("lat,lon,variable,error\n80,300,msl,1\n", "lat[0] = 80.0 is outside"),
    ("lat,lon,variable,error,observation\n30,300,msl,1,5\n", "needs a cycle column"),
    ("lat,lon,variable,error,observation,cycle\n30,300,msl,1,5,7\n", "cycle 7 is not one of"),
    ("lat,lon,variable,error,observation,cycle\n30,300,msl,1,abc,1\n",
     "column 'observation' must be numbers, row 0 holds 'abc'"),
])
def test_bad_point_files_name_the_file_in_one_line(tmp_path, capsys, table, message):
    (tmp_path / "bad.csv").write_text(table)
    conf = tmp_path / "c.toml"
    conf.write_text(POINTS.format(file="bad.csv", filter="letkf", options=""))
    assert cycle.main([str(conf), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "observations.file" in err[0], err
    assert not (tmp_path / "o" / "COMPLETE").exists()


def test_points_on_a_model_without_a_grid_is_one_line(tmp_path, capsys):
    (tmp_path / "p.csv").write_text("lat,lon,variable,error\n1,2,x,1\n")
    conf = tmp_path / "c.toml"
    conf.write_text('[model]\nname = "lorenz96"\n[filter]\nname = "letkf"\n'
                    '[observations]\noperator = "points"\nfile = "p.csv"\n')
    assert cycle.main([str(conf), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a model on a (variable, lat, lon) grid" in err[0], err
