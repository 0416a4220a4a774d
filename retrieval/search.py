"""The query layer: open an index once, then search it by text, by image, or describe an image.

``open_index(DIR)`` loads the index (memory-mapped) and, on the first query that needs
it, the model that built the index. ``search("a dog")`` does the same through a small
per-process cache keyed by directory and generation. A text query, while no full model is
loaded, runs the model's text tower through ONNX Runtime when a build has exported it
(:mod:`retrieval.onnxtext`): no torch, a fraction of the time and memory, the same vectors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image

from . import onnxtext
from .duplicates import DEFAULT_THRESHOLD, DuplicateGroup, find_duplicates
from .errors import CalibrationError, IndexFormatError, IndexNotFoundError, InvalidQueryError, ModelMismatchError
from .imageio import load_image
from .layout import live_generation
from .manifest import Manifest
from .reader import IndexReader
from .relevance import load_relevance
from .texts import TextIndex

if TYPE_CHECKING:  # torch and the model factory load with the first query that needs the full model
    from .encoder import Encoder

INDEX_ENV = "RETRIEVAL_INDEX"

Query = "str | Image.Image | os.PathLike[str] | np.ndarray"


def default_index_dir() -> Path:
    """``$RETRIEVAL_INDEX`` if set, else ``~/.local/share/retrieval/index``."""
    env = os.environ.get(INDEX_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "retrieval" / "index"


@dataclass
class Result:
    """One ranked image. Metadata columns are also readable as attributes (``r.width``)."""

    path: str
    score: float
    relevance: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        metadata = self.__dict__.get("metadata", {})
        if name in metadata:
            return metadata[name]
        raise AttributeError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view: path, score, relevance, then metadata (dates as ISO strings)."""
        out: dict[str, Any] = {"path": self.path, "score": self.score, "relevance": self.relevance}
        for key, value in self.metadata.items():
            if key not in out:
                out[key] = value.isoformat() if hasattr(value, "isoformat") else value
        return out


@dataclass
class TextResult:
    text: str
    score: float
    relevance: float | None = None


