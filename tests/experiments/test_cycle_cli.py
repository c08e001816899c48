from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from tfda.experiments import cycle

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
    assert not (out / "COMPLETE").exists() and list(out.glob("checkpoint-*.pt"))
    monkeypatch.setattr(cycle, "make_filter", real)
    assert cycle.main([str(conf), "--out", str(out), "--no-progress"]) == 0
    with xr.open_dataset(out / "cycle.nc") as ds:
        np.testing.assert_array_equal(ds["ensemble"].values, final)
        np.testing.assert_array_equal(ds["rmse_a"].values, rmse_a)
    assert not list(out.glob("checkpoint-*.pt"))


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
