"""The Python examples of docs/earth2studio.md run as written and do what they say."""

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("earth2studio", reason="the optional extra: pip install 'tfda[earth2studio]'")

PAGE = Path(__file__).resolve().parents[2] / "docs" / "earth2studio.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)


def test_the_page_has_one_example_per_direction_of_about_20_lines():
    assert len(BLOCKS) == 2
    for code in BLOCKS:
        lines = [ln for ln in code.splitlines() if ln.strip() and not ln.startswith(
            ("import", "from"))]
        assert len(lines) <= 25


def test_earth2studio_model_in_a_tfda_cycle(capsys):
    scope: dict = {}
    exec(compile(BLOCKS[0], f"{PAGE}:example-1", "exec"), scope)
    ds = scope["ds"]
    # three of the four stations lie in the grid's box; the analysis fits them better
    assert (ds["obs_rmse_a"].values < ds["obs_rmse_f"].values).all()
    assert "[" in capsys.readouterr().out


def test_tfda_ensf_in_an_earth2studio_workflow():
    scope: dict = {}
    exec(compile(BLOCKS[1], f"{PAGE}:example-2", "exec"), scope)
    analysis, x0 = scope["analysis"], scope["x0"]
    assert analysis.dims == x0.dims and analysis["lead_time"].values[0] == np.timedelta64(12, "h")
    near = analysis.mean("ensemble").sel(lat=40.0, lon=285.0).values.item()  # station 1: 285.0 K
    before = x0.mean("ensemble").sel(lat=40.0, lon=285.0).values.item()
    assert abs(near - 285.0) < 0.5 * abs(before - 285.0)
