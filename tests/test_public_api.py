"""What ``import retrieval`` promises: every exception the project raises, a version, type hints."""

from __future__ import annotations

import ast
import builtins
import inspect
from pathlib import Path

import pytest

import retrieval
import retrieval.errors

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("retrieval", "indexer", "train", "ui")


def _exception_classes_in_source() -> dict[str, Path]:
    """Every class defined in the packages that derives (through any chain) from an exception."""
    known = {name for name, obj in vars(builtins).items() if isinstance(obj, type) and issubclass(obj, BaseException)}
    classes: list[tuple[str, set[str], Path]] = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef):
                    bases = {
                        b.id if isinstance(b, ast.Name) else b.attr
                        for b in node.bases
                        if isinstance(b, (ast.Name, ast.Attribute))
                    }
                    classes.append((node.name, bases, path))
    found: dict[str, Path] = {}
    grew = True
    while grew:
        grew = False
        for name, bases, path in classes:
            if name not in found and bases & (known | set(found)):
                found[name] = path
                grew = True
    return found


def test_public_api_names_exist() -> None:
    for name in retrieval.__all__:
        assert hasattr(retrieval, name), name


def test_every_exception_defined_in_the_project_is_exported() -> None:
    found = _exception_classes_in_source()
    assert {"RetrievalError", "IndexWriteError", "RetrievalWarning"} <= set(found)  # the scan sees the classes
    missing = sorted(
        f"{name} ({path.relative_to(ROOT)})" for name, path in found.items() if name not in retrieval.__all__
    )
    assert not missing, f"exceptions not in retrieval.__all__: {missing}"
    for name in found:
        assert inspect.isclass(getattr(retrieval, name)) and getattr(retrieval, name).__name__ == name


def test_every_class_in_errors_is_exported_and_errors_derive_from_one_base() -> None:
    for name, obj in vars(retrieval.errors).items():
        if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == "retrieval.errors":
            assert name in retrieval.__all__, name
            assert getattr(retrieval, name) is obj
            assert issubclass(obj, (retrieval.RetrievalError, Warning)), name


def test_version_matches_the_project_metadata() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert retrieval.__version__ == project["version"]
    assert "__version__" in retrieval.__all__


def test_typed_marker_and_licence_ship() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert (ROOT / "retrieval" / "py.typed").is_file()
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["retrieval"]
    licence = (ROOT / "LICENSE").read_text()
    assert config["project"]["license"]["text"] == "Apache-2.0"
    assert (
        "Apache License" in licence
        and "Version 2.0, January 2004" in licence
        and "END OF TERMS AND CONDITIONS" in licence
    )
