"""End-to-end Lee pipeline on tiny grids: the analogue, and the real (ERA5 + FourCastNet)
code path with a tiny random AFNO; plus the bad-input messages."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
import pytest
import torch

from tfda.experiments import lee
from tfda.geo import great_circle_km

TINY_ANALOGUE = {
    "members": 4, "forecast_days": 1, "obs_days": [-1, 0], "ensf_steps": 20,
    "progress": False, "error_length_scale_km": 400.0,
    # start on Day -1 at Lee's best-track position of that day (2023-09-07 00 UTC)
    "vortex_day": -1, "vortex_lat": 15.2, "vortex_lon": 312.9,
    "analogue_model": {"resolution": 2.5, "lat_south": 5.0, "lat_north": 40.0,
                       "lon_west": 285.0, "lon_east": 335.0, "substeps": 4},
}


def _toml(path, values: dict) -> str:
    lines: list[str] = []
    _toml_table(lines, "", values)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _toml_table(lines: list[str], name: str, values: dict) -> None:
    if name:
        lines.append(f"[{name}]")
    lines += [f"{k} = {json.dumps(v)}" for k, v in values.items() if not isinstance(v, dict)]
    for key, table in values.items():
        if isinstance(table, dict):
            _toml_table(lines, f"{name}.{key}" if name else key, table)


def _check_run_dir(out, cfg_members: int, days: int) -> dict:
    assert (out / "COMPLETE").is_file()
    for name in ("config.json", "metrics.json", "analyses.nc", "tracks.nc", "observations.nc",
                 "tracks.png", "tracks.pdf"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoints").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    keys = {"day", "baseline_mean_error_km", "ensf_mean_error_km", "baseline_ellipse_area_km2",
            "ensf_ellipse_area_km2", "truth_in_baseline_ellipse", "truth_in_ensf_ellipse"}
    assert [r["day"] for r in metrics["lead_days"]] == list(range(1, days + 1))
    assert all(keys <= set(r) for r in metrics["lead_days"])
    import xarray as xr

    with xr.open_dataset(out / "analyses.nc") as ds:
        assert ds["ensf"].shape[0] == cfg_members and ds["baseline"].shape[0] == cfg_members
    return metrics


def test_analogue_pipeline_tiny(tmp_path):
    out = tmp_path / "run"
    rc = lee.main(["--config", _toml(tmp_path / "c.toml", TINY_ANALOGUE), "--out", str(out)])
    assert rc == 0
    metrics = _check_run_dir(out, 4, 1)
    import xarray as xr

    with xr.open_dataset(out / "tracks.nc") as ds:
        # the metric is recomputed independently from the written tracks
        lat, lon = ds["ensf_lat"].values[:, 1], ds["ensf_lon"].values[:, 1]
        tl, to = float(ds["truth_lat"].values[1]), float(ds["truth_lon"].values[1])
        assert np.isfinite(tl)
    from tfda.experiments.plot_tracks import ensemble_ellipse

    e = ensemble_ellipse(lat, lon)
    row = metrics["lead_days"][0]
    assert row["ensf_tracked_members"] >= 3 and row["baseline_tracked_members"] >= 3
    assert row["ensf_mean_error_km"] == pytest.approx(float(great_circle_km(e.lat, e.lon, tl, to)))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["members"] == 4 and cfg["mode"] == "analogue"
    # the truth's distance from Lee's packaged best track, Day 1 = 2023-09-09 00 UTC
    assert row["truth_vs_best_track_km"] == pytest.approx(
        float(great_circle_km(tl, to, 19.0, 360 - 56.0)), rel=1e-6)
    assert np.isfinite(metrics["truth_day0_vs_best_track_km"])
    # `tfda plot-tracks RUN` re-draws exactly the figure the run drew
    from tfda.experiments import plot_tracks

    first = (out / "tracks.png").read_bytes()
    (out / "tracks.png").unlink()
    assert plot_tracks.main([str(out)]) == 0
    assert (out / "tracks.png").read_bytes() == first


def _tiny_era5(tmp_path, times, lat, lon, *, drop=()):
    from tfda.models.fourcastnet import FOURCASTNET_VARIABLES
    from tfda.observations.era5 import write_netcdf

    rng = np.random.default_rng(0)
    n = len(FOURCASTNET_VARIABLES)
    base = torch.tensor(rng.normal(0, 1, (len(times), n, lat.size, lon.size)), dtype=torch.float32)
    scale = torch.tensor([5.0] * n)[None, :, None, None]
    fields = 100 + scale * base
    lat2, lon2 = np.meshgrid(lat, lon, indexing="ij")
    for k, _ in enumerate(times):  # a deep vortex drifting west, in msl and 850-hPa winds
        clat, clon = 17.0 + 0.5 * k, 308.0 - 1.0 * k
        r = great_circle_km(clat, clon, lat2, lon2)
        x = (300.0 / np.maximum(r, 1.0)) ** 1.5
        fields[k, FOURCASTNET_VARIABLES.index("msl")] = torch.tensor(
            101000.0 - 5000.0 * (1 - np.exp(-x)))
        ang = np.radians(np.degrees(np.arctan2(lon2 - clon, lat2 - clat)) - 90.0)
        speed = 40.0 * np.sqrt(x * np.exp(1 - x))
        fields[k, FOURCASTNET_VARIABLES.index("u850")] = torch.tensor(speed * np.sin(ang))
        fields[k, FOURCASTNET_VARIABLES.index("v850")] = torch.tensor(speed * np.cos(ang))
    keep = [i for i, t in enumerate(times) if t not in drop]
    coords = {"time": np.array([np.datetime64(times[i], "ns") for i in keep]),
              "channel": FOURCASTNET_VARIABLES, "lat": lat, "lon": lon}
    return write_netcdf(tmp_path / "era5.nc", fields[keep], coords)


def _tiny_weights(tmp_path, afno):
    from tfda.models.fourcastnet import AFNOConfig, AFNONet, save_checkpoint

    torch.manual_seed(0)
    net = AFNONet(AFNOConfig(**{**afno, "img_size": tuple(afno["img_size"])}))
    wdir = tmp_path / "weights"
    wdir.mkdir()
    save_checkpoint(net, wdir / "backbone.ckpt")
    np.save(wdir / "global_means.npy", np.full((1, 21, 1, 1), 100.0))
    np.save(wdir / "global_stds.npy", np.full((1, 21, 1, 1), 5.0))
    return wdir


TINY_AFNO = {"img_size": [32, 64], "patch_size": 8, "embed_dim": 16, "depth": 1,
             "num_blocks": 2}


def _era5_setup(tmp_path, *, drop=()):
    day0 = datetime(2023, 9, 8)
    times = [day0 + timedelta(hours=6 * k) for k in range(-4, 5)]
    lat = np.linspace(90, -90, 33)
    lon = np.arange(64) * 360 / 64
    era5 = _tiny_era5(tmp_path, times, lat, lon, drop=drop)
    weights = _tiny_weights(tmp_path, TINY_AFNO)
    cfg = {"members": 3, "forecast_days": 1, "obs_days": [-1, 0], "ensf_steps": 4,
           "progress": False, "afno": TINY_AFNO, "best_track": "none",
           "max_displacement_km": 1500.0, "vorticity_threshold": 1e-6, "device": "cpu"}
    return era5, weights, cfg


def test_real_mode_code_path_with_a_tiny_fourcastnet(tmp_path):
    pytest.importorskip("tfda.models.fourcastnet")
    era5, weights, cfg = _era5_setup(tmp_path)
    cfg["best_track"] = "auto"  # Lee's, shipped with the package
    out = tmp_path / "run"
    rc = lee.main(["--era5", str(era5), "--weights", str(weights), "--out", str(out),
                   "--config", _toml(tmp_path / "c.toml", cfg)])
    assert rc == 0
    metrics = _check_run_dir(out, 3, 1)
    assert metrics["mode"] == "era5"
    # the truth is tracked in the ERA5 fields: Day 0 at the vortex put there
    assert metrics["truth_day0"][0] == pytest.approx(17.0 + 0.5 * 4, abs=1.0)
    # ... and compared with Lee's best track: Day 0 fix 17.0N 51.8W
    t0 = metrics["truth_day0"]
    assert metrics["truth_day0_vs_best_track_km"] == pytest.approx(
        float(great_circle_km(t0[0], t0[1], 17.0, 360 - 51.8)), rel=1e-6)
    import xarray as xr

    with xr.open_dataset(out / "tracks.nc") as ds:
        assert float(ds["best_lat"].values[0]) == 17.0
        assert ds["best_fix_hours"].values.tolist()[-1] == pytest.approx(8 * 24 + 20)


def test_bad_inputs_give_one_clear_message_and_no_complete_marker(tmp_path, capsys):
    era5, weights, cfg = _era5_setup(tmp_path, drop=(datetime(2023, 9, 9),))
    conf = _toml(tmp_path / "c.toml", cfg)
    out = tmp_path / "run"
    cases = [
        (["--era5", str(era5), "--weights", str(weights)], "2023-09-09"),  # missing time
        (["--era5", str(era5), "--weights", str(tmp_path / "nowhere")], "backbone.ckpt"),
        (["--era5", str(tmp_path / "absent.nc"), "--weights", str(weights)], "absent.nc"),
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
    ]
    for extra, needle in cases:
        rc = lee.main([*extra, "--config", conf, "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err, (extra, err)
        assert err.count("error:") == 1
        assert not (out / "COMPLETE").exists()
    # an observation day outside the data (Day -3 is not in the file)
    bad = _toml(tmp_path / "d.toml", {**cfg, "obs_days": [-3, 0]})
    rc = lee.main(["--era5", str(era5), "--weights", str(weights), "--config", bad,
                   "--out", str(out)])
    assert rc == 2 and "2023-09-05" in capsys.readouterr().err
    assert not out.exists()  # inputs are checked before anything is written


def test_failed_rerun_keeps_the_complete_run_and_stages_its_checkpoints(tmp_path, monkeypatch):
    from tfda.experiments import rundir

    out = tmp_path / "run"
    out.mkdir()
    (out / "COMPLETE").write_text("{}")
    (out / rundir.MARKER).write_text('{"command": "tfda lee", "files": []}')
    cfg = lee.LeeConfig.from_dict(TINY_ANALOGUE)

    def boom(*args, **kwargs):
        raise RuntimeError("killed mid-run")

    monkeypatch.setattr(lee.study, "forecast_tracks", boom)
    with pytest.raises(RuntimeError):
        lee.run(cfg, out)
    assert sorted(p.name for p in out.iterdir()) == [rundir.MARKER, "COMPLETE"]
    # the cycle checkpoints survive, staged, so a restart resumes after the last analysis
    assert (rundir.staging_dir(out) / "checkpoints").is_dir()


def test_config_validation():
    with pytest.raises(ValueError, match="obs_days"):
        lee.LeeConfig(obs_days=(-3, -1, 1))
    with pytest.raises(ValueError, match="memberz: unknown key"):
        lee.LeeConfig.from_dict({"memberz": 3})
    with pytest.raises(ValueError, match="mode"):
        lee.LeeConfig(mode="gpu")


def test_station_observations_are_the_gridded_ones_at_the_stations(tmp_path):
    """--stations N: the cycle assimilates N stations (every variable at each); the
    station values written to stations.csv are the bilinear interpolation of the gridded
    observations in observations.nc (checked with xarray's own interpolation), and the
    analysis fits them better than the forecast."""
    import pandas as pd
    import xarray as xr

    out = tmp_path / "run"
    conf = _toml(tmp_path / "c.toml", TINY_ANALOGUE)
    assert lee.main(["--config", conf, "--out", str(out), "--stations", "25"]) == 0
    metrics = _check_run_dir(out, 4, 1)
    table = pd.read_csv(out / "stations.csv", parse_dates=["time"])
    assert len(table) == 2 * 25 * 6 and set(table.columns) >= {"time", "lat", "lon",
                                                                "variable", "observation",
                                                                "error"}
    with xr.open_dataset(out / "observations.nc") as ds:
        name = [v for v in ds.data_vars if set(ds[v].dims) >= {"lat", "lon", "variable"}][0]
        grid = ds[name].load()
    day0 = table[table["time"] == table["time"].max()]
    ref = grid.isel(time=-1).interp(lat=xr.DataArray(day0["lat"].to_numpy(), dims="p"),
                                    lon=xr.DataArray(day0["lon"].to_numpy(), dims="p"))
    want = [float(ref.sel(variable=v).isel(p=i)) for i, v in enumerate(day0["variable"])]
    # float32 states: agreement to float32 round-off
    np.testing.assert_allclose(day0["observation"].to_numpy(), want, rtol=2e-6)
    last = metrics["cycle"][-1]
    assert last["obs_rmse_a"] < last["obs_rmse_f"]
    assert json.loads((out / "config.json").read_text())["stations"] == 25


def test_stations_from_a_file_and_bad_station_files(tmp_path, capsys):
    (tmp_path / "st.csv").write_text("lat,lon\n15.0,310.0\n20.0,300.0\n25.0,320.0\n")
    out = tmp_path / "run"
    conf = _toml(tmp_path / "c.toml", {**TINY_ANALOGUE, "stations_file": str(tmp_path / "st.csv")})
    assert lee.main(["--config", conf, "--out", str(out)]) == 0
    assert len(pd_read(out / "stations.csv")) == 2 * 3 * 6
    (tmp_path / "far.csv").write_text("lat,lon\n80.0,310.0\n")
    bad = _toml(tmp_path / "b.toml", {**TINY_ANALOGUE, "stations_file": str(tmp_path / "far.csv")})
    capsys.readouterr()
    assert lee.main(["--config", bad, "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stations_file" in err[0] and "outside" in err[0], err
    assert not (tmp_path / "bad" / "COMPLETE").exists()
    (tmp_path / "text.csv").write_text("lat,lon\nabc,310.0\n")
    bad = _toml(tmp_path / "t.toml", {**TINY_ANALOGUE, "stations_file": str(tmp_path / "text.csv")})
    assert lee.main(["--config", bad, "--out", str(tmp_path / "text")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stations_file" in err[0] and "column 'lat' must be numbers" in err[0]
    with pytest.raises(ValueError, match="stations are assimilated with a diagonal R"):
        lee.LeeConfig.from_dict({**TINY_ANALOGUE, "stations": 5, "filter_error": "full"})


def pd_read(path):
    import pandas as pd

    return pd.read_csv(path)


def test_real_mode_with_an_earth2studio_model(tmp_path):
    """--era5 with --model earth2studio:Persistence (the optional extra): any registered
    model runs the study; no --weights needed, and with persistence every member's track
    stays where its Day 0 storm is."""
    pytest.importorskip("earth2studio", reason="the tfda[earth2studio] extra is not installed")
    from tfda.models.fourcastnet import FOURCASTNET_VARIABLES

    era5, _, cfg = _era5_setup(tmp_path)
    cfg.pop("afno")
    cfg["model_options"] = {"model_options": {
        "variable": list(FOURCASTNET_VARIABLES),
        "domain_coords": {"lat": np.linspace(90, -90, 33).tolist(),
                          "lon": (np.arange(64) * 360 / 64).tolist()}}}
    out = tmp_path / "run"
    rc = lee.main(["--era5", str(era5), "--model", "earth2studio:Persistence", "--out", str(out),
                   "--config", _toml(tmp_path / "c.toml", cfg)])
    assert rc == 0
    _check_run_dir(out, 3, 1)
    import xarray as xr

    with xr.open_dataset(out / "tracks.nc") as ds:
        lat = ds["baseline_lat_6h"].values
    tracked = np.isfinite(lat[:, 0])
    np.testing.assert_array_equal(lat[tracked, -1], lat[tracked, 0])


def test_station_error_factor_counts_the_correlated_neighbours():
    """sqrt(mean_i sum_j rho_ij): 1 for stations far apart, sqrt(n) for n at one place,
    and exp(-d^2 / 2L^2) between two stations d apart."""
    from tfda.experiments.lee.stations import station_error_factor

    far = station_error_factor(300.0, np.array([0.0, 40.0]), np.array([0.0, 60.0]))
    assert far == pytest.approx(1.0, abs=1e-12)
    assert station_error_factor(300.0, np.full(4, 20.0), np.full(4, 300.0)) == pytest.approx(2.0)
    d = float(great_circle_km(10.0, 300.0, 10.0, 303.0))
    pair = station_error_factor(300.0, np.array([10.0, 10.0]), np.array([300.0, 303.0]))
    assert pair == pytest.approx(np.sqrt(1.0 + np.exp(-0.5 * (d / 300.0) ** 2)), rel=1e-12)
