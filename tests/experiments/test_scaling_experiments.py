"""Smoke runs of the two scaling experiments on tiny sizes: they must run end to end
and report what the README's tables report (the numbers themselves are benchmarks)."""

import csv
import json

import pytest

from tfda.experiments import parareal_speedup, scaling


def test_parareal_speedup_reports_exact_rows_after_n_c_iterations(tmp_path, capsys):
    out = tmp_path / "rows.json"
    argv = ["--problem", "mixture", "--slices", "2", "--steps", "8", "--tol", "1e-12",
            "--modes", "serial", "batched", "--json", str(out)]
    assert parareal_speedup.main(argv) == 0
    rows = json.loads(out.read_text())
    assert {row["mode"] for row in rows} == {"serial", "batched"}
    for row in rows:
        # with a tolerance below round-off Parareal runs n_c iterations: the serial answer
        assert row["iterations"] == 2 and row["max_err"] < 1e-10
    assert "speed-up" in capsys.readouterr().out


@pytest.mark.multiprocess
def test_scaling_counts_n_times_m_values_per_evaluation(tmp_path):
    argv = ["--ranks", "2", "--n", "3", "--m", "4", "--steps", "2", "--strong-d", "1001",
            "--weak-d", "500", "--memory-d", "2000", "--memory-ranks", "1,2", "--repeats", "1",
            "--dtype", "float32", "--out-dir", str(tmp_path), "--no-progress"]
    assert scaling.main(argv) == 0
    with open(tmp_path / "scaling.csv") as f:
        rows = list(csv.DictReader(f))
    timed = [r for r in rows if r["kind"] in ("strong", "weak")]
    assert {int(r["ranks"]) for r in timed} == {1, 2}
    assert all(int(float(r["payload_bytes_per_eval"])) == 3 * 4 * 4 for r in timed)
    assert (tmp_path / "scaling.png").stat().st_size > 0
