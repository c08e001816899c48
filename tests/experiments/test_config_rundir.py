"""The typed configuration parser (experiments.config) and the run-directory helper
(experiments.rundir) on their own."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from tfda.experiments import rundir
from tfda.experiments._errors import UserError, command, one_line
from tfda.experiments.config import build, check_call, load_toml, parse_device, parse_override


@dataclass(frozen=True)
class Inner:
    size: int = 1
    ratio: float = 0.5


@dataclass(frozen=True)
class Outer:
    name: Literal["a", "b"] = "a"
    inner: Inner = field(default_factory=Inner)
    days: tuple[int, ...] = (1, 2)
    point: tuple[float, float] = (0.0, 0.0)
    path: str | None = None
    std: float | Literal["default"] = 1.0
    flag: bool = False

    def __post_init__(self) -> None:
        if self.inner.size < 0:
            raise ValueError(f"inner.size must be >= 0, got {self.inner.size}")


def test_build_converts_and_nests():
    cfg = build(Outer, {"name": "b", "inner": {"size": 3, "ratio": 2}, "days": [4, 5],
                        "point": [1, 2.5], "path": "x", "std": "default", "flag": True})
    assert cfg == Outer("b", Inner(3, 2.0), (4, 5), (1.0, 2.5), "x", "default", True)
    assert isinstance(cfg.inner.ratio, float) and isinstance(cfg.days, tuple)


@pytest.mark.parametrize("data,message", [
    ({"inner": {"sise": 3}}, "inner.sise: unknown key (did you mean 'size'?)"),
    ({"zzz": 1}, "zzz: unknown key (known: days, flag, inner, name, path, point, std)"),
    ({"inner": {"size": "three"}}, "inner.size: expected an integer, got 'three'"),
    ({"inner": {"size": 2.0}}, "inner.size: expected an integer, got 2.0"),
    ({"inner": {"size": True}}, "inner.size: expected an integer, got True"),
    ({"inner": 3}, "inner: expected a table, got 3"),
    ({"name": "c"}, "name: expected one of 'a', 'b', got 'c'"),
    ({"days": [1, "x"]}, "days[1]: expected an integer, got 'x'"),
    ({"point": [1.0]}, "point: expected 2 values, got 1"),
    ({"std": "big"}, "std: expected a number or one of 'default', got 'big'"),
    ({"flag": 1}, "flag: expected true or false, got 1"),
    ({"inner": {"size": -1}}, "inner.size must be >= 0, got -1"),
])
def test_build_names_the_key(data, message):
    with pytest.raises(UserError) as info:
        build(Outer, data)
    assert message in str(info.value)


def test_check_call_and_fixed_values():
    def factory(nx: int = 40, *, device: str = "cpu", config: Inner | None = None):
        return nx, device, config

    assert factory(**check_call(factory, {"nx": 8, "config": {"size": 2}}, "model.options")) \
        == (8, "cpu", Inner(2))
    with pytest.raises(UserError, match="model.options.nxx: unknown key"):
        check_call(factory, {"nxx": 8}, "model.options")
    with pytest.raises(UserError, match=r"model.options.nx: expected an integer, got '8'"):
        check_call(factory, {"nx": "8"}, "model.options")


def test_ensf_sampler_shortcuts_come_through_a_configuration():
    from tfda.da.filters import EnSF

    assert check_call(EnSF, {"sampler": "ode"}, "filter.options") == {"sampler": "ode"}
    with pytest.raises(UserError, match=r"filter.options.sampler: expected one of 'sde', 'ode'"):
        check_call(EnSF, {"sampler": "heun"}, "filter.options")

    @dataclass(frozen=True)
    class WithCallable:
        radius: float = 1.0
        distance: object = None

    assert build(WithCallable, {"radius": 2}, "--set", fixed={"distance": len}).distance is len
    with pytest.raises(UserError, match="--set radiuss: unknown key"):
        build(WithCallable, {"radiuss": 2}, "--set")


@pytest.mark.parametrize("text,expected", [
    ("inflation=1.06", ("inflation", 1.06)), ("steps=5", ("steps", 5)),
    ("score=paired", ("score", "paired")), ("flag=true", ("flag", True)),
    ("days=[1, 2]", ("days", [1, 2])), ("name=\"x y\"", ("name", "x y")),
])
def test_parse_override(text, expected):
    assert parse_override(text) == expected


def test_parse_override_and_files_errors(tmp_path):
    with pytest.raises(UserError, match="--set expects KEY=VALUE, got 'inflation'"):
        parse_override("inflation")
    with pytest.raises(UserError, match="absent.toml: not found"):
        load_toml(tmp_path / "absent.toml", "--config")
    (tmp_path / "bad.toml").write_text("a = [\n")
    with pytest.raises(UserError, match="bad.toml: not valid TOML"):
        load_toml(tmp_path / "bad.toml", "--config")
    with pytest.raises(UserError, match="is a directory"):
        load_toml(tmp_path, "--config")


def test_parse_device():
    assert parse_device("cpu").type == "cpu"
    assert parse_device("auto").type in ("cpu", "cuda")
    with pytest.raises(UserError, match="--device 'gpu': not a device"):
        parse_device("gpu")
    with pytest.raises(UserError, match="--device 'meta': only cpu and cuda"):
        parse_device("meta")


def test_atomic_path_umask_and_no_debris(tmp_path):
    old = os.umask(0o027)
    try:
        path = rundir.write_text(tmp_path / "a.txt", "hello")
        assert path.read_text() == "hello" and path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
    with pytest.raises(RuntimeError), rundir.atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert (tmp_path / "a.txt").read_text() == "hello"  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_check_out_dir_and_begin(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="--out .*f: exists and is not a directory"):
        rundir.check_out_dir(tmp_path / "f")
    with pytest.raises(UserError, match="is a file, not a directory"):
        rundir.check_out_dir(tmp_path / "f" / "sub" / "run")
    assert rundir.check_out_dir(tmp_path / "new" / "run") == tmp_path / "new" / "run"
    assert not (tmp_path / "new").exists()  # checking creates nothing


def _tree(d):
    """{relative path: bytes} of every file under ``d`` (a run directory's checksum)."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_a_run_is_a_transaction(tmp_path):
    out = tmp_path / "run"
    staging = rundir.begin(out, [], command="tfda x", config={"k": 1})
    assert staging == rundir.staging_dir(out) and not out.exists()  # --out untouched
    (staging / "metrics.json").write_text("first")
    (staging / "figs").mkdir()
    (staging / "figs" / "a.png").write_text("first")
    assert rundir.finish(staging, {"n": 1}) == out.absolute()
    assert not staging.exists() and (out / "COMPLETE").is_file()
    (out / "notes.txt").write_text("mine")  # the user's: never deleted
    done = _tree(out)

    # a second run that fails: the complete run is untouched, the staged files stay
    staging = rundir.begin(out, ["metrics.json", "figs"], command="tfda x", config={"k": 2})
    (staging / "checkpoint.pt").write_text("resume me")
    assert _tree(out) == done
    # the same command finds its staging directory (and checkpoint) again
    staging = rundir.begin(out, ["metrics.json"], command="tfda x", config={"k": 2})
    assert (staging / "checkpoint.pt").read_text() == "resume me"
    (staging / "checkpoint.pt").unlink()
    (staging / "metrics.json").write_text("second")
    rundir.finish(staging, {"n": 2})
    # figs/ was the first run's and is not the second's: gone; notes.txt stays
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["COMPLETE", rundir.MARKER, "config.json", "metrics.json", "notes.txt"])
    assert (out / "metrics.json").read_text() == "second"
    assert json.loads((out / "config.json").read_text()) == {"k": 2}


