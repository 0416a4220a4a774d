"""The rules docs/architecture.md states hold: imports go one way, no cycles, named files exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("retrieval", "indexer", "train", "ui")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Each project module and the project modules it imports (at any depth in its code)."""
    files = {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    edges: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            edges[name] |= {t for t in targets if t in files and t != name}
    return edges


def test_the_import_graph_sees_modules_inside_subpackages() -> None:
    """Relative imports within a subpackage and across subpackages both resolve to modules."""
    edges = _imports()
    assert {"retrieval.query.ranking", "retrieval.models.onnxtext", "retrieval.errors"} <= edges[
        "retrieval.query.search"
    ]
    assert "retrieval.index.reader" in edges["retrieval.index.store"]


def test_retrieval_subpackages_import_nothing_on_import() -> None:
    """A subpackage's ``__init__`` is its docstring only: importing one module of it loads no other
    (the text query path must not reach torch through a package ``__init__``)."""
    for init in sorted((ROOT / "retrieval").glob("*/__init__.py")):
        if init.parent.name == "service":  # re-exports its config and errors, which import no FastAPI
            continue
        body = ast.parse(init.read_text(encoding="utf-8")).body
        assert body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant), init
        assert len(body) == 1, f"{init.relative_to(ROOT)} holds more than its docstring"


def test_imports_go_one_way() -> None:
    allowed = {
        "retrieval": {"retrieval"},
        "indexer": {"retrieval", "indexer"},
        "train": {"retrieval", "train"},
        "ui": {"retrieval", "indexer", "ui"},
    }
    wrong = sorted(
        f"{m} imports {t}"
        for m, targets in _imports().items()
        for t in targets
        if t.split(".")[0] not in allowed[m.split(".")[0]]
    )
    assert not wrong, wrong


def test_no_import_cycles_between_modules() -> None:
    """Package ``__init__`` re-exports are left out: importing a package runs them, but they are
    not where two modules come to depend on each other."""
    edges = {
        m: {t for t in ts if not (ROOT / t.replace(".", "/") / "__init__.py").is_file()}
        for m, ts in _imports().items()
        if not (ROOT / m.replace(".", "/") / "__init__.py").is_file()
    }
    cycles: list[list[str]] = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    assert not cycles, cycles


def test_every_file_the_architecture_page_names_exists() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`((?:retrieval|indexer|train|ui|bench|scripts|tests|docs)/[\w./*-]*?)(?::\w+)?`", text))
    assert len(named) > 20
    missing = sorted(n for n in named if not list(ROOT.glob(n.rstrip("/"))))
    assert not missing, missing
