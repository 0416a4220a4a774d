"""Cross-modal retrieval: search photos by text or image, describe and classify them.

The public API is what ``__all__`` lists; everything else is internal.
"""

from .errors import (
    AnnConfigError,
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
    ModelError,
    ModelMismatchError,
    ModelUnavailableError,
    RetrievalError,
    UnknownModelError,
)
from .classify import Prediction, ZeroShotClassifier, classify
from .duplicates import DuplicateGroup
from .encoder import Encoder
from .models import create_model
from .prompts import get_templates
from .registry import DEFAULT_MODEL, ModelSpec, list_models, list_pretrained
from .search import Index, Result, TextResult, default_index_dir, open_index, search
from .texts import TextIndex

__all__ = [
    "search",
    "open_index",
    "default_index_dir",
    "Index",
    "Result",
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
    "ModelError",
    "ModelMismatchError",
    "ModelUnavailableError",
    "RetrievalError",
    "UnknownModelError",
]
