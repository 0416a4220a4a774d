"""Typed exceptions for the whole engine.

Library code raises these; only ``__main__`` modules turn them into messages and exit
codes. Every error carries a message meant for the person who ran the command.
"""

from __future__ import annotations


class RetrievalError(Exception):
    """Base class for every error this project raises on purpose."""


class ModelError(RetrievalError):
    """A model spec could not be turned into a working encoder."""


class UnknownModelError(ModelError):
    """The spec names an architecture that no registry knows."""


class ModelUnavailableError(ModelError):
    """The weights exist in principle but cannot be loaded here (offline, missing file)."""


class ImageDecodeError(RetrievalError):
    """A file could not be decoded into an image. ``reason`` is a short machine-readable tag."""

    def __init__(self, path: str, reason: str, detail: str = "") -> None:
        self.path = path
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


class StoreError(RetrievalError):
    """Base class for problems with an index directory."""


class IndexNotFoundError(StoreError):
    """No index exists at the given location."""


class IndexFormatError(StoreError):
    """The index directory exists but is damaged or of an unknown schema version."""


class IndexDamagedError(IndexFormatError):
    """A file of the live generation does not match its checksum, or holds values no index can hold
    (scores that are not finite). ``path`` names the file when one is known."""

    def __init__(self, message: str, path: str | None = None) -> None:
        self.path = path
        super().__init__(message)


class ModelMismatchError(StoreError):
    """Vectors or queries from one model were used with an index built by another."""


class IndexLockedError(StoreError):
    """Another process is writing this index."""


class FileWriteError(RetrievalError):
    """The disk refused a write (full, over quota, read-only, no permission)."""


class IndexWriteError(StoreError, FileWriteError):
    """The disk refused a write to an index; what was live stays live."""


class PathNotFoundError(RetrievalError, FileNotFoundError):
    """A file or folder given on the command line does not exist."""


class InvalidQueryError(RetrievalError):
    """A query or filter is malformed (empty text, bad date, unknown file type...)."""


class QuerySyntaxError(InvalidQueryError):
    """A query expression that does not parse; ``column`` (1-based) says where."""

    def __init__(self, message: str, text: str, column: int) -> None:
        self.text = text
        self.column = column
        super().__init__(f"{message} at column {column} of {text!r}")


class AnnConfigError(InvalidQueryError):
    """An ANN index setting (FAISS factory string, nprobe, re-rank depth) is malformed or does not fit the data."""


class CatalogDamagedError(IndexFormatError):
    """The catalog database cannot be opened (not a database, a damaged file)."""


class PathRefusedError(InvalidQueryError):
    """A path points outside every root folder of the index (directly, via ``..`` or a symlink)."""

    def __init__(self, path: str, detail: str = "outside the indexed folders") -> None:
        self.path = path
        self.detail = detail
        super().__init__(f"refused to open {path!r}: {detail}")


class PairsFileError(RetrievalError):
    """An image-caption pairs file is missing, lacks required columns, or selects nothing."""


class EvaluationImageError(RetrievalError):
    """An image of an evaluation set could not be decoded."""


class TextNotIndexedError(InvalidQueryError):
    """A search asks for the text in photos, and the index holds none (built without OCR)."""


class OcrUnavailableError(RetrievalError):
    """Reading text in photos needs the OCR engine, and it is not installed."""


class CalibrationError(RetrievalError):
    """A relevance or no-match threshold is missing or cannot be fitted."""


class TrainingError(RetrievalError):
    """Training cannot start or go on: contradictory options, unusable data, a checkpoint that does not fit."""


class WatchError(RetrievalError):
    """A folder cannot be watched for changes (the system's limit on watched folders, no permission)."""


class SharedMemoryFull(RetrievalError):
    """Data loader workers could not put a batch into shared memory (``/dev/shm`` full or too small)."""


class RetrievalWarning(UserWarning):
    """Something was skipped that costs time, not results (a cache that could not be written)."""


__all__ = [
    "RetrievalError",
    "ModelError",
    "UnknownModelError",
    "ModelUnavailableError",
    "ImageDecodeError",
    "StoreError",
    "IndexNotFoundError",
    "IndexFormatError",
    "IndexDamagedError",
    "ModelMismatchError",
    "IndexLockedError",
    "IndexWriteError",
    "FileWriteError",
    "PathNotFoundError",
    "InvalidQueryError",
    "QuerySyntaxError",
    "AnnConfigError",
    "TextNotIndexedError",
    "OcrUnavailableError",
    "CalibrationError",
    "TrainingError",
    "SharedMemoryFull",
    "WatchError",
    "RetrievalWarning",
    "CatalogDamagedError",
    "PathRefusedError",
    "PairsFileError",
    "EvaluationImageError",
    "ServiceConfigError",
    "PhotoNotFoundError",
    "UnknownIndexError",
    "UploadTooLargeError",
    "ServiceError",
]


class ServiceConfigError(RetrievalError):
    """The service cannot start as asked (a public address without an API key, a bad index name...)."""


class PhotoNotFoundError(RetrievalError):
    """No photo with this id is in the index's current generation (or its file is gone from disk)."""


class UnknownIndexError(RetrievalError):
    """The request names an index the service does not serve."""


class UploadTooLargeError(RetrievalError):
    """A request body is larger than the service accepts."""


class ServiceError(RetrievalError):
    """The service could not be reached, or answered with an error (its one-line message)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)
