"""Where the engine keeps what it can recompute: prompt embeddings, fitted calibrations.

Its own module so that the modules that cache (classification, relevance) need not import
each other to agree on the place.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$RETRIEVAL_CACHE_DIR``, else ``$XDG_CACHE_HOME/retrieval``, else ``~/.cache/retrieval``."""
    if os.environ.get("RETRIEVAL_CACHE_DIR"):
        return Path(os.environ["RETRIEVAL_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "retrieval"
