"""The GPU smoke command: its skip line without CUDA, and every part at toy size on the CPU."""

from __future__ import annotations

import pytest
import torch

from tfda.experiments import gpu_check


def test_without_cuda_it_skips_with_one_line_and_exit_0(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("gpu_check: skipped: CUDA is not available")


@pytest.mark.slow
def test_every_part_runs_at_toy_size_on_the_cpu(tmp_path, capsys):
    rc = gpu_check.main(["--device", "cpu", "--small", "--budget", "900",
                         "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    for part in gpu_check.PARTS:
        assert f"| {part} | ok |" in out
    # the Lee part went through `tfda lee --era5 --weights` and finished its run directory
    assert (tmp_path / "lee" / "lee" / "COMPLETE").is_file()
    assert (tmp_path / "lee" / "weights" / "backbone.ckpt").is_file()
    assert "paired/sde" in out and "letkf" in out
