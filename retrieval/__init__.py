"""Cross-modal retrieval: search photos by text or image, describe and classify them.

The public API is what ``__all__`` lists; everything else is internal.
"""

import importlib
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version
from typing import Any

try:
    __version__ = _version("clip-retrieval-engine")
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0.1.0"

from .errors import (
    AnnConfigError,
    CalibrationError,
    CatalogDamagedError,
    EvaluationImageError,
    FileWriteError,
    ImageDecodeError,
    IndexDamagedError,
    IndexFormatError,
    IndexLockedError,
    IndexNotFoundError,
    IndexWriteError,
    InvalidQueryError,
    ModelError,
    ModelMismatchError,
    ModelUnavailableError,
    OcrUnavailableError,
    PairsFileError,
    PathNotFoundError,
    PathRefusedError,
    PhotoNotFoundError,
    QuerySyntaxError,
    RetrievalError,
    RetrievalWarning,
    ServiceConfigError,
    ServiceError,
    SharedMemoryFull,
    StoreError,
    TextNotIndexedError,
    TrainingError,
    UnknownIndexError,
    UnknownModelError,
    UploadTooLargeError,
    WatchError,
)

# Everything else loads on first use (PEP 562): ``import retrieval`` stays cheap, and a text
# query never imports torch, open_clip or torchvision (tests/test_cold_start.py guards this).
_LAZY = {
    "Prediction": "zeroshot.classify",
    "ZeroShotClassifier": "zeroshot.classify",
    "classify": "zeroshot.classify",
    "DuplicateGroup": "duplicates.groups",
    "Encoder": "models.encoder",
    "create_model": "models.factory",
    "get_templates": "zeroshot.prompts",
    "DEFAULT_MODEL": "models.registry",
    "ModelSpec": "models.registry",
    "list_models": "models.registry",
    "list_pretrained": "models.registry",
    "Index": "query.search",
    "TextResult": "query.search",
    "default_index_dir": "query.search",
    "Result": "query.results",
    "Results": "query.results",
    "Query": "query.parse",
    "Term": "query.parse",
    "open_index": "query.search",
    "search": "query.search",
    "TextIndex": "query.texts",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "search",
    "open_index",
    "default_index_dir",
    "Index",
    "Result",
    "Results",
    "Query",
    "Term",
    "TextResult",
    "TextIndex",
    "DuplicateGroup",
    "classify",
    "ZeroShotClassifier",
    "Prediction",
    "get_templates",
    "DEFAULT_MODEL",
    "Encoder",
    "ModelSpec",
    "create_model",
    "list_models",
    "list_pretrained",
    "AnnConfigError",
    "CalibrationError",
    "PathNotFoundError",
    "StoreError",
    "TrainingError",
    "ImageDecodeError",
    "IndexFormatError",
    "IndexDamagedError",
    "IndexLockedError",
    "IndexNotFoundError",
    "InvalidQueryError",
    "QuerySyntaxError",
    "ModelError",
    "ModelMismatchError",
    "ModelUnavailableError",
    "OcrUnavailableError",
    "RetrievalError",
    "TextNotIndexedError",
    "UnknownModelError",
    "WatchError",
    "ServiceConfigError",
    "PhotoNotFoundError",
    "UnknownIndexError",
    "UploadTooLargeError",
    "ServiceError",
    "CatalogDamagedError",
    "EvaluationImageError",
    "FileWriteError",
    "IndexWriteError",
    "PairsFileError",
    "PathRefusedError",
    "RetrievalWarning",
    "SharedMemoryFull",
    "__version__",
]
