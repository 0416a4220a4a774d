"""A text index: a list of texts with their embeddings, for image -> text queries.

Small galleries (captions, labels) are ranked exactly with one matrix product. A text
index can be saved next to an image index and reused, as long as the model matches.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .encoder import Encoder
from .errors import IndexFormatError, IndexNotFoundError, InvalidQueryError, ModelMismatchError


@dataclass(frozen=True)
class TextIndex:
    texts: list[str]
    vectors: np.ndarray  # [N, D] float32, unit length
    model_fingerprint: str

    @classmethod
    def build(cls, encoder: Encoder, texts: Sequence[str]) -> "TextIndex":
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

    def save(self, path: "str | os.PathLike[str]") -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        np.save(path / "text_vectors.npy", self.vectors.astype(np.float16))
        tmp = path / "texts.json.tmp"
        tmp.write_text(json.dumps({"model_fingerprint": self.model_fingerprint, "texts": self.texts}))
        os.replace(tmp, path / "texts.json")

    @classmethod
    def load(cls, path: "str | os.PathLike[str]", encoder: Encoder | None = None) -> "TextIndex":
        path = Path(path)
        if not (path / "texts.json").is_file():
            raise IndexNotFoundError(f"no text index at {path}")
        try:
            info = json.loads((path / "texts.json").read_text())
            vectors = np.load(path / "text_vectors.npy").astype(np.float32)
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"damaged text index at {path}: {exc}") from exc
        if len(info["texts"]) != len(vectors):
            raise IndexFormatError(f"damaged text index at {path}: {len(info['texts'])} texts, {len(vectors)} vectors")
        if encoder is not None and encoder.fingerprint != info["model_fingerprint"]:
            raise ModelMismatchError(f"the text index at {path} was built with another model")
        return cls(info["texts"], vectors, info["model_fingerprint"])
