"""Cross-modal retrieval: search photos by text or image, describe and classify them.

The public API is what ``__all__`` lists; everything else is internal.
"""

from .errors import (
    CalibrationError,
    ImageDecodeError,
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
from .encoder import Encoder
from .models import create_model
from .registry import DEFAULT_MODEL, ModelSpec, list_models, list_pretrained

__all__ = [
    "DEFAULT_MODEL",
    "Encoder",
    "ModelSpec",
    "create_model",
    "list_models",
    "list_pretrained",
    "CalibrationError",
    "ImageDecodeError",
    "IndexFormatError",
    "IndexLockedError",
    "IndexNotFoundError",
    "InvalidQueryError",
    "ModelError",
    "ModelMismatchError",
    "ModelUnavailableError",
    "RetrievalError",
    "UnknownModelError",
]
