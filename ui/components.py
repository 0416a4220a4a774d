"""Reusable pieces of the pages: the result grid, the large view, bar charts, uploads."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import date, datetime, timezone
from typing import Any, Protocol

import pandas as pd
import streamlit as st
from PIL import Image

from retrieval.errors import ImageDecodeError
from retrieval.imageio import IMAGE_EXTENSIONS

from .resources import LARGE_SIZE, image_bytes
from .safety import PathRefusedError, UploadLimits, decode_upload, describe_decode_error

CARD_WIDTH = 230
UPLOAD_TYPES = sorted(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
DETAIL_FIELDS = (
    "path",
    "captured_at",
    "modified",
    "camera_make",
    "camera_model",
    "width",
    "height",
    "size",
    "file_type",
    "tags",
)
HIDDEN_FIELDS = frozenset({"sha256", "tag_scores", "mtime", "fingerprint", "ocr_text", "ocr_confidence"})


class UploadedFileLike(Protocol):
    name: str

    def getvalue(self) -> bytes: ...


def format_score(result: Any) -> str:
    text = f"score {result.score:.3f}"
    if getattr(result, "relevance", None) is not None:
        text += f" · rel {result.relevance:.0%}"
    return text


def show_image(path: str, index: Any, size: int, square: bool = False, **image_kwargs: Any) -> bool:
    """Show a photo of ``index``, or a short notice when it is refused (not in the index) or unreadable."""
    try:
        st.image(image_bytes(path, index, size, square), **image_kwargs)
        return True
    except PathRefusedError as exc:
        st.error(f"Refused: {exc.detail}.")
    except ImageDecodeError as exc:
        st.warning(f"Cannot show {os.path.basename(path)}: {exc.reason}.")
    return False


def result_grid(
    results: Sequence[Any],
    index: Any,
    key: str,
    on_open: str | None = None,
    on_feedback: Callable[[str, int], None] | None = None,
) -> None:
    """Thumbnails in a wrapping row of cards; "Open" stores the path in ``st.session_state[on_open]``.

    The cards have a fixed width and wrap, so the grid reflows with the window size. With
    ``on_feedback``, "More like this" / "Less like this" call it with the path and +1 / -1.
    """
    with st.container(horizontal=True, wrap=True, key=f"{key}-grid", gap="small"):
        for i, result in enumerate(results):
            with st.container(width=CARD_WIDTH, border=True, key=f"{key}-card-{i}"):
                show_image(result.path, index, 320, square=True, width="stretch")
                st.caption(f"**{os.path.basename(result.path)}**  \n{format_score(result)}")
                if on_open:
                    st.button(
                        "Open", key=f"{key}-open-{i}", on_click=_select, args=(on_open, result.path), width="stretch"
                    )
                if on_feedback:
                    st.button(
                        "More like this",
                        key=f"{key}-like-{i}",
                        icon=":material/add:",
                        on_click=on_feedback,
                        args=(result.path, 1),
                        width="stretch",
                    )
                    st.button(
                        "Less like this",
                        key=f"{key}-unlike-{i}",
                        icon=":material/remove:",
                        on_click=on_feedback,
                        args=(result.path, -1),
                        width="stretch",
                    )


def _select(state_key: str, path: str) -> None:
    st.session_state[state_key] = path


def _plain(value: Any) -> str:
    if isinstance(value, (datetime, date)):
        return value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat()
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)


def metadata_rows(metadata: dict[str, Any]) -> list[tuple[str, str]]:
    """The metadata as (field, text) rows: the usual fields first, then the rest, skipping blanks."""
    metadata = dict(metadata)
    if isinstance(metadata.get("mtime"), (int, float)):
        metadata["modified"] = datetime.fromtimestamp(metadata["mtime"], tz=timezone.utc).replace(microsecond=0)
    rest = sorted(k for k in metadata if k not in DETAIL_FIELDS and k not in HIDDEN_FIELDS)
    order = [f for f in DETAIL_FIELDS if f in metadata] + rest
    rows = [(name, _plain(metadata[name])) for name in order]
    return [(name, text) for name, text in rows if text]


def detail_panel(path: str, metadata: dict[str, Any], index: Any, state_key: str, more_key: str) -> None:
    """The large view of the photo in ``st.session_state[state_key]``, with its metadata.

    "Similar photos" moves the path to ``st.session_state[more_key]``; "Close" clears the view.
    """
    with st.container(border=True, key=f"{state_key}-detail"):
        left, right = st.columns([3, 2])
        with left:
            shown = show_image(path, index, LARGE_SIZE, width="stretch")
        with right:
            st.subheader(os.path.basename(path))
            rows = metadata_rows({"path": path, **metadata})
            st.table(pd.DataFrame(rows, columns=["field", "value"]).set_index("field"))
            text_found(metadata)
            st.button(
                "Similar photos",
                key=f"{state_key}-more",
                type="primary",
                disabled=not shown,
                on_click=_more_like_this,
                args=(state_key, more_key, path),
            )
            st.button("Close", key=f"{state_key}-close", on_click=_close, args=(state_key,))


def text_found(metadata: dict[str, Any]) -> None:
    """The text that OCR read in the photo, with its confidence (nothing when the index reads no text)."""
    text, confidence = metadata.get("ocr_text"), metadata.get("ocr_confidence")
    if text is None:
        return
    st.markdown("**Text found**")
    if text:
        st.code(text, language=None)
        if confidence is not None:
            st.caption(f"OCR confidence {confidence:.0%}")
    else:
        st.caption("No text in this photo.")


def _more_like_this(state_key: str, more_key: str, path: str) -> None:
    st.session_state[more_key] = path
    _close(state_key)


def _close(state_key: str) -> None:
    st.session_state.pop(state_key, None)
    st.query_params.pop("open", None)


def score_chart(labels: Sequence[str], values: Sequence[float], value_name: str, label_name: str = "text") -> None:
    """A horizontal bar chart, best first, plus the numbers as a table for reading off."""
    frame = pd.DataFrame({label_name: list(labels), value_name: [float(v) for v in values]})
    st.bar_chart(frame, x=label_name, y=value_name, horizontal=True, sort=f"-{value_name}")
    st.dataframe(frame, hide_index=True, width="stretch")


def image_from_upload(uploaded: UploadedFileLike | None, limits: UploadLimits) -> Image.Image | None:
    """The decoded upload, or None (with a clear error message shown) when it is not a usable image."""
    if uploaded is None:
        return None
    try:
        return decode_upload(uploaded.getvalue(), uploaded.name, limits)
    except ImageDecodeError as exc:
        st.error(describe_decode_error(exc))
        return None


def image_uploader(
    label: str, key: str, limits: UploadLimits, on_change: Callable[[], None] | None = None
) -> Image.Image | None:
    uploaded = st.file_uploader(
        label, type=UPLOAD_TYPES, key=key, on_change=on_change, help=f"Up to {limits.max_bytes / 2**20:.0f} MiB"
    )
    return image_from_upload(uploaded, limits)