class Index:
    """A searchable index: the stored vectors and metadata plus the model that built them."""

    def __init__(self, reader: IndexReader, encoder: "Encoder | None" = None, device: str | None = None) -> None:
        self.reader = reader
        self._device = device
        self._encoder: Encoder | None = None
        self._fast_text: onnxtext.OnnxTextEncoder | None | bool = None  # False: looked, none there
        self._relevance: Any = None
        if encoder is not None:
            self._set_encoder(encoder)

    @classmethod
    def open(cls, path: "str | os.PathLike[str] | None" = None, model: "str | Encoder | None" = None,
             device: str | None = None) -> "Index":
        reader = IndexReader.open(Path(path) if path is not None else default_index_dir())
        if isinstance(model, str):
            from .models import create_model

            encoder = create_model(model, device=device)
        else:
            encoder = model
        return cls(reader, encoder=encoder, device=device)

    @property
    def path(self) -> Path:
        return self.reader.path

    @property
    def manifest(self) -> Manifest:
        return self.reader.manifest

    @property
    def roots(self) -> list[str]:
        return list(self.manifest.roots)

    def __len__(self) -> int:
        return len(self.reader)

    def _set_encoder(self, encoder: "Encoder") -> None:
        if encoder.fingerprint != self.manifest.model_fingerprint:
            raise ModelMismatchError(
                f"the index at {self.path} was built with {self.manifest.model_spec} "
                f"({self.manifest.model_fingerprint}); queries from {encoder.spec} ({encoder.fingerprint}) "
                "would not be comparable. Query with the index's own model, or rebuild the index."
            )
        self._encoder = encoder
        self._relevance = load_relevance(encoder)

    @property
    def encoder(self) -> "Encoder":
        """The index's model, loaded on first use."""
        if self._encoder is None:
            from .models import create_model

            self._set_encoder(create_model(self.manifest.model_spec, device=self._device))
        assert self._encoder is not None
        return self._encoder

    def _text_encoder(self) -> "Encoder | onnxtext.OnnxTextEncoder":
        """What embeds a text query: the full model once loaded, else the exported text tower
        (:mod:`retrieval.onnxtext`) when there is one for the index's weights, else the full model."""
        if self._encoder is None and self._fast_text is None:
            fast = onnxtext.for_model(self.manifest.model_spec, self.manifest.model_fingerprint)
            self._fast_text = fast or False
            if fast is not None:
                self._relevance = load_relevance(fast)  # type: ignore[arg-type]  (it reads spec and fingerprint)
        if self._encoder is None and self._fast_text:
            return self._fast_text  # type: ignore[return-value]
        return self.encoder

    @property
    def has_relevance(self) -> bool:
        """Whether results carry a calibrated relevance (loads the text tower, and so its calibration)."""
        self._text_encoder()
        return self._relevance is not None

    def reload(self) -> None:
        """Switch to the newest published generation (after an update), keeping the model unless
        the index was rebuilt with another one."""
        self.reader = IndexReader.open(self.path)
        if self._fast_text and self._fast_text.fingerprint != self.manifest.model_fingerprint:
            self._fast_text = None
            if self._encoder is None:
                self._relevance = None
        if self._encoder is not None and self._encoder.fingerprint != self.manifest.model_fingerprint:
            self._encoder, self._relevance = None, None  # the index's new model loads on first use

    def refresh(self) -> bool:
        """:meth:`reload` if a newer generation was published since this one was read (an update
        from another process); a long-running server calls it before each query. Returns whether
        it did; a generation that cannot be read yet keeps the one in hand."""
        try:
            live = live_generation(self.path)
            if live is None or live.name == self.reader.generation_dir.name:
                return False
            self.reload()
        except (IndexFormatError, IndexNotFoundError, OSError):
            return False
        return True

    def query_vector(self, query: Query) -> np.ndarray:
        """Turn a text, image, image path or vector into one unit query vector ``[D]``."""
        if isinstance(query, np.ndarray):
            vec = np.asarray(query, dtype=np.float32).reshape(-1)
            if vec.shape[0] != self.manifest.embed_dim:
                raise InvalidQueryError(f"query vector has {vec.shape[0]} dims, the index has {self.manifest.embed_dim}")
            norm = float(np.linalg.norm(vec))
            if not np.isfinite(norm) or norm == 0:
                raise InvalidQueryError("query vector is zero or not finite")
            return vec / norm
        if isinstance(query, str):
            if not query.strip():
                raise InvalidQueryError("empty text query")
            return self._text_encoder().encode_texts([query])[0]
        if isinstance(query, os.PathLike):
            query = load_image(query, draft_size=2 * self.encoder.image_size)
        if isinstance(query, Image.Image):
            return self.encoder.encode_images([query])[0]
        raise InvalidQueryError(f"cannot search by a {type(query).__name__}; use text, an image, a path or a vector")

    def search(self, query: Query, k: int = 10, *, min_relevance: float | None = None,
               modality: str | None = None, exclude: Sequence[int] = (), **filters: Any) -> list[Result]:
        """Rank indexed images for ``query``. ``filters``: folder, date_from, date_to, file_types, tag.

        Calibrated ``relevance`` (and so ``min_relevance``) applies to text queries only: the
        calibration is fitted on text-image pairs, and image-image cosines live on another scale.
        ``modality`` says what a precomputed query vector came from (``"text"`` or ``"image"``);
        for other queries it follows from the query's type.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise InvalidQueryError(f"k must be a whole number, not {k!r}")
        if k < 1:
            raise InvalidQueryError("k must be at least 1")
        if modality not in (None, "text", "image"):
            raise InvalidQueryError(f"modality must be 'text' or 'image', not {modality!r}")
        is_text = modality == "text" if modality is not None else isinstance(query, str)
        if min_relevance is not None and not is_text:
            raise InvalidQueryError("min_relevance applies to text queries only")
        if min_relevance is not None and not 0.0 <= min_relevance <= 1.0:  # also refuses NaN
            raise InvalidQueryError(f"min_relevance is a probability between 0 and 1, not {min_relevance!r} (for 80% give 0.8)")
        vec = self.query_vector(query)
        mask = self.reader.filter_mask(**filters)
        if exclude:
            mask = np.ones(len(self.reader), bool) if mask is None else mask.copy()
            mask[np.asarray(exclude, dtype=np.int64)] = False
        scores, ids = self.reader.search_vectors(vec[None, :], k, mask=mask)
        keep = ids[0] >= 0
        scores, ids = scores[0][keep], ids[0][keep]
        relevance = self._relevance.probability(scores) if is_text and self._relevance is not None else None
        results = [Result(path=str(meta.get("path")), score=float(s), metadata=meta,
                          relevance=None if relevance is None else float(relevance[j]))
                   for j, (s, meta) in enumerate(zip(scores, self.reader.rows(ids.tolist())))]
        return self._apply_min_relevance(results, min_relevance)

    def duplicates(self, threshold: float = DEFAULT_THRESHOLD, progress: bool = False, **filters: Any) -> list[DuplicateGroup]:
        """Groups of near-duplicate images (copies, re-compressed, resized or lightly edited versions
        of one photo), largest first, the one to keep first in each; ``filters`` as for :meth:`search`.
        Reads only the stored vectors (no model). See :mod:`retrieval.duplicates`."""
        return find_duplicates(self.reader, threshold, mask=self.reader.filter_mask(**filters), progress=progress)

    def more_like_this(self, path: str, k: int = 10, **filters: Any) -> list[Result]:
        """Images most similar to an indexed image, using its stored vector; the image itself is left out."""
        rows = self.reader.rows_for_paths([path])
        if len(rows) == 0 or rows[0] < 0:
            raise InvalidQueryError(f"{path} is not in the index")
        row = int(rows[0])
        vec = np.asarray(self.reader.vectors[row], dtype=np.float32)
        return self.search(vec, k, modality="image", exclude=[row], **filters)

    def describe(self, image: "Image.Image | os.PathLike[str] | str", texts: "Sequence[str] | TextIndex",
                 k: int = 5) -> list[TextResult]:
        """Image -> text: rank ``texts`` (a list, or a prebuilt :class:`TextIndex`) for ``image``."""
        if isinstance(image, str):
            image = Path(image)
        vec = self.query_vector(image)
        gallery = texts if isinstance(texts, TextIndex) else TextIndex.build(self.encoder, texts)
        scores, order = gallery.rank(vec, k)
        rel = self._relevance.probability(scores) if self._relevance is not None else [None] * len(scores)
        return [TextResult(gallery.texts[i], float(s), None if r is None else float(r))
                for i, s, r in zip(order, scores, rel)]

    def _apply_min_relevance(self, results: list[Result], min_relevance: float | None) -> list[Result]:
        if min_relevance is None:
            return results
        if self._relevance is None:
            raise CalibrationError(
                f"min_relevance needs a relevance calibration for {self.manifest.model_spec}, and none is installed"
            )
        return [r for r in results if r.relevance is not None and r.relevance >= min_relevance]


def open_index(path: "str | os.PathLike[str] | None" = None, model: "str | Encoder | None" = None,
               device: str | None = None) -> Index:
    """Open an index directory (default: :func:`default_index_dir`) for repeated fast queries."""
    return Index.open(path, model=model, device=device)


@lru_cache(maxsize=4)
def _cached_index(path: str) -> Index:
    return Index.open(path)


def search(query: Query, k: int = 10, index: "str | os.PathLike[str] | Index | None" = None,
           **filters: Any) -> list[Result]:
    """One-call search. Opens ``index`` (default location if None) once per process and generation."""
    if isinstance(index, Index):
        return index.search(query, k, **filters)
    path = Path(index) if index is not None else default_index_dir()
    if live_generation(path) is None:
        raise IndexNotFoundError(f"no index at {path}; build one with `python -m indexer build PHOTOS --index {path}`")
    cached = _cached_index(str(path.resolve()))
    cached.refresh()  # a newer generation, and the same model: no second load of it
    return cached.search(query, k, **filters)
