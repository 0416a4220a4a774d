"""A text index: a list of texts with their embeddings, for image -> text queries.

Small galleries (captions, labels) are ranked exactly with one matrix product. A text
index can be saved next to an image index and reused, as long as the model matches.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..atomic import replacing
from ..errors import IndexFormatError, IndexNotFoundError, InvalidQueryError, ModelMismatchError

if TYPE_CHECKING:
    from ..models.encoder import Encoder

INFO_FILE = "texts.json"
VECTORS_PREFIX = "text_vectors-"
LEGACY_VECTORS = "text_vectors.npy"  # the one vectors file of saves from before ``vectors_file``


@dataclass(frozen=True)
class TextIndex:
    texts: list[str]
    vectors: np.ndarray  # [N, D] float32, unit length
    model_fingerprint: str

    @classmethod
    def build(cls, encoder: Encoder, texts: Sequence[str]) -> TextIndex:
        cleaned = [t.strip() for t in texts if t and t.strip()]
        if not cleaned:
            raise InvalidQueryError("the text gallery is empty")
        return cls(cleaned, encoder.encode_texts(cleaned), encoder.fingerprint)

    def rank(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, positions) for one unit query vector."""
        if query.shape[-1] != self.vectors.shape[1]:
            raise ModelMismatchError("query and text index come from models of different dimensions")
        scores = self.vectors @ query.astype(np.float32)
        order = np.argsort(-scores, kind="stable")[: max(1, k)]
        return scores[order], order

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index into the folder ``path``; a save that fails leaves the previous one loadable.

        ``texts.json`` names its vectors file, and each save writes a new one before it replaces
        ``texts.json``, so the texts and the vectors on disk always belong together.
        """
        path = Path(path)
        vectors_file = f"{VECTORS_PREFIX}{secrets.token_hex(4)}.npy"
        with replacing(path / vectors_file) as tmp:
            np.save(tmp, self.vectors.astype(np.float16))
        try:
            with replacing(path / INFO_FILE) as tmp:
                tmp.write_text(
                    json.dumps(
                        {"model_fingerprint": self.model_fingerprint, "texts": self.texts, "vectors_file": vectors_file}
                    )
                )
        except BaseException:
            (path / vectors_file).unlink(missing_ok=True)
            raise
        for old in [*path.glob(f"{VECTORS_PREFIX}*.npy"), path / LEGACY_VECTORS]:
            if old.name != vectors_file:
                old.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | os.PathLike[str], encoder: Encoder | None = None) -> TextIndex:
        path = Path(path)
        if not (path / INFO_FILE).is_file():
            raise IndexNotFoundError(f"no text index at {path}")
        try:
            info = json.loads((path / INFO_FILE).read_text())
            texts, fingerprint = list(info["texts"]), str(info["model_fingerprint"])
            vectors_file = Path(info.get("vectors_file", LEGACY_VECTORS)).name  # a bare name, never a path elsewhere
            vectors = np.load(path / vectors_file, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexFormatError(f"damaged text index at {path}: {exc}") from exc
        if len(texts) != len(vectors):
            raise IndexFormatError(f"damaged text index at {path}: {len(texts)} texts, {len(vectors)} vectors")
        if encoder is not None and encoder.fingerprint != fingerprint:
            raise ModelMismatchError(f"the text index at {path} was built with another model")
        return cls(texts, vectors, fingerprint)
