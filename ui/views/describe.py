"""Describe page: image -> text. Rank a gallery of captions or labels for one image."""

from __future__ import annotations

import streamlit as st

from retrieval.errors import RetrievalError

from ..components import score_chart
from ..config import AppConfig
from ..safety import UploadLimits
from .common import require_main_index
from .pickers import pick_images

EXAMPLE_TEXTS = "a dog\na cat\na person on a bicycle\na bowl of food\na city street at night\na mountain landscape"


def gallery_texts() -> list[str]:
    """The texts to rank: pasted lines, or an uploaded text file (one caption or label per line)."""
    pasted = st.text_area("Texts to rank (one per line)", EXAMPLE_TEXTS, height=180, key="describe_texts")
    uploaded = st.file_uploader("…or upload a text file", type=["txt", "csv"], key="describe_file")
    raw = pasted
    if uploaded is not None:
        try:
            raw = uploaded.getvalue().decode("utf-8")
        except UnicodeDecodeError:
            st.error(f"{uploaded.name} is not UTF-8 text; using the pasted texts.")
    seen: dict[str, None] = {}
    for line in raw.splitlines():
        if line.strip():
            seen.setdefault(line.strip(), None)
    return list(seen)


def render(config: AppConfig) -> None:
    index = require_main_index(config)
    st.title("Describe a photo")
    left, right = st.columns([2, 3])
    with left:
        picked = pick_images(index, "describe", UploadLimits(max_bytes=config.max_upload_bytes), multiple=False)
        if picked:
            st.image(picked[0][1], caption=picked[0][0], width="stretch")
    with right:
        texts = gallery_texts()
        k = len(texts)
        if len(texts) > 1:
            k = st.slider("Texts to show", 1, min(50, len(texts)), min(10, len(texts)), key="describe_k")
    if not picked:
        st.info("Choose an image to describe.")
        return
    if not texts:
        st.warning("Enter at least one text to rank.")
        return
    try:
        ranked = index.describe(picked[0][1], texts, k=k)
    except RetrievalError as exc:
        st.error(f"Could not describe the image: {exc}")
        return
    with right:
        st.subheader("Best matching texts")
        use_relevance = all(r.relevance is not None for r in ranked)
        values = [r.relevance if use_relevance else r.score for r in ranked]
        score_chart([r.text for r in ranked], values, "relevance" if use_relevance else "score")
