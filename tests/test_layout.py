"""The package's shape: every import points down the layers (cli -> api -> tasks/engine -> models/weights
-> layers -> base), nothing imports in a circle, and ``import pvt`` loads no training, data, dense or
benchmark code. Read statically from the sources (imports inside functions and of a module's own package count too)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# rank of each module (longest prefix wins); a module may import modules of its own rank or below
RANKS: dict[str, int] = {
    # base: facts and helpers with no PVT knowledge
    "pvt.base": 0,
    # layers: the plain building blocks, and the kernels / process settings the accelerated paths use
    "pvt.layers": 1, "pvt.accel.kernels": 1, "pvt.accel.runtime": 1, "pvt.accel.cache": 1,
    # models and weights
    "pvt.models": 2, "pvt.accel": 2, "pvt.weights": 2, "pvt.dense": 2,
    # tasks and engine, and the tools built on the models
    "pvt.data": 3, "pvt.engine": 3, "pvt.tasks": 3, "pvt.tools": 3, "pvt.bench": 3,
    "pvt.api": 4,
    "pvt.cli": 5, "pvt.__main__": 5,
    "pvt": 6,  # the package's public facade (lazy attributes)
}
# arrows that the ranks allow but the design forbids
FORBIDDEN = [
    ("pvt.engine", "pvt.tasks"),  # the engine drives any task and knows none
    ("pvt.engine", "pvt.dense"),
    ("pvt.data", "pvt.engine"),
    ("pvt.data", "pvt.tasks"),
    ("pvt.tasks", "pvt.tools.reports"),
    ("pvt.tasks", "pvt.bench"),
]


def _modules(root: Path = SRC, package: str = "pvt") -> dict[str, Path]:
    """Dotted name -> file of every module of ``package`` under ``root`` (a package is its ``__init__``)."""
    out = {}
    for p in sorted((root / package).rglob("*.py")):
        parts = list(p.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules ``name`` imports, its own packages included: ``from . import f`` (``f`` not a module)
    or ``import <own package>`` runs and needs that package's ``__init__``, so it is an edge to it; only
    ``from . import submodule`` (Python has the package loaded already) and being inside it are not."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
            found.update(t for t in targets if name.startswith(t + "."))  # import <own package>
        elif isinstance(node, ast.ImportFrom):
            if node.module == "__future__":
                continue
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
            if name.startswith(base + ".") and any(f"{base}.{a.name}" not in known for a in node.names):
                found.add(base)  # a name from an own package's __init__
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):
                found.add(t)
    return found


def _graph(root: Path = SRC, package: str = "pvt") -> dict[str, set[str]]:
    modules = _modules(root, package)
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return sorted(cycles)


def _rank(module: str) -> int:
    best = max((p for p in RANKS if module == p or (p != "pvt" and module.startswith(p + "."))), key=len, default=None)
    if best is None:
        raise AssertionError(f"{module} has no layer: add it to RANKS in tests/test_layout.py (and the README)")
    return RANKS[best]


GRAPH = _graph()


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module):
    mine = _rank(module)
    up = sorted(t for t in GRAPH[module] if _rank(t) > mine)
    assert not up, f"{module} (layer {mine}) imports from higher layers: {up}"
    bad = [t for t in GRAPH[module] for a, b in FORBIDDEN
           if (module == a or module.startswith(a + ".")) and (t == b or t.startswith(b + "."))]
    assert not bad, f"{module} must not import {bad}"


def test_no_import_cycles():
    assert _cycles(GRAPH) == []


def test_cycles_inside_a_package_are_found(tmp_path):
    """The graph sees a package's own ``__init__``: quant taking a function from the ``__init__`` that imports
    quant is a cycle (as pvt.accel's once was), two modules importing each other are one, and taking a
    submodule from the package (``from . import sub``) is no edge to its ``__init__``."""
    files = {
        "__init__.py": "from .quant import quantize\n\ndef helper():\n    pass\n",
        "quant.py": "from . import helper\n\ndef quantize():\n    helper()\n",
        "a.py": "def f():\n    from .b import g\n",  # inside a function counts too
        "b.py": "from .a import f as g\n",
        "sub.py": "import os\n",
        "user.py": "from . import sub\nfrom .sub import os\n",
    }
    (tmp_path / "pkg").mkdir()
    for file, text in files.items():
        (tmp_path / "pkg" / file).write_text(text)
    graph = _graph(tmp_path, "pkg")
    assert graph["pkg.quant"] == {"pkg"} and graph["pkg"] == {"pkg.quant"}
    assert graph["pkg.user"] == {"pkg.sub"}
    assert _cycles(graph) == [["pkg", "pkg.quant"], ["pkg.a", "pkg.b"]]


def test_import_pvt_loads_no_training_data_dense_or_benchmark_code():
    # `import pvt` alone loads nothing (not even torch); the first model loads the model layers only
    code = ("import sys, pvt; print('torch' in sys.modules); pvt.create_model; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('pvt'))))")
    bare, loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  check=True).stdout.split("\n", 1)
    loaded = loaded.split()
    heavy = [m for m in loaded if m.split(".")[1:2] and m.split(".")[1] in
             ("data", "dense", "engine", "tasks", "bench", "reports", "api", "cli", "weights", "flops", "export")]
    assert bare == "False" and "pvt.models.model" in loaded and not heavy, loaded
