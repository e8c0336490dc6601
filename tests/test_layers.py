"""The package's shape: the layers point one way and every module stays small.

  * the library never imports diffmem.experiments (the experiments compose the library, not the reverse);
  * no experiment imports another (what two experiments share lives in the library);
  * no import cycles between diffmem's modules (counting imports inside functions too);
  * no module much over 600 lines.
Imports are read from the source with `ast` (nothing is executed).
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "diffmem"
MAX_LINES = 650


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The diffmem modules `name` imports (a 'from pkg import mod' counts as importing pkg.mod when it exists)."""
    out = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("diffmem")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative import
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                base = ".".join(pkg[:len(pkg) - node.level + 1] + ([node.module] if node.module else []))
            if not base.startswith("diffmem"):
                continue
            for a in node.names:
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in out if m in known and m != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _experiment_of(module: str):
    """'diffmem.experiments.prune_dit.where' -> 'prune_dit'; None for the library and the registry."""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "experiments" else None


def test_library_never_imports_experiments(graph):
    bad = {m: sorted(d for d in deps if d.startswith("diffmem.experiments"))
           for m, deps in graph.items() if not m.startswith("diffmem.experiments") and m != "diffmem.main"}
    assert not {m: d for m, d in bad.items() if d}, bad


def test_no_experiment_imports_another(graph):
    bad = []
    for m, deps in graph.items():
        mine = _experiment_of(m)
        for d in deps:
            theirs = _experiment_of(d)
            if mine and theirs and theirs != mine:
                bad.append((m, d))
            if mine and d == "diffmem.experiments":   # the registry is above the experiments
                bad.append((m, d))
    assert not bad, bad


def test_no_import_cycles(graph):
    # A package importing its own submodules (an __init__ that re-exports) is not a cycle of concepts; every other
    # edge counts.
    def edges(m):
        return {d for d in graph[m] if not (PKG_INIT(m) and d.startswith(m + "."))}

    def PKG_INIT(m):
        return (PKG / pathlib.Path(*m.split(".")[1:]) / "__init__.py").exists() if m != "diffmem" else True

    state, cycles = {}, []

    def visit(m, stack):
        state[m] = 1
        for d in sorted(edges(m)):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_modules_stay_small():
    big = {str(p.relative_to(ROOT)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, big


def test_the_checker_sees_a_violation(tmp_path):
    """The import reader resolves 'from diffmem.experiments import x' and relative imports."""
    p = tmp_path / "m.py"
    p.write_text("from diffmem.experiments import train_dit\nfrom . import io\nimport diffmem.sde\n")
    known = {"diffmem.experiments", "diffmem.experiments.train_dit", "diffmem.io", "diffmem.sde"}
    assert _imports("diffmem.x", p, known) == {"diffmem.experiments.train_dit", "diffmem.io", "diffmem.sde"}
