"""``verify``: read every file of the live generation and check it against the checksums in its manifest.

A query checks only what it reads (see :mod:`retrieval.index.checksums`); this reads everything, so a
damaged file that no query has touched yet is found too. The outcome and its time go to
``DIR/verified.json``, which ``stats`` shows.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from retrieval.atomic import replacing
from retrieval.errors import IndexDamagedError
from retrieval.index.manifest import utc_now_iso
from retrieval.index.reader import IndexReader

RECORD = "verified.json"


@dataclass(frozen=True)
class Verification:
    """One check of one generation: when, what, and how it ended (``ok``, ``damaged`` or ``not verified``)."""

    index_dir: str
    generation: str
    at: str
    outcome: str
    files: int = 0
    bytes: int = 0
    detail: str = ""


def verify(index_dir: str | os.PathLike[str], progress: bool = False) -> Verification:
    """Check every file of the live generation whole. Raises :class:`IndexDamagedError` naming the first
    damaged file (after recording it); returns ``not verified`` for a generation without checksums."""
    index_dir = Path(index_dir).resolve()
    try:
        reader = IndexReader.open(index_dir)
    except IndexDamagedError as exc:
        _record(Verification(str(index_dir), _live_name(index_dir), utc_now_iso(), "damaged", detail=str(exc)))
        raise
    checks, gen = reader.checks, reader.generation_dir.name
    if not checks.recorded:
        result = Verification(
            str(index_dir),
            gen,
            utc_now_iso(),
            "not verified",
            detail="this generation was written without checksums; a build or update adds them",
        )
        _record(result)
        return result
    total = sum(int(checks.files[name]["size"]) for name in checks.names())
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="verifying", disable=not progress, dynamic_ncols=True)
    try:
        for name in checks.names():
            entry = checks.files[name]
            size, step = int(entry["size"]), 128  # chunks per progress step (8 MiB)
            for c in range(0, max(1, -(-size // checks.chunk_bytes)), step):
                checks.verify_chunks(name, range(c, c + step))
                bar.update(min(step * checks.chunk_bytes, size - c * checks.chunk_bytes))
    except IndexDamagedError as exc:
        _record(Verification(str(index_dir), gen, utc_now_iso(), "damaged", detail=str(exc)))
        raise
    finally:
        bar.close()
    result = Verification(str(index_dir), gen, utc_now_iso(), "ok", files=len(checks.names()), bytes=total)
    _record(result)
    return result


def _live_name(index_dir: Path) -> str:
    try:
        return (index_dir / "CURRENT").read_text().strip()
    except OSError:
        return ""


def _record(result: Verification) -> None:
    """Keep the outcome beside the index; an index on a read-only disk is verified all the same."""
    try:
        with replacing(Path(result.index_dir) / RECORD) as tmp:
            tmp.write_text(json.dumps(asdict(result), indent=2))
    except OSError:
        pass


def last_verification(index_dir: str | os.PathLike[str]) -> Verification | None:
    """The last recorded check of ``index_dir``, or None (never verified, or the record is unreadable)."""
    try:
        data = json.loads((Path(index_dir) / RECORD).read_text())
        return Verification(**{k: data[k] for k in Verification.__dataclass_fields__ if k in data})
    except (OSError, ValueError, TypeError, KeyError):
        return None
