"""Names inside an index directory, and which generation is live."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import IndexFormatError

CURRENT = "CURRENT"
LOCK = ".lock"
GEN_PREFIX = "gen-"
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
VECTORS = "vectors.npy"
METADATA = "metadata.parquet"
MAPPED_METADATA = "metadata.arrow"
MAP_METADATA_ABOVE = 250_000
"""Generations with more rows than this also store their metadata as an uncompressed Arrow IPC
file, which readers memory-map: Parquet has to be decoded into RAM on every open (2.3 GB and
1.5 s at 10M rows); the mapped copy opens at once and pages in only the rows a query touches."""
CATALOG = "catalog.db"


def catalog_url(index_dir: str | os.PathLike[str]) -> str:
    """Default SQLAlchemy URL of the catalog: SQLite next to the generations."""
    return f"sqlite:///{Path(index_dir).resolve() / CATALOG}"


def live_generation(index_dir: str | os.PathLike[str]) -> Path | None:
    """The generation directory ``CURRENT`` names, or None when nothing was published yet."""
    index_dir = Path(index_dir)
    try:
        name = (index_dir / CURRENT).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):  # nothing published, or index_dir is a file
        return None
    except UnicodeDecodeError:
        name = "(bytes that are not text)"
    if not name.startswith(GEN_PREFIX) or "/" in name:
        raise IndexFormatError(
            f"the index at {index_dir} is damaged: {CURRENT} names {name!r}, which is not a "
            f"generation; rebuild it with `python -m indexer build FOLDER --index {index_dir} --rebuild`"
        )
    return index_dir / name
