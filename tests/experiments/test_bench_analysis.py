"""``tfda bench-analysis``: one analysis per case in a fresh process, a table with the
scaling exponent; bad sizes are one line and exit status 2."""

from __future__ import annotations

import pytest

from tfda.experiments import bench_analysis


def test_table_rows_and_exponent(capsys):
    assert bench_analysis.main(["--nx", "64", "256", "--filters", "letkf"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in out if line.startswith("ring")]
    assert len(rows) == 4  # printed as measured, then in the final table
    first, second = rows[-2], rows[-1]
    assert first[1] == second[1] == "letkf"
    assert float(second[2]) == 256 and float(second[3]) == 256  # every component observed
    assert float(second[4]) == pytest.approx(2 * 14 + 1)  # obs within 2c = 14.6 of a site
    assert float(second[6]) > 0.1  # peak GB of a process that imported torch
    float(second[8])  # the exponent column is filled from the second size on


@pytest.mark.parametrize("argv,named", [(["--nx", "1.5"], "--nx"), (["--nx", "1e3", "x"], "--nx"),
                                        (["--fcn-stride", "0"], "--fcn-stride"),
                                        (["--members", "1"], "--members"),
                                        (["--nx", "1e13"], "--nx")])
def test_bad_sizes_are_one_line(argv, named, capsys):
    assert bench_analysis.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0]
