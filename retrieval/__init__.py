"""Cross-modal retrieval: search photos by text or image, describe and classify them.

The public API is what ``__all__`` lists; everything else is internal.
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("clip-retrieval-engine")
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0.1.0"

from .errors import (
    AnnConfigError,
    CatalogDamagedError,
    EvaluationImageError,
    FileWriteError,
    IndexWriteError,
    PairsFileError,
    PathRefusedError,
    RetrievalWarning,
    SharedMemoryFull,
    PathNotFoundError,
    StoreError,
    TrainingError,
    CalibrationError,
    ImageDecodeError,
    IndexDamagedError,
    IndexFormatError,
    IndexLockedError,
    IndexNotFoundError,
    InvalidQueryError,
    QuerySyntaxError,
    ModelError,
    ModelMismatchError,
    ModelUnavailableError,
    OcrUnavailableError,
    RetrievalError,
    TextNotIndexedError,
    UnknownModelError,
    WatchError,
    ServiceConfigError,
    PhotoNotFoundError,
    UnknownIndexError,
    UploadTooLargeError,
    ServiceError,
)
from .classify import Prediction, ZeroShotClassifier, classify
from .duplicates import DuplicateGroup
from .encoder import Encoder
from .models import create_model
from .prompts import get_templates
from .registry import DEFAULT_MODEL, ModelSpec, list_models, list_pretrained
from .query import Query, Term
from .search import Index, Result, Results, TextResult, default_index_dir, open_index, search
from .texts import TextIndex

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
