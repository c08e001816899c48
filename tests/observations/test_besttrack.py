"""Best-track readers: Lee's real ATCF b-deck (shipped with the package) and a HURDAT2 sample."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

from tfda.observations.besttrack import LEE2023_DIR, lee2023, merge, read_atcf, read_hurdat2

LEE_BDECK = LEE2023_DIR / "bal132023.dat"


def test_lee_bdeck_day0_and_times():
    track = read_atcf(LEE_BDECK)
    assert track.storm_id == "AL132023" and track.name == "LEE"
    day0 = track.at(datetime(2023, 9, 8, 0))
    assert day0 == {"lat": 17.0, "lon": -51.8, "vmax": 135.0, "mslp": 933.0, "status": "HU"}
    assert len(track) == 26
    expected = np.array([datetime(2023, 9, 5, 18) + timedelta(hours=6 * k) for k in range(26)],
                        dtype="datetime64[m]")
    np.testing.assert_array_equal(track.time, expected)
    assert len(track.six_hourly()) == 26
    i = int(np.flatnonzero(track.time == np.datetime64("2023-09-08T00:00"))[0])
    assert track.lon360[i] == pytest.approx(308.2)
    # first and last rows of the file
    assert (track.lat[0], track.lon[0], track.vmax[0], track.mslp[0]) == (12.9, -41.1, 35, 1006)
    assert (track.lat[-1], track.lon[-1], track.status[-1]) == (23.8, -64.5, "HU")
    assert track.status[0] == "TS"
    # peak intensity 145 kt / 926 hPa at 2023-09-08 06 UTC
    assert track.vmax.max() == 145 and track.mslp.min() == 926
    assert track.time[np.argmax(track.vmax)] == np.datetime64("2023-09-08T06:00")
    sub = track.between(datetime(2023, 9, 7), datetime(2023, 9, 8))
    assert len(sub) == 5


def test_lee2023_merges_the_later_fixes():
    track = lee2023()
    assert len(track) == 28 and track.name == "LEE" and track.storm_id == "AL132023"
    assert track.at(datetime(2023, 9, 8))["lat"] == 17.0
    assert track.at(datetime(2023, 9, 14)) == {"lat": 27.6, "lon": -67.7, "vmax": 90.0,
                                                "mslp": 951.0, "status": "HU"}
    landfall = track.at(datetime(2023, 9, 16, 20))
    assert (landfall["lat"], landfall["lon"], landfall["status"]) == (44.3, -66.3, "EX")
    assert np.isnan(landfall["vmax"])
    assert np.all(np.diff(track.time) > np.timedelta64(0, "m"))
    assert len(track.six_hourly()) == 27  # the 20 UTC landfall record is not synoptic
    # merging a track with itself changes nothing; a disagreeing repeat is an error
    again = merge(track, track)
    np.testing.assert_array_equal(again.lat, track.lat)
    moved = merge(read_atcf(LEE_BDECK))
    shifted = type(moved)(moved.time, moved.lat + 1.0, moved.lon, moved.vmax, moved.mslp,
                          moved.status)
    with pytest.raises(ValueError, match="2023-09-05T18:00 disagree"):
        merge(moved, shifted)


def test_malformed_bdeck_line_is_reported_with_its_number(tmp_path):
    lines = LEE_BDECK.read_text().splitlines()
    lines[4] = lines[4].replace(" 139N", " 1x9N")
    bad = tmp_path / "bad.dat"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"bad\.dat:5: bad latitude '1x9N'"):
        read_atcf(bad)
    lines = LEE_BDECK.read_text().splitlines()
    lines[3] = lines[3].replace(" 55,  997", " 60,  997")  # a wind-radii repeat that disagrees
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"bad\.dat:4: .*disagrees with line 3"):
        read_atcf(bad)


def test_atcf_small_sample_and_errors(tmp_path):
    f = tmp_path / "bsh012024.dat"
    f.write_text(
        "SH, 01, 2024010112,   , BEST,   0, 155S, 1795E,  40,  995, TS,  34, NEQ,  60,\n"
        "\n"
        "SH, 01, 2024010106,   , BEST,   0, 150S, 1785E,  30,    0, TD,   0,    ,   0,\n"
        "SH, 01, 2024010118,   , BEST,   0, 160S, 1805E,  45,  990, TS,  34, NEQ,  60,\n"
    )
    t = read_atcf(f)
    np.testing.assert_array_equal(t.time, np.array(["2024-01-01T06:00", "2024-01-01T12:00",
                                                    "2024-01-01T18:00"], dtype="datetime64[m]"))
    np.testing.assert_allclose(t.lat, [-15.0, -15.5, -16.0])
    np.testing.assert_allclose(t.lon, [178.5, 179.5, -179.5])  # 180.5E wraps to 179.5W
    np.testing.assert_allclose(t.lon360, [178.5, 179.5, 180.5])
    assert np.isnan(t.mslp[0])  # ATCF writes 0 for an unknown pressure
    f.write_text("SH, 01, 20240101,   , BEST,   0, 155S, 1795E,  40,  995, TS,\n")
    with pytest.raises(ValueError, match=r":1: bad date/time '20240101'"):
        read_atcf(f)
    f.write_text("SH, 01, 2024010112, BEST\n")
    with pytest.raises(ValueError, match=r":1: ATCF line has 4 fields"):
        read_atcf(f)
    with pytest.raises(ValueError, match="not found"):
        read_atcf(tmp_path / "absent.dat")


HURDAT2 = """\
AL122023,               KATIA,      2,
20230901, 1800,  , TS, 22.1N,  31.5W,  35, 1003,
20230902, 0000,  , TS, 22.8N,  32.1W,  40, 1000,
AL132023,                 LEE,      5,
20230905, 1800,  , TS, 12.9N,  41.1W,  35, 1006,   60,    0,    0,   60,
20230908, 0000,  , HU, 17.0N,  51.8W, 135,  933,  120,  110,   50,   80,
20230908, 0600,  , HU, 17.5N,  53.0W, 145,  926,  120,  110,   50,   80,
20230916, 2000, L, EX, 44.3N,  66.0W,  60,  965,  230,  270,  180,  110,
20230917, 0000,  , EX, 45.6N,  65.6W, -99, -999,
"""


def test_hurdat2_sample(tmp_path):
    f = tmp_path / "hurdat2.txt"
    f.write_text(HURDAT2)
    lee = read_hurdat2(f, storm_id="al132023")
    assert lee.storm_id == "AL132023" and lee.name == "LEE" and len(lee) == 5
    assert lee.at(datetime(2023, 9, 8)) == {"lat": 17.0, "lon": -51.8, "vmax": 135.0,
                                           "mslp": 933.0, "status": "HU"}
    assert lee.at(datetime(2023, 9, 16, 20))["status"] == "EX"
    assert np.isnan(lee.vmax[-1]) and np.isnan(lee.mslp[-1])
    six = lee.six_hourly()
    assert len(six) == 4 and np.datetime64("2023-09-16T20:00") not in six.time
    katia = read_hurdat2(f, storm_id="AL122023")
    assert katia.name == "KATIA" and len(katia) == 2
    with pytest.raises(ValueError, match="storm_id: .*holds 2 storms"):
        read_hurdat2(f)
    with pytest.raises(ValueError, match="AL992023"):
        read_hurdat2(f, storm_id="AL992023")
    with pytest.raises(KeyError, match="2023-09-09"):
        lee.at(datetime(2023, 9, 9))


def test_hurdat2_malformed_lines(tmp_path):
    f = tmp_path / "h.txt"
    f.write_text(HURDAT2.replace("17.0N,  51.8W, 135", "17.0N,  51.8W, 1x5"))
    with pytest.raises(ValueError, match=r"h\.txt:6: bad vmax '1x5'"):
        read_hurdat2(f, storm_id="AL132023")
    f.write_text(HURDAT2.replace("20230908, 0600", "20230931, 0600"))
    with pytest.raises(ValueError, match=r"h\.txt:7: bad date/time"):
        read_hurdat2(f, storm_id="AL132023")
    f.write_text(HURDAT2.replace("LEE,      5", "LEE,      6"))
    with pytest.raises(ValueError, match="1 data line"):
        read_hurdat2(f, storm_id="AL132023")
    f.write_text("20230908, 0000,  , HU, 17.0N,  51.8W, 135,  933,\n")
    with pytest.raises(ValueError, match=r"h\.txt:1: expected a HURDAT2 header"):
        read_hurdat2(f)
