"""The extra stays optional: no module outside tfda.interop imports earth2studio, and
without earth2studio the interop modules and `tfda era5 download --source arco` fail
with one line naming the install command."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ("da", "models", "observations", "experiments", "tfda")
HINT = 'pip install "tfda[earth2studio]"'
# a child process in which earth2studio cannot be imported, installed or not
BLOCK = "import sys; sys.modules['earth2studio'] = None; "


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_core_module_imports_earth2studio():
    offenders = [str(p.relative_to(ROOT)) for folder in CORE for p in (ROOT / folder).rglob(
        "*.py") if any(n.split(".")[0] == "earth2studio" for n in _imports(p))]
    assert not offenders
    # and the interop package itself imports it only in _e2s.py (and lazily in functions)
    top = [p.name for p in (ROOT / "interop").glob("*.py") if p.name != "_e2s.py" and any(
        n.split(".")[0] == "earth2studio" for n in _module_level_imports(p))]
    assert not top


def _module_level_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", ["e2s_prognostic", "e2s_assimilation", "e2s_data"])
def test_without_earth2studio_one_line_names_the_extra(module):
    code = BLOCK + f"import tfda.interop; import tfda.interop.{module}"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: tfda.interop needs earth2studio") and HINT in last


@pytest.mark.subprocess
def test_cli_without_earth2studio_is_one_line_exit_2(tmp_path):
    code = BLOCK + ("from tfda.experiments.era5_cli import main; sys.exit(main(['download', "
                    f"'--lee', '--source', 'arco', '--out', r'{tmp_path / 'x.nc'}']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and HINT in lines[0] and lines[0].startswith("tfda era5: error:")
    code = BLOCK + "from tfda import models; models.load('earth2studio:SFNO')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert HINT in proc.stderr.strip().splitlines()[-1]