def test_out_dir_of_another_owner_is_refused(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("my own")
    with pytest.raises(UserError, match="mine: exists and is not a tfda run directory"):
        rundir.begin(mine, [], command="tfda x")
    with pytest.raises(UserError, match="not a tfda run directory"):
        rundir.check_out_dir(mine, command="tfda x")
    assert (mine / "config.json").read_text() == "my own" and len(list(tmp_path.iterdir())) == 1
    other = rundir.finish(rundir.begin(tmp_path / "other", [], command="tfda y"), {})
    with pytest.raises(UserError, match="is a run directory of 'tfda y', not of 'tfda x'"):
        rundir.check_out_dir(other, command="tfda x")
    # --force: written into, files of the same names replaced, the rest kept
    (mine / "keep.txt").write_text("keep")
    staging = rundir.begin(mine, [], command="tfda x", force=True, config={"k": 1})
    rundir.finish(staging, {})
    assert (mine / "keep.txt").read_text() == "keep"
    assert json.loads((mine / "config.json").read_text()) == {"k": 1}
    assert rundir.check_out_dir(mine, command="tfda x") == mine  # now a run directory


def test_a_commit_killed_half_way_is_finished_by_the_next_begin(tmp_path, monkeypatch):
    out = tmp_path / "run"
    rundir.finish(rundir.begin(out, [], command="tfda x", config={"k": 1}), {})
    (out / "notes.txt").write_text("mine")  # not tfda's: the commit goes file by file
    staging = rundir.begin(out, [], command="tfda x", config={"k": 2})
    (staging / "metrics.json").write_text("new")
    real = rundir.os.replace
    calls = []

    def dies_on_the_second_move(src, dst):  # into --out (not the staged atomic writes)
        calls.extend([src] if Path(dst).parent == out else [])
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        real(src, dst)

    monkeypatch.setattr(rundir.os, "replace", dies_on_the_second_move)
    with pytest.raises(KeyboardInterrupt):
        rundir.finish(staging, {})
    monkeypatch.setattr(rundir.os, "replace", real)
    assert not (out / "COMPLETE").exists()  # a mixed directory never looks complete
    rundir.begin(out, [], command="tfda x")  # finishes the commit first
    assert (out / "COMPLETE").is_file() and (out / "metrics.json").read_text() == "new"
    assert json.loads((out / "config.json").read_text()) == {"k": 2}
    assert (out / "notes.txt").read_text() == "mine"


def test_over_tfdas_own_run_the_commit_is_one_atomic_exchange(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    if not rundir._exchange(a, b):
        pytest.skip("no renameat2 RENAME_EXCHANGE on this system or file system")
    out = tmp_path / "run"
    rundir.finish(rundir.begin(out, [], command="tfda x", config={"k": 1}), {})
    staging = rundir.begin(out, [], command="tfda x", config={"k": 2})
    inode = staging.stat().st_ino

    def killed(path, *args, **kwargs):  # dies right after the exchange, before the cleanup
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(rundir.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        rundir.finish(staging, {})
    monkeypatch.undo()
    # --out is the new complete run (the staged directory itself, swapped in) ...
    assert out.stat().st_ino == inode and (out / "COMPLETE").is_file()
    assert json.loads((out / "config.json").read_text()) == {"k": 2}
    # ... the previous run lies in the staging directory; the next begin removes it
    assert json.loads((staging / "config.json").read_text()) == {"k": 1}
    rundir.begin(out, [], command="tfda x")
    assert json.loads((out / "config.json").read_text()) == {"k": 2}
    assert sorted(p.name for p in staging.iterdir()) == [rundir.MARKER]


def test_wall_clock_sums_attempts(tmp_path):
    first = rundir.WallClock(tmp_path / "wall.json")
    first.before = 5.0  # as if an earlier attempt had run 5 s
    first.checkpoint()
    second = rundir.WallClock(tmp_path / "wall.json")
    assert second.before >= 5.0 and second.total() >= 5.0
    second.clear()
    assert rundir.WallClock(tmp_path / "wall.json").before == 0.0


def test_command_wrapper(capsys, monkeypatch):
    @command("tfda x")
    def main(argv):
        if argv == ["bug"]:
            raise RuntimeError("oops\nsecond line")
        raise FileNotFoundError(2, "No such file or directory", "/nowhere/f.nc")

    assert main([]) == 2
    assert capsys.readouterr().err == ("tfda x: error: [Errno 2] No such file or directory: "
                                       "'/nowhere/f.nc'\n")
    assert main(["bug"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: RuntimeError: oops second line" in err
    with pytest.raises(FileNotFoundError):
        main(["--debug"])
    monkeypatch.setenv("TFDA_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main(["bug"])
    assert one_line(ValueError("")) == "ValueError"
