"""ERA5 requests, resumable downloads (stand-in client) and loading of both netCDF layouts."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from tfda.observations import era5
from tfda.observations.era5 import (
    FOURCASTNET_CHANNELS,
    Era5AccessError,
    build_requests,
    check_fourcastnet_grid,
    download,
    load_era5,
    load_prepared,
    write_netcdf,
)

SURFACE_VARS = [
    "10m_u_component_of_wind", "10m_v_component_of_wind", "2m_temperature",
    "surface_pressure", "mean_sea_level_pressure", "total_column_water_vapour",
]  # fmt: skip
UPPER_VARS = ["temperature", "u_component_of_wind", "v_component_of_wind", "geopotential",
              "relative_humidity"]


def test_channel_order_is_design_contract():
    assert FOURCASTNET_CHANNELS == tuple(
        "u10m v10m t2m sp msl t850 u1000 v1000 z1000 u850 v850 z850 u500 v500 z500 t500 z50 "
        "r500 r850 tcwv".split()
    )


def test_requests_for_two_times_same_day():
    reqs = build_requests([datetime(2023, 9, 8, 6), datetime(2023, 9, 8, 0)])
    common = {"year": ["2023"], "month": ["09"], "day": ["08"], "time": ["00:00", "06:00"],
              "data_format": "netcdf", "download_format": "unarchived"}
    assert [r.dataset for r in reqs] == [era5.SINGLE_LEVELS, era5.PRESSURE_LEVELS]
    assert reqs[0].request == {"product_type": ["reanalysis"], "variable": SURFACE_VARS, **common}
    assert reqs[1].request == {"product_type": ["reanalysis"], "variable": UPPER_VARS,
                               "pressure_level": ["50", "500", "850", "1000"], **common}
    assert reqs[0].filename == "era5_single_20230908_00-06.nc"
    assert reqs[1].filename == "era5_pressure_20230908_00-06.nc"


def test_requests_for_two_times_on_two_days():
    reqs = build_requests([datetime(2023, 9, 5, 18), datetime(2023, 9, 6, 0)])
    assert [(r.dataset, r.request["day"], r.request["time"]) for r in reqs] == [
        (era5.SINGLE_LEVELS, ["05"], ["18:00"]), (era5.PRESSURE_LEVELS, ["05"], ["18:00"]),
        (era5.SINGLE_LEVELS, ["06"], ["00:00"]), (era5.PRESSURE_LEVELS, ["06"], ["00:00"]),
    ]
    # a subset of channels asks only for what it needs
    only = build_requests([datetime(2023, 9, 5, 18)], channels=["msl", "z50"])
    assert only[0].request["variable"] == ["mean_sea_level_pressure"]
    assert only[1].request["variable"] == ["geopotential"]
    assert only[1].request["pressure_level"] == ["50"]
    with pytest.raises(ValueError, match="whole hours"):
        build_requests([datetime(2023, 9, 5, 18, 30)])
    with pytest.raises(ValueError, match="q700"):
        build_requests([datetime(2023, 9, 5)], channels=["q700"])


# ------------------------------------------------------------------ small netCDF files

LAT_ASC = np.array([-10.0, 0.0, 10.0])
LON = np.array([0.0, 90.0, 180.0, 270.0])


def _field(short: str, level: float | None, t: int) -> np.ndarray:
    """A distinct, exactly representable field per (variable, level, time), on LAT_ASC."""
    code = sum(ord(c) for c in short) + (level or 0) / 1000.0
    lat = LAT_ASC[:, None]
    lon = LON[None, :]
    return (code * 100 + t * 10 + lat + lon / 1000.0).astype(np.float32)


def _times(request: era5.Era5Request | None = None) -> list[np.datetime64]:
    if request is not None:
        return [np.datetime64(t, "ns") for t in request.times]
    return [np.datetime64("2023-09-08T00", "ns"), np.datetime64("2023-09-08T06", "ns")]


def write_layout(path: Path, kind: str, *, new: bool, times=None, shorts=None,
                 levels=(1000.0, 50.0, 850.0, 500.0), lat=LAT_ASC, lon=LON) -> None:
    """ERA5-like netCDF: legacy (time, level) or CDS-2024 (valid_time, pressure_level),
    latitude ascending and levels scrambled so the loader must sort and select by value."""
    times = _times() if times is None else times
    tname, lname = ("valid_time", "pressure_level") if new else ("time", "level")
    data = {}
    if kind == "single":
        for short in shorts or ["u10", "v10", "t2m", "sp", "msl", "tcwv"]:
            arr = np.stack([_field(short, None, i) for i in range(len(times))])
            data[short] = ((tname, "latitude", "longitude"), arr[:, : lat.size, : lon.size])
    else:
        for short in shorts or ["u", "v", "z", "t", "r"]:
            arr = np.stack([np.stack([_field(short, lev, i) for lev in levels])
                            for i in range(len(times))])
            data[short] = ((tname, lname, "latitude", "longitude"),
                           arr[:, :, : lat.size, : lon.size])
    coords = {tname: np.array(times, dtype="datetime64[ns]"), "latitude": lat, "longitude": lon}
    if kind != "single":
        coords[lname] = np.array(levels)
    if new:
        coords["number"] = 0
        coords["expver"] = (tname, np.array(["0001"] * len(times), dtype=object))
    xr.Dataset(data, coords=coords).to_netcdf(path, engine="netcdf4")


def expected_tensor(n_times: int = 2) -> torch.Tensor:
    chans = []
    for name in FOURCASTNET_CHANNELS:
        s = era5.channel_spec(name)
        lev = None if s.level is None else float(s.level)
        chans.append(np.stack([_field(s.short_name, lev, i)[::-1] for i in range(n_times)]))
    return torch.from_numpy(np.stack(chans, axis=1).copy())


@pytest.mark.parametrize("new", [False, True], ids=["legacy", "cds2024"])
def test_load_both_layouts_exactly(tmp_path, new):
    write_layout(tmp_path / "a_single.nc", "single", new=new)
    write_layout(tmp_path / "b_pressure.nc", "pressure", new=new)
    x, coords = load_era5(tmp_path)
    assert x.shape == (2, 20, 3, 4) and x.dtype == torch.float32
    assert torch.equal(x, expected_tensor())
    np.testing.assert_array_equal(coords["lat"], [10.0, 0.0, -10.0])
    np.testing.assert_array_equal(coords["lon"], LON)
    assert coords["channel"] == FOURCASTNET_CHANNELS
    np.testing.assert_array_equal(coords["time"], np.array(_times(), dtype="datetime64[ns]"))
    one, c1 = load_era5(tmp_path, times=[datetime(2023, 9, 8, 6)])
    assert torch.equal(one[0], x[1]) and c1["time"].size == 1


def test_longitude_minus180_is_wrapped_and_sorted(tmp_path):
    lon = np.array([-90.0, 0.0, 90.0, 180.0])  # 270 appears as -90
    write_layout(tmp_path / "s.nc", "single", new=True, lon=lon, shorts=["msl"])
    x, coords = load_era5(tmp_path / "s.nc", channels=["msl"])
    np.testing.assert_array_equal(coords["lon"], [0.0, 90.0, 180.0, 270.0])
    raw = np.stack([_field("msl", None, i) for i in range(2)])[:, ::-1]  # lat descending
    # column of lon=-90 (index 0 in the file) must land at 270 (index 3)
    assert torch.equal(x[:, 0, :, 3], torch.from_numpy(raw[:, :, 0].copy()))
    assert torch.equal(x[:, 0, :, 0], torch.from_numpy(raw[:, :, 1].copy()))


def test_missing_variable_and_level_are_named(tmp_path):
    write_layout(tmp_path / "s.nc", "single", new=True, shorts=["u10", "v10", "t2m", "sp", "msl"])
    write_layout(tmp_path / "p.nc", "pressure", new=False, levels=(1000.0, 850.0, 500.0))
    with pytest.raises(ValueError) as info:
        load_era5(tmp_path)
    msg = str(info.value)
    assert "variable 'tcwv'" in msg and "level 50 hPa of 'z' (for z50)" in msg
    assert "r500" not in msg


def test_grid_mismatch_and_missing_files(tmp_path):
    write_layout(tmp_path / "s.nc", "single", new=True)
    write_layout(tmp_path / "p.nc", "pressure", new=True, lat=np.array([-5.0, 5.0]))
    with pytest.raises(ValueError, match="grid"):
        load_era5(tmp_path)
    with pytest.raises(ValueError, match="files not found"):
        load_era5([tmp_path / "nope.nc"])
    with pytest.raises(ValueError, match="times"):
        load_era5(tmp_path / "s.nc", times=[datetime(2023, 9, 9)], channels=["msl"])


def test_check_fourcastnet_grid():
    lat = np.linspace(90, -90, 721)
    lon = np.arange(1440) * 0.25
    check_fourcastnet_grid(lat, lon)
    with pytest.raises(ValueError, match=r"0.25-degree.*lat 181 points 90..-90, 1 degrees"):
        check_fourcastnet_grid(np.linspace(90, -90, 181), np.arange(360.0))
    with pytest.raises(ValueError, match="lat 721 points -90..90"):
        check_fourcastnet_grid(lat[::-1], lon)


def test_write_and_read_prepared_roundtrip(tmp_path):
    write_layout(tmp_path / "s.nc", "single", new=False)
    write_layout(tmp_path / "p.nc", "pressure", new=True)
    x, coords = load_era5(tmp_path)
    out = write_netcdf(tmp_path / "prep" / "era5.nc", x, coords)
    assert not list(out.parent.glob("*.part"))
    with xr.open_dataset(out) as ds:
        assert ds.attrs["Conventions"] == "CF-1.8"
        assert ds["lat"].attrs["units"] == "degrees_north"
        assert list(ds["units"].values[[4, 16, 17]]) == ["Pa", "m2 s-2", "%"]
    y, c2 = load_prepared(out)
    assert torch.equal(x, y) and c2["channel"] == coords["channel"]
    np.testing.assert_array_equal(c2["time"], coords["time"])


# ------------------------------------------------------------------ downloads

class StandIn:
    """A cdsapi.Client stand-in writing small ERA5-like files; can fail on chosen calls."""

    def __init__(self, fail_on: dict[int, BaseException] | None = None, partial: bool = True):
        self.calls: list[tuple[str, dict, str]] = []
        self.fail_on = fail_on or {}
        self.partial = partial

    def retrieve(self, name, request, target=None):
        self.calls.append((name, request, target))
        n = len(self.calls)
        if n in self.fail_on:
            if self.partial:
                Path(target).write_bytes(b"\x89HDF\r\n\x1a\n truncated")  # a half-written file
            raise self.fail_on[n]
        times = [np.datetime64(f"{request['year'][0]}-{request['month'][0]}-"
                               f"{request['day'][0]}T{h}", "ns") for h in request["time"]]
        kind = "single" if name == era5.SINGLE_LEVELS else "pressure"
        levels = tuple(float(v) for v in request.get("pressure_level", []))
        write_layout(Path(target), kind, new=True, times=times,
                     **({"levels": levels} if levels else {}))


TIMES = [datetime(2023, 9, 7, 18), datetime(2023, 9, 8, 0)]


def test_download_writes_all_files_and_skips_complete(tmp_path):
    client = StandIn()
    paths = download(TIMES, tmp_path, client=client, progress=False)
    assert [p.name for p in paths] == [r.filename for r in build_requests(TIMES)]
    assert all(p.is_file() for p in paths) and len(client.calls) == 4
    assert all(c[2].endswith(".part") for c in client.calls)
    x, _ = load_era5(paths)
    assert x.shape == (2, 20, 3, 4)
    again = StandIn()
    download(TIMES, tmp_path, client=again, progress=False)
    assert again.calls == []


def test_interrupted_download_leaves_no_partial_file_and_resumes(tmp_path):
    client = StandIn(fail_on={3: KeyboardInterrupt()})
    with pytest.raises(KeyboardInterrupt):
        download(TIMES, tmp_path, client=client, progress=False, sleep=lambda s: None)
    names = build_requests(TIMES)
    assert (tmp_path / names[0].filename).is_file() and (tmp_path / names[1].filename).is_file()
    assert not (tmp_path / names[2].filename).exists()
    assert not list(tmp_path.glob("*.part"))
    # a final-named file truncated by some other tool is detected as incomplete
    (tmp_path / names[3].filename).write_bytes(b"CDF\x01 truncated")
    resume = StandIn()
    download(TIMES, tmp_path, client=resume, progress=False)
    assert [c[2] for c in resume.calls] == [str(tmp_path / (n.filename + ".part"))
                                           for n in names[2:]]
    x, _ = load_era5(tmp_path)
    assert x.shape == (2, 20, 3, 4)


def test_retries_with_backoff_then_gives_up(tmp_path):
    waits: list[float] = []
    client = StandIn(fail_on={1: ConnectionError("reset"), 2: TimeoutError("slow")})
    download(TIMES[:1], tmp_path, client=client, backoff_s=2.0, sleep=waits.append,
             progress=False)
    assert waits == [2.0, 4.0] and len(client.calls) == 4
    failing = StandIn(fail_on={i: ConnectionError("down") for i in range(1, 10)})
    with pytest.raises(RuntimeError, match="failed after 3 attempts: down"):
        download([datetime(2023, 9, 1)], tmp_path, client=failing, retries=2, backoff_s=1.0,
                 sleep=lambda s: None, progress=False)
    assert not list(tmp_path.glob("*.part"))


def test_licence_and_credentials_errors_are_clear(tmp_path, monkeypatch):
    client = StandIn(fail_on={1: Exception("403 Forbidden: required licences not accepted")})
    with pytest.raises(Era5AccessError, match="licence of reanalysis-era5-single-levels"):
        download(TIMES, tmp_path, client=client, sleep=lambda s: None, progress=False)
    assert len(client.calls) == 1  # no retries for a licence problem
    monkeypatch.delenv("CDSAPI_KEY", raising=False)
    monkeypatch.setenv("CDSAPI_RC", str(tmp_path / "no_such_cdsapirc"))
    with pytest.raises(Era5AccessError, match="CDSAPI_KEY"):
        download(TIMES, tmp_path / "x", progress=False)


# ------------------------------------------------------------------ the command line

def test_cli_dry_run_lee_window(capsys):
    import json

    from tfda.experiments import era5_cli

    assert era5_cli.main(["download", "--lee", "--out", "unused", "--dry-run"]) == 0
    reqs = json.loads(capsys.readouterr().out)
    assert len(reqs) == 24  # 12 days x (single, pressure)
    assert reqs[0]["target"] == "era5_single_20230905_00-06-12-18.nc"
    assert reqs[-1]["request"]["day"] == ["16"] and reqs[-1]["request"]["time"] == ["00:00"]
    n_times = sum(len(r["request"]["time"]) for r in reqs) // 2
    assert n_times == 45  # 2023-09-05 00 .. 2023-09-16 00 UTC, 6-hourly, inclusive


def test_cli_prepare_and_errors(tmp_path, capsys, monkeypatch):
    from tfda.experiments import era5_cli

    write_layout(tmp_path / "s.nc", "single", new=True)
    write_layout(tmp_path / "p.nc", "pressure", new=False)
    out = tmp_path / "era5.nc"
    assert era5_cli.main(["prepare", "--in", str(tmp_path), "--out", str(out)]) == 2
    assert "grid is not FourCastNet's" in capsys.readouterr().err and not out.exists()
    assert era5_cli.main(["prepare", "--in", str(tmp_path / "s.nc"), str(tmp_path / "p.nc"),
                          "--out", str(out), "--allow-any-grid", "--start", "2023-09-08T06",
                          "--end", "2023-09-08T06"]) == 0
    y, coords = load_prepared(out)
    assert torch.equal(y, expected_tensor()[1:])
    monkeypatch.delenv("CDSAPI_KEY", raising=False)
    monkeypatch.setenv("CDSAPI_RC", str(tmp_path / "none"))
    assert era5_cli.main(["download", "--start", "2023-09-08", "--end", "2023-09-08",
                          "--out", str(tmp_path / "dl"), "--no-progress"]) == 2
    assert "no CDS credentials" in capsys.readouterr().err
    assert era5_cli.main(["download", "--start", "2023-09-08", "--out", "x"]) == 2


def test_cli_prepare_refuses_an_all_nan_channel(tmp_path, capsys):
    """A channel that is NaN everywhere at some time (a wrong level or variable in a
    download) is refused, naming the channel and the time; nothing is written."""
    from tfda.experiments import era5_cli

    write_layout(tmp_path / "s.nc", "single", new=True)
    write_layout(tmp_path / "p.nc", "pressure", new=False)
    with xr.open_dataset(tmp_path / "s.nc") as ds:
        ds = ds.load()
    ds["msl"][1] = np.nan
    ds.to_netcdf(tmp_path / "s_nan.nc", engine="netcdf4")
    out = tmp_path / "era5.nc"
    argv = ["prepare", "--in", str(tmp_path / "s_nan.nc"), str(tmp_path / "p.nc"),
            "--out", str(out), "--allow-any-grid"]
    assert era5_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "channel msl is all NaN at 2023-09-08T06:00" in err and err.count("\n") == 1
    assert not out.exists()
