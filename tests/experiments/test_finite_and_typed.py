"""Issue 21, the audit's silent wrong results and untyped API arguments: each is now an
error naming the argument, key, column or file (never a bare ``'<' not supported``,
an AttributeError, or a result computed from a wrong value)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "observations"))
from test_era5 import write_layout  # noqa: E402

from tfda.da.cycle import run_cycle  # noqa: E402
from tfda.da.filters import LETKF, EnSF  # noqa: E402
from tfda.experiments import cli, lee  # noqa: E402
from tfda.models.lorenz96 import Lorenz96  # noqa: E402
from tfda.observations.besttrack import read_atcf, read_hurdat2  # noqa: E402
from tfda.observations.era5 import load_era5  # noqa: E402
from tfda.observations.operators import Identity  # noqa: E402
from tfda.observations.points import PointObservations, read_point_table  # noqa: E402

INF, NAN = math.inf, math.nan


@pytest.mark.parametrize("kwargs,error,match", [
    ({"steps": "10"}, TypeError, "steps must be an integer, got '10'"),
    ({"steps": 2.5}, TypeError, "steps must be an integer, got 2.5"),
    ({"inflation": INF}, ValueError, "inflation must be finite"),
    ({"bandwidth": NAN}, ValueError, "bandwidth must be finite"),
    ({"eps_a": "0.05"}, TypeError, "eps_a must be a number"),
    ({"standardise": 1}, TypeError, "standardise must be True or False"),
])
def test_ensf_fields_are_typed_and_finite(kwargs, error, match):
    with pytest.raises(error, match=match):
        EnSF(**kwargs)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"inflation": INF}, ValueError, "inflation must be finite"),
    ({"rtps": None}, TypeError, "rtps must be a number"),
    ({"chunk": "x"}, TypeError, "chunk must be an integer"),
])
def test_letkf_fields_are_typed_and_finite(kwargs, error, match):
    with pytest.raises(error, match=match):
        LETKF(**kwargs)


def _twin():
    model = Lorenz96(8)
    ens = torch.randn(5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return model, ens, torch.zeros(8, dtype=torch.float64)


@pytest.mark.parametrize("change,error,match", [
    ({"n_cycles": 2.5}, TypeError, "n_cycles must be an integer, got 2.5"),
    ({"n_cycles": "3"}, TypeError, "n_cycles must be an integer"),
    ({"steps_per_cycle": 0}, ValueError, "steps_per_cycle must be >= 1"),
    ({"truth": torch.full((8,), NAN, dtype=torch.float64)}, ValueError, "truth holds 8"),
    ({"checkpointer": "x"}, TypeError, "checkpointer must have save and load"),
    ({"model": None}, TypeError, "model must have a step"),
    ({"analysis": 3}, TypeError, "analysis must be callable"),
])
def test_run_cycle_arguments_are_named(change, error, match):
    model, ens, truth = _twin()
    kwargs = {"model": model, "analysis": LETKF(), "n_cycles": 2, "truth": truth,
              "progress": False, **change}
    with pytest.raises(error, match=match):
        run_cycle(kwargs.pop("model"), kwargs.pop("analysis"), Identity(1.0), ens, **kwargs)


def test_models_and_points_and_besttracks_name_their_arguments(tmp_path):
    from tfda import models

    with pytest.raises(TypeError, match="name must be a registered model name"):
        models.load(None)
    grid = {"grid_lat": [0.0, 10.0], "grid_lon": [0.0, 10.0], "variables": ["msl"]}
    with pytest.raises(ValueError, match=r"lat\[0\] = 95.0 is not within -90 .. 90"):
        PointObservations([95.0], [5.0], "msl", 1.0, **grid)
    with pytest.raises(TypeError, match="variables must be a sequence of names"):
        PointObservations([5.0], [5.0], "msl", 1.0, **{**grid, "variables": "msl"})
    with pytest.raises(TypeError, match="path must be a file path"):
        read_atcf(42)
    bdeck = tmp_path / "b.dat"
    bdeck.write_text("AL, 13, 2023090800,   , BEST,   0, 999N,  500W,  95,  960, HU\n")
    with pytest.raises(ValueError, match="b.dat:1: latitude '999N' is not within 0 .. 90"):
        read_atcf(bdeck)  # was read as 99.9 N
    hurdat = tmp_path / "h.txt"
    hurdat.write_text("AL132023, LEE, 1,\n20230908, 0000,  , HU, 91.0N,  50.0W, 95, 960\n")
    with pytest.raises(ValueError, match="latitude '91.0N'"):
        read_hurdat2(hurdat)
    with pytest.raises(ValueError, match="not a regular file"):
        read_atcf(tmp_path)


def test_point_tables_refuse_inf_and_out_of_range(tmp_path, capsys):
    head = "lat,lon,variable,error,observation,cycle\n"
    cases = {"inf_obs": ("10,5,msl,1,inf,1\n", "column 'observation' row 0 holds inf"),
             "nan_err": ("10,5,msl,,1,1\n", "column 'error' row 0 holds nan"),
             "lat": ("91,5,msl,1,1,1\n", "column 'lat' row 0 holds 91")}
    for name, (row, match) in cases.items():
        p = tmp_path / f"{name}.csv"
        p.write_text(head + row)
        with pytest.raises(ValueError, match=match):
            read_point_table(p)
    p = tmp_path / "missing_obs.csv"  # NaN observation: that point is absent that cycle
    p.write_text(head + "10,5,msl,1,,1\n")
    assert math.isnan(read_point_table(p)["observation"][0])
    with pytest.raises(ValueError, match="not a regular file"):
        read_point_table("/dev/zero")
    # through tfda cycle: the inf observation names the file and column, exit 2
    conf = tmp_path / "c.toml"
    conf.write_text('[model]\nname = "barotropic"\n[filter]\nname = "letkf"\n'
                    '[observations]\noperator = "points"\nfile = "inf_obs.csv"\n')
    assert cli.main(["cycle", str(conf), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "inf_obs.csv: column 'observation' row 0 holds inf" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_era5_inf_values_and_duplicate_channels(tmp_path, capsys):
    from tfda.experiments import era5_cli

    write_layout(tmp_path / "s.nc", "single", new=True)
    write_layout(tmp_path / "p.nc", "pressure", new=False)
    with pytest.raises(ValueError, match=r"channels: \['msl'\] given more than once"):
        load_era5(tmp_path, channels=["msl", "msl"])
    with pytest.raises(TypeError, match="channels must be a sequence of channel names"):
        load_era5(tmp_path, channels="msl")
    bad = tmp_path / "bad"
    bad.mkdir()
    with xr.open_dataset(tmp_path / "s.nc") as ds:
        ds = ds.load()
    ds["msl"][1, 0, 0] = INF
    ds.to_netcdf(bad / "s.nc", engine="netcdf4")
    (bad / "p.nc").write_bytes((tmp_path / "p.nc").read_bytes())
    with pytest.raises(ValueError, match="channel msl holds Inf values at 2023-09-08T06:00"):
        load_era5(bad)
    out = tmp_path / "era5.nc"
    assert era5_cli.main(["prepare", "--in", str(bad), "--out", str(out),
                          "--allow-any-grid"]) == 2
    assert "channel msl holds Inf" in capsys.readouterr().err and not out.exists()
    with pytest.raises(ValueError, match="not a regular file"):
        load_era5(["/dev/zero"])


@pytest.mark.parametrize("values,match", [
    ({"day0": "2023-09-08T00:00+02:00"}, "day0 must be a UTC time without a zone"),
    ({"ensf_inflation": INF}, "ensf_inflation: expected a finite number"),
    ({"error_scale": 0.0}, "error_scale must be finite and > 0"),
    ({"obs_days": [-3, -1, 0], "vortex_day": -3}, "obs_days must be evenly spaced"),
    ({"weights": "w"}, "weights: only used in era5 mode"),
])
def test_lee_config_refuses_what_it_cannot_use(values, match):
    with pytest.raises(ValueError, match=match):
        lee.LeeConfig.from_dict(values)


def test_flag_named_not_config_key(tmp_path, capsys):
    """An error about a value a flag set names the flag; a config file's, the file."""
    assert cli.main(["lee", "--members", "2", "--out", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err.startswith("tfda lee: error: --members 2 must be >= 3")
    conf = tmp_path / "c.toml"
    conf.write_text("members = 2\n")
    assert cli.main(["lee", "--config", str(conf), "--out", str(tmp_path / "a")]) == 2
    assert f"--config {conf}: members must be >= 3" in capsys.readouterr().err
    assert cli.main(["lee", "--config", "/dev/zero", "--out", str(tmp_path / "a")]) == 2
    assert "--config /dev/zero: not a regular file" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
