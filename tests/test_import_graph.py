"""No import cycle among tfda's modules, counting imports inside functions too (only
``if TYPE_CHECKING:`` blocks, which never run, are left out), and the layering the
packages promise: the root's plumbing imports no tfda module, diagnostics needs only
that plumbing, and da (no I/O) never uses the atomic writes."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"tfda": "tfda", "da": "tfda.da", "models": "tfda.models",
            "observations": "tfda.observations", "diagnostics": "tfda.diagnostics",
            "experiments": "tfda.experiments", "interop": "tfda.interop"}
ROOT_MODULES = {"tfda", "tfda.geo", "tfda._io"}


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            mods[name.removesuffix(".__init__")] = path
    return mods


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def _edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    edges = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_nodes(tree)
        out = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tfda"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    out.add(full if full in mods else node.module)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name.startswith("tfda"))
        edges[name] = {m for m in out if m in mods and m != name}
    return edges


def test_no_import_cycle():
    mods = _modules()
    assert len(mods) > 40  # the walk found the package
    edges, state, cycles = _edges(mods), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def _imports_of(prefix: str, edges: dict[str, set[str]]) -> set[str]:
    return {m for name, out in edges.items() if name == prefix or name.startswith(prefix + ".")
            for m in out}


def test_layering_of_the_root_plumbing_and_diagnostics():
    mods = _modules()
    assert ROOT_MODULES <= set(mods)
    edges = _edges(mods)
    assert not set().union(*(edges[m] for m in ROOT_MODULES))  # the root imports no subpackage
    assert _imports_of("tfda.diagnostics", edges) <= ROOT_MODULES | {
        m for m in mods if m.startswith("tfda.diagnostics")}
    assert "tfda._io" not in _imports_of("tfda.da", edges)
