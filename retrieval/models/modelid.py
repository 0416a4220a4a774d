"""Which weights a model spec means, found without building the model (and without torch).

An index records the fingerprint of the weights that embedded it; the query path compares it
with :func:`expected_fingerprint` before it trusts a cached text tower, and an update compares
it before it decides whether to load the model at all. Hashing a weights file costs
milliseconds; importing torch and building the model costs seconds.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import ModelUnavailableError
from .registry import RANDOM, ModelSpec, resolve_weights

RANDOM_SEED = 0


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """Short content hash identifying a weights file (first 16 MiB plus the size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(16 << 20))
    h.update(str(os.path.getsize(path)).encode())
    return h.hexdigest()[:16]


def expected_fingerprint(spec: str | ModelSpec | None = None) -> str | None:
    """The ``fingerprint`` that ``create_model(spec)`` gives its encoder, found without building the
    model (a weights file is hashed, no more), or None when only building it can tell (weights
    missing, a spec without weights): an index's update checks it and loads no model when
    nothing changed."""
    parsed = ModelSpec.parse(spec)
    try:
        weights = resolve_weights(parsed)
    except ModelUnavailableError:  # the package that holds them is not installed: create_model says so
        return None
    if weights is None:
        return None
    if weights == RANDOM:
        return f"{parsed.arch}/{RANDOM}-seed{RANDOM_SEED}"
    if isinstance(weights, Path):
        return f"{parsed.arch}/{file_fingerprint(weights)}" if weights.is_file() else None
    return f"{parsed.arch}/tag-{weights}"
