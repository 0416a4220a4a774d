"""Prompt template sets for zero-shot classification, kept as data in ``templates/*.txt``.

A template is a sentence with one ``{}`` where the label goes ("a photo of a {}.").
Template files hold one template per line; blank lines and lines starting with ``#``
are ignored. Shipped sets:

* ``single``: the one classic CLIP prompt;
* ``clip80``: the 80 prompts OpenAI used for ImageNet;
* ``photo``: a short set written for personal photo collections (small, blurry, cropped
  and low-resolution photos);
* ``tuned``: the default, a short ensemble chosen from all of these (and more) by greedy
  forward selection on half of CIFAR-10 test and checked on the other half
  (``bench/select_templates.py``; the file's header has the figures).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Union

from ..errors import InvalidQueryError

TEMPLATES_DIR = Path(__file__).parent / "templates"
DEFAULT_TEMPLATES = "tuned"
PLACEHOLDER = "{}"

TemplateSource = Union[str, "os.PathLike[str]", Sequence[str], None]


def list_template_sets() -> list[str]:
    """Names of the shipped template sets."""
    return sorted(p.stem for p in TEMPLATES_DIR.glob("*.txt"))


def templates_help() -> str:
    """The ``--templates`` flag's help: the shipped sets, what else it takes, and the default."""
    return (
        f"template set ({', '.join(list_template_sets())}), a file of templates, or one template "
        f"with {{}} for the label; default {DEFAULT_TEMPLATES}"
    ).replace("%", "%%")


def parse_templates(text: str, origin: str = "templates") -> list[str]:
    """Templates from the text of a template file (one per line, ``#`` comments)."""
    lines = [line.strip() for line in text.splitlines()]
    return validate_templates([line for line in lines if line and not line.startswith("#")], origin)


def validate_templates(templates: Sequence[str], origin: str = "templates") -> list[str]:
    """Check that there is at least one template and that each has exactly one ``{}``."""
    out = [str(t) for t in templates]
    if not out:
        raise InvalidQueryError(f"{origin}: no templates")
    for t in out:
        if t.count(PLACEHOLDER) != 1:
            raise InvalidQueryError(f"{origin}: template {t!r} must contain exactly one '{{}}' for the label")
    return out


def get_templates(source: TemplateSource = None) -> list[str]:
    """Resolve a template source: a set name, a file path, or a list of templates.

    ``None`` gives the default set (``tuned``). A plain string that has a ``{}`` is taken
    as a single template.
    """
    if source is None:
        source = DEFAULT_TEMPLATES
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        shipped = TEMPLATES_DIR / f"{text}.txt"
        if shipped.is_file() and os.sep not in text:
            return parse_templates(shipped.read_text(encoding="utf-8"), origin=f"template set {text!r}")
        path = Path(text).expanduser()
        if path.is_file():
            return parse_templates(path.read_text(encoding="utf-8"), origin=str(path))
        if PLACEHOLDER in text:
            return validate_templates([text])
        raise InvalidQueryError(
            f"unknown template set {text!r}: not one of {', '.join(list_template_sets())} and not a file"
        )
    return validate_templates(list(source))


def build_prompts(label: str, templates: Sequence[str]) -> list[str]:
    """Every template filled in with ``label``."""
    return [t.replace(PLACEHOLDER, label) for t in templates]


def templates_hash(templates: Sequence[str]) -> str:
    """Short stable hash of a template list (part of cache keys)."""
    return hashlib.sha256("\n".join(templates).encode("utf-8")).hexdigest()[:16]
