"""The root package's plumbing: great-circle distances (numpy and torch agree with
closed forms) and the atomic write with a fixed temporary name and the timer."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from tfda._io import atomic_path, time_repeats, timed, write_json
from tfda.geo import EARTH_RADIUS_KM, EARTH_RADIUS_M, KM_PER_DEG, central_angle, great_circle_km


def test_great_circle_closed_forms_in_numpy_and_torch():
    assert EARTH_RADIUS_M == EARTH_RADIUS_KM * 1000.0
    # one degree of latitude, a quarter meridian, antipodes, and along the equator
    lat1 = np.array([10.0, 0.0, 30.0, 0.0])
    lon1 = np.array([20.0, 50.0, 40.0, 359.5])
    lat2 = np.array([11.0, 90.0, -30.0, 0.0])
    lon2 = np.array([20.0, 50.0, 220.0, 0.5])
    expect = np.array([KM_PER_DEG, math.pi / 2 * EARTH_RADIUS_KM, math.pi * EARTH_RADIUS_KM,
                       KM_PER_DEG])
    np.testing.assert_allclose(great_circle_km(lat1, lon1, lat2, lon2), expect, rtol=1e-9)
    as_t = [torch.tensor(a, dtype=torch.float64) for a in (lat1, lon1, lat2, lon2)]
    out = great_circle_km(*as_t)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), expect, rtol=1e-9)
    # broadcasting, and a tensor mixed with plain numbers
    grid = great_circle_km(as_t[0][:, None], as_t[1][:, None], 0.0, torch.tensor([0.0, 90.0]))
    assert grid.shape == (4, 2)
    assert float(central_angle(torch.tensor(0.0), 0.0, 0.0, 90.0)) == pytest.approx(math.pi / 2)


def test_atomic_path_with_a_fixed_part_name_keeps_the_old_file_on_failure(tmp_path):
    final = tmp_path / "sub" / "out.nc"
    with atomic_path(final, part="out.nc.part") as part:
        assert part == final.with_name("out.nc.part") and not part.exists()
        part.write_text("one")
    assert final.read_text() == "one" and not part.exists()
    with pytest.raises(RuntimeError), atomic_path(final, part="out.nc.part") as part:
        part.write_text("half")
        raise RuntimeError("killed")
    assert final.read_text() == "one" and sorted(p.name for p in final.parent.iterdir()) == [
        "out.nc"]
    write_json(tmp_path / "x.json", {"a": 1, "b": np.float64(2.5)})
    assert (tmp_path / "x.json").read_text() == '{\n "a": 1,\n "b": 2.5\n}\n'


def test_timed_and_time_repeats():
    out, seconds = timed(lambda: time.sleep(0.02) or 7)
    assert out == 7 and 0.015 < seconds < 5.0
    calls = []
    last, times = time_repeats(lambda: calls.append(1) or len(calls), 3, device="cpu")
    assert last == 3 and len(times) == 3 and all(t >= 0 for t in times)
    with pytest.raises(ValueError, match="repeats"):
        time_repeats(lambda: None, 0)
