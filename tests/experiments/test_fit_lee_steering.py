"""The Lee analogue follows Lee: its truth, from the configured start, against the best
track shipped with the package; and the stored steering fit is what its command makes."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

from tfda.experiments import fit_lee_steering as fls
from tfda.experiments import lee
from tfda.geo import great_circle_km
from tfda.models.barotropic import BarotropicConfig
from tfda.observations.besttrack import lee2023

LIMIT_KM = 250.0


def test_reference_track_and_start_follow_the_best_track():
    bt = lee2023()
    times = [fls.DAY0 + timedelta(hours=6 * k) for k in range(-12, 37)]
    lat, lon = fls.reference_track(times)
    for t, a, o in zip(times, lat, lon, strict=True):
        if np.any(bt.time == np.datetime64(t, "m")):
            row = bt.at(t)
            assert (a, o) == pytest.approx((row["lat"], row["lon"] % 360), abs=1e-9)
    # Day 5 lies on the straight line between the Day 4 and Day 6 fixes
    assert lat[12 + 20] == pytest.approx(0.5 * (23.8 + 27.6))
    # Day -3: 18 h before the first fix, back along its first 24 h of motion
    assert (lat[0], lon[0]) == pytest.approx((12.9 - 0.75 * 1.8, 360 - 41.1 + 0.75 * 5.0))
    assert fls.fix_days() == [-2, -1, 0, 1, 2, 3, 4, 6]


def test_analogue_truth_stays_within_250_km_of_lee_on_every_day_with_a_fix():
    cfg = lee.LeeConfig(progress=False)
    assert cfg.vortex_day == -3
    model_cfg = BarotropicConfig(**cfg.analogue_model)
    # the study's own truth, Day 0 .. 8, against the packaged best track
    from tfda.experiments.lee.inputs import analogue_truth
    from tfda.experiments.lee.sources import load_model

    model = load_model(cfg)
    _, (t_lat, t_lon), _, best = analogue_truth(cfg, model, 4)
    days = [d for d in range(cfg.forecast_days + 1) if np.isfinite(best[0][d])]
    assert days == [0, 1, 2, 3, 4, 6]
    err = {d: float(great_circle_km(t_lat[4 * d], t_lon[4 * d], best[0][d], best[1][d]))
           for d in days}
    assert max(err.values()) <= LIMIT_KM, err
    # the same start run on to Day 9: Days -2, -1 and the landfall too
    lat, lon, _ = fls.run_track(model_cfg, (cfg.vortex_lat, cfg.vortex_lon), 48,
                                vmax=cfg.vortex_vmax, rmax_km=cfg.vortex_rmax_km)
    np.testing.assert_allclose(lat[12:12 + 33], t_lat, atol=1e-4)
    full = fls.daily_errors(lat, lon)
    assert set(full) == {f"Day {d}" for d in fls.fix_days()} | {"landfall"}
    assert max(full.values()) <= LIMIT_KM, full
    # Day 0 is where Lee was on 2023-09-08 00 UTC
    assert great_circle_km(t_lat[0], t_lon[0], 17.0, 360 - 51.8) <= LIMIT_KM
    assert datetime.fromisoformat(cfg.day0) == fls.DAY0


def test_without_the_fitted_steering_the_storm_misses_lee():
    """The test above can fail: the same vortex without the fitted field goes elsewhere."""
    cfg = lee.LeeConfig(progress=False)
    box = {k: v for k, v in cfg.analogue_model.items() if k != "steering_knots"}
    lat, lon, _ = fls.run_track(BarotropicConfig(**box), (cfg.vortex_lat, cfg.vortex_lon), 48)
    errors = fls.daily_errors(lat, lon)
    assert max(v for v in errors.values() if np.isfinite(v)) > 2 * LIMIT_KM


@pytest.mark.slow
def test_stored_fit_is_what_the_command_computes():
    stored = fls.load_fitted()
    assert stored["command"] == fls.COMMAND
    again = fls.fit(fls.FitSettings(**stored["settings"]), verbose=False)
    np.testing.assert_allclose(np.array(again["knots"]), np.array(stored["knots"]), atol=2e-3)
    for key, value in stored["errors_km"].items():
        assert again["errors_km"][key] == pytest.approx(value, abs=0.5)
