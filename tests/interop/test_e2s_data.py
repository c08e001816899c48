"""ERA5 through an earth2studio DataSource: a stand-in source with known fields goes to
the prepared netCDF the Lee study reads (grid flipped to 90 -> -90 and 0..360, relative
humidity derived from t and q), and ``tfda era5 download --source arco`` writes it."""

import json
from datetime import datetime

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("earth2studio", reason="the optional extra: pip install 'tfda[earth2studio]'")

from earth2studio.data.base import DataSource  # noqa: E402

from tfda.experiments import era5_cli  # noqa: E402
from tfda.interop.e2s_data import download_arco, source_variables  # noqa: E402
from tfda.observations import era5  # noqa: E402

TIMES = [datetime(2023, 9, 5, 0), datetime(2023, 9, 5, 6)]
EPS = 0.621981  # R_dry / R_vapour
RH = 60.0  # percent, the humidity the stand-in's q encodes


def _es_water(t: np.ndarray) -> np.ndarray:
    """Saturation vapour pressure over water (Pa), Tetens with the IFS constants."""
    return 611.21 * np.exp(17.502 * (t - 273.16) / (t - 32.19))


class StandIn:
    """A DataSource with analytic fields on an ascending-lat, -180..150 lon grid (ARCO's
    is 90 -> -90, 0..359.75) that records what it was asked for."""

    LAT = np.linspace(-90.0, 90.0, 7)
    LON = np.arange(-180.0, 180.0, 30.0)

    def __init__(self, *args, **kwargs):
        self.requests = []
        self.empty = kwargs.get("empty")

    @staticmethod
    def value(name: str, hours: float, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        la, lo = np.meshgrid(lat, lon, indexing="ij")
        t = 285.0 + 10.0 * np.cos(np.deg2rad(la)) + 0.1 * hours  # warm: water saturation
        if name.startswith("t") and name[1:].isdigit():
            return t
        if name.startswith("q") and name[1:].isdigit():
            e = RH / 100.0 * _es_water(t)
            p = 100.0 * float(name[1:])
            return EPS * e / (p - (1.0 - EPS) * e)  # inverts e = p q / (eps + (1 - eps) q)
        code = sum(map(ord, name))
        return code + 0.01 * la + 0.001 * ((lo + 360.0) % 360.0) + hours

    def __call__(self, time, variable):
        self.requests.append(list(variable))
        hours = [(t - TIMES[0]).total_seconds() / 3600.0 for t in time]
        data = np.stack([np.stack([self.value(v, h, self.LAT, self.LON) for v in variable])
                         for h in hours])
        if self.empty:
            data[:, list(variable).index(self.empty)] = np.nan
        return xr.DataArray(data, dims=["time", "variable", "lat", "lon"],
                            coords={"time": np.array(time, dtype="datetime64[ns]"),
                                    "variable": list(variable), "lat": self.LAT,
                                    "lon": self.LON})

    async def fetch(self, time, variable):
        return self(time, variable)


def test_prepared_file_from_a_data_source(tmp_path):
    source = StandIn()
    assert isinstance(source, DataSource)
    channels = ["t2m", "z500", "r500", "tcwv"]
    path, _, _ = download_arco(TIMES, tmp_path / "lee.nc", channels=channels, source=source,
                               check_grid=False)
    assert source.requests == [["t2m", "z500", "t500", "q500", "tcwv"]]
    tensor, coords = era5.load_prepared(path)
    assert tuple(tensor.shape) == (2, 4, 7, 12) and coords["channel"] == tuple(channels)
    np.testing.assert_array_equal(coords["lat"], np.linspace(90.0, -90.0, 7))
    np.testing.assert_array_equal(coords["lon"], np.arange(0.0, 360.0, 30.0))
    np.testing.assert_array_equal(coords["time"], np.array(TIMES, dtype="datetime64[ns]"))
    for k, name in enumerate(channels):
        for j, hours in enumerate((0.0, 6.0)):
            want = (np.full((7, 12), RH) if name == "r500"
                    else StandIn.value(name, hours, coords["lat"], coords["lon"]))
            np.testing.assert_allclose(tensor[j, k].numpy(), want, rtol=2e-6,
                                       atol=2e-4 if name == "r500" else 0, err_msg=name)


def test_source_variables_and_bad_requests(tmp_path):
    assert source_variables(["r850", "t850", "q850", "r500"]) == ["t850", "q850", "t500", "q500"]
    with pytest.raises(ValueError, match="grid is not FourCastNet's"):
        download_arco(TIMES, tmp_path / "x.nc", channels=["t2m"], source=StandIn())
    with pytest.raises(ValueError, match="channel 'w700' is not an ERA5 channel"):
        download_arco(TIMES, tmp_path / "x.nc", channels=["w700"], source=StandIn())
    assert not (tmp_path / "x.nc").exists()


def test_cli_download_source_arco(tmp_path, monkeypatch, capsys):
    import earth2studio.data

    monkeypatch.setattr(earth2studio.data, "ARCO", StandIn)
    out = tmp_path / "era5_lee.nc"
    argv = ["download", "--start", "2023-09-05", "--end", "2023-09-05T06", "--source", "arco",
            "--channels", "u10m,r850", "--allow-any-grid", "--out"]
    assert era5_cli.main([*argv, str(out), "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["variables"] == ["u10m", "t850", "q850"] and len(plan["times"]) == 2
    assert not out.exists()
    assert era5_cli.main([*argv, str(out)]) == 0
    tensor, coords = era5.load_prepared(out)
    assert coords["channel"] == ("u10m", "r850") and tensor.shape[0] == 2
    capsys.readouterr()
    assert era5_cli.main([*argv, str(tmp_path)]) == 2  # a directory is not the file
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a directory" in err[0]
    # a channel the source left empty is refused before anything is written
    monkeypatch.setattr(earth2studio.data, "ARCO", lambda **kw: StandIn(empty="u10m"))
    assert era5_cli.main([*argv, str(tmp_path / "bad.nc")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "channel u10m is all NaN" in err[0]
    assert not (tmp_path / "bad.nc").exists()
