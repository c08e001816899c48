from __future__ import annotations

import re

from tfda.experiments import bench_obs_error


def test_sample_and_precision_agree_on_a_small_grid(capsys):
    """x^T R^-1 x / d of a draw of N(0, R) is 1 within its sampling error (~sqrt(2/d))."""
    assert bench_obs_error.main(["--lat", "37", "--lon", "72", "--channels", "3",
                                 "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    quad = float(re.search(r"x\^T R\^-1 x / d\s+([0-9.]+)", out).group(1))
    assert abs(quad - 1.0) < 5 * (2.0 / (37 * 72 * 3)) ** 0.5
    assert "precision_matvec" in out and "sample" in out
