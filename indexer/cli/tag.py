"""``python -m indexer tag``: store top zero-shot labels in the index (see ``indexer/tag.py``)."""

from __future__ import annotations

from ..tag import register

__all__ = ["register"]
