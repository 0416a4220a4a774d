"""The other end of the service: send a search to a running one and get the library's results back.

``python -m retrieval search --server URL`` uses it, so a remote search prints exactly
what a local one prints: the results come back as :class:`retrieval.Result` objects, and
an error the service answers becomes the same typed, one-line error a local search raises.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import ImageDecodeError, InvalidQueryError, RetrievalError, ServiceError
from ..query.results import Result, Results
from .config import API_KEY_HEADER


def _as_error(status: int, body: Any) -> RetrievalError:
    message = body.get("error") if isinstance(body, dict) else None
    message = message or f"the service answered HTTP {status}"
    return InvalidQueryError(message) if status == 400 else ServiceError(message, status)


def remote_search(
    server: str,
    *,
    text: str | None = None,
    image: str | os.PathLike[str] | None = None,
    k: int = 10,
    offset: int = 0,
    sort: str = "relevance",
    min_relevance: float | None = None,
    filters: dict[str, Any] | None = None,
    index: str | None = None,
    api_key: str | None = None,
    timeout: float = 120.0,
) -> tuple[Results, str | None]:
    """Search the service at ``server`` by ``text`` or by the image file ``image``. ``filters``: the
    keyword arguments of :meth:`retrieval.Index.search`. Returns the results and, when the filters
    leave no photo to search, the service's reason."""
    try:
        import httpx
    except ModuleNotFoundError as exc:
        raise RetrievalError("--server needs httpx: pip install 'clip-retrieval-engine[serve]'") from exc
    f = dict(filters or {})
    folder = f.get("folder")
    fields: dict[str, Any] = {
        "folder": os.path.abspath(os.path.expanduser(folder)) if folder else None,
        "date_from": f.get("date_from"),
        "date_to": f.get("date_to"),
        "types": f.get("file_types"),
        "tag": f.get("tag"),
        "k": k,
        "min_relevance": min_relevance,
        "index": index,
    }
    fields = {key: value for key, value in fields.items() if value is not None}
    headers = {API_KEY_HEADER: api_key} if api_key else {}
    url = server.rstrip("/")
    try:
        with httpx.Client(timeout=timeout, headers=headers, trust_env=False) as client:
            if image is None:
                response = client.post(f"{url}/search", json={"text": text, "offset": offset, "sort": sort, **fields})
            else:
                data = _read_image(Path(image))
                response = client.post(
                    f"{url}/search/image", data={**fields, "offset": offset}, files={"file": (Path(image).name, data)}
                )
    except httpx.HTTPError as exc:
        raise ServiceError(f"cannot reach the search service at {url}: {exc}") from exc
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict):
        raise _as_error(response.status_code, body)
    results = Results(
        Result(
            path=h["path"],
            score=h["score"],
            relevance=h["relevance"],
            rank=h["rank"],
            taken_at=datetime.fromisoformat(h["taken_at"]) if h.get("taken_at") else None,
            metadata=dict(h["metadata"]),
        )
        for h in body["results"]
    )
    results.matched, results.matched_all = body.get("matched"), body.get("matched_all", True)
    return results, body.get("no_match")


def _read_image(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(str(path), "missing", exc.strerror or str(exc)) from exc
