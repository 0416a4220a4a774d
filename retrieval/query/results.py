"""What a search returns: :class:`Result`, one ranked photo with typed fields, and :class:`Results`,
a page of them that also says how many photos matched in all."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any


@dataclass(frozen=True)
class Result:
    """One ranked image: where it is, how it scored, when it was taken, and its metadata row.

    ``rank`` counts from 1 across pages (``offset + 1`` for a page's first result). ``taken_at``
    is the time the date filters and date order use: the EXIF capture time (``captured_at``,
    None without EXIF), else the file's modification time. ``metadata`` holds every stored
    column as plain values.
    """

    path: str
    score: float
    relevance: float | None = None
    rank: int = 0
    taken_at: datetime | None = None
    captured_at: datetime | None = None
    width: int | None = None
    height: int | None = None
    file_type: str | None = None
    text_score: float | None = None  # how well the photo's OCR text holds the query's words (index with text only)
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_row(
        cls, meta: dict[str, Any], score: float, relevance: float | None, rank: int, text_score: float | None = None
    ) -> Result:
        captured, mtime = meta.get("captured_at"), meta.get("mtime")
        taken = (
            captured
            if isinstance(captured, datetime)
            else (datetime.fromtimestamp(mtime, tz=timezone.utc) if isinstance(mtime, (int, float)) else None)
        )
        return cls(
            path=str(meta.get("path")),
            score=float(score),
            relevance=relevance,
            rank=rank,
            taken_at=taken,
            captured_at=captured if isinstance(captured, datetime) else None,
            width=meta.get("width"),
            height=meta.get("height"),
            file_type=meta.get("file_type"),
            text_score=text_score,
            metadata=meta,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view: rank, path, score, relevance, taken_at, then metadata (dates as ISO strings)."""
        out: dict[str, Any] = {
            "rank": self.rank,
            "path": self.path,
            "score": self.score,
            "relevance": self.relevance,
            "taken_at": self.taken_at,
        }
        if self.text_score is not None:
            out["text_score"] = self.text_score
        for key, value in self.metadata.items():
            out.setdefault(key, value)
        return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in out.items()}


class Results(list):  # type: ignore[type-arg]
    """A page of :class:`Result` (a plain list), with ``matched``: how many photos matched in all,
    when the search counted them (date order counts every match above the relevance threshold)."""

    matched: int | None = None
    matched_all: bool = True
