"""The service's own typed errors, and the one place where every error becomes a JSON status.

Library errors keep their types (:mod:`retrieval.errors`); :data:`STATUS` says which HTTP
status each one answers with. The body is always ``{"error": "<one line>", "status": N}``:
a client never sees a traceback, and the server log gets one line for a failure it did
not expect.
"""

from __future__ import annotations

import sys
from typing import Any

from ..errors import (
    CalibrationError,
    ImageDecodeError,
    IndexFormatError,
    IndexNotFoundError,
    InvalidQueryError,
    ModelError,
    ModelMismatchError,
    PhotoNotFoundError,
    RetrievalError,
    ServiceConfigError,
    UnknownIndexError,
    UploadTooLargeError,
)

__all__ = ["PhotoNotFoundError", "ServiceConfigError", "UnknownIndexError", "UploadTooLargeError", "STATUS"]


# Most specific first: the first class an error is an instance of decides its status.
STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (PhotoNotFoundError, 404),
    (UnknownIndexError, 404),
    (UploadTooLargeError, 413),
    (InvalidQueryError, 400),
    (CalibrationError, 400),
    (ModelMismatchError, 503),
    (ModelError, 503),
    (IndexNotFoundError, 503),
    (IndexFormatError, 503),
    (RetrievalError, 400),
)
_IMAGE_STATUS = {"too_large": 413, "decompression_bomb": 413}


def status_of(exc: BaseException) -> int:
    if isinstance(exc, ImageDecodeError):
        return _IMAGE_STATUS.get(exc.reason, 422)
    return next((status for kind, status in STATUS if isinstance(exc, kind)), 500)


def one_line(text: Any) -> str:
    return " ".join(str(text).split()) or "error"


def error_body(message: Any, status: int) -> dict[str, Any]:
    return {"error": one_line(message), "status": status}


def validation_message(errors: Any) -> str:
    """FastAPI's validation errors as one line: ``body.k: Input should be ... ; query.size: ...``."""
    parts = []
    for err in errors or []:
        where = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
    return "invalid request: " + ("; ".join(parts) or "malformed")


def log_unexpected(where: str, exc: BaseException) -> None:
    """One line in the server's log for an error no handler expected (its type and message, no traceback)."""
    print(f"error: {where}: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr, flush=True)


def install(app: Any) -> None:
    """Register the handlers that turn typed errors, validation failures and HTTP errors into JSON."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    async def retrieval_error(request: Any, exc: RetrievalError) -> JSONResponse:
        status = status_of(exc)
        return JSONResponse(error_body(exc, status), status_code=status)

    async def invalid_request(request: Any, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(validation_message(exc.errors()), 422), status_code=422)

    async def http_error(request: Any, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(exc.detail, exc.status_code), status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    app.add_exception_handler(RetrievalError, retrieval_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
