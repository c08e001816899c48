"""One namespace: the project imports as tfda.*, and no generic top-level package (da,
models, observations, diagnostics, experiments, interop) is importable from outside the
checkout."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tfda_namespace_maps_the_project_folders():
    import tfda.da.score
    import tfda.diagnostics.tracking
    import tfda.experiments.cli
    import tfda.models
    import tfda.observations

    assert Path(tfda.da.score.__file__).resolve() == ROOT / "da" / "score.py"
    assert Path(tfda.models.__file__).resolve().parent == ROOT / "models"
    assert tfda.observations.__name__ == "tfda.observations"
    tracking = Path(tfda.diagnostics.tracking.__file__).resolve()
    assert tracking == ROOT / "diagnostics" / "tracking.py"
    assert tfda.experiments.cli.COMMANDS["lee"][0] == "tfda.experiments.lee.cli"


def test_no_generic_package_outside_the_checkout(tmp_path):
    code = ("import importlib.util as u, sys; "
            "sys.exit(any(u.find_spec(n) for n in ('da', 'models', 'observations', "
            "'diagnostics', 'experiments', 'interop')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path)
    assert proc.returncode == 0
