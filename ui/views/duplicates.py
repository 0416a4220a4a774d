"""Duplicates page: groups of near-duplicate photos in the index, the one to keep first."""

from __future__ import annotations

import os

import streamlit as st

from retrieval.duplicates.groups import DEFAULT_THRESHOLD
from retrieval.units import format_bytes

from ..components import CARD_WIDTH, show_image
from ..config import AppConfig
from ..resources import duplicate_groups, index_generation
from .common import require_main_index

MAX_GROUPS = 50
FLOOR = 0.80  # the slider's lowest value: pairs are searched once at this threshold


def render(config: AppConfig) -> None:
    index = require_main_index(config)
    st.title("Near-duplicates")
    threshold = st.slider(
        "Similarity threshold",
        min_value=FLOOR,
        max_value=1.0,
        value=DEFAULT_THRESHOLD,
        step=0.01,
        key="dup_threshold",
        help="Cosine at or above which two photos count as copies of one. Higher finds fewer, closer copies; "
        "lower also finds different shots of one scene. Photos whose pixel fingerprints match (grayscale "
        "versions, mirror images) are grouped at any threshold.",
    )
    groups = duplicate_groups(index, index_generation(index), FLOOR, float(threshold))
    if not groups:
        st.info(f"No near-duplicates at {threshold:.2f}.")
        return
    photos = sum(len(g.rows) for g in groups)
    st.caption(
        f"{len(groups)} group{'s' if len(groups) > 1 else ''}, {photos} photos: keeping the first (largest) of each would set aside "
        f"{photos - len(groups)}."
    )
    for i, group in enumerate(groups[:MAX_GROUPS]):
        same = f", {group.identical_files} identical files" if group.identical_files else ""
        st.markdown(
            f"**Group {i + 1}**: {len(group.rows)} photos, similarity "
            f"{group.min_similarity:.3f}–{group.max_similarity:.3f}{same}"
        )
        with st.container(horizontal=True, wrap=True, key=f"dup-{i}", gap="small"):
            for j, meta in enumerate(group.metadata):
                with st.container(width=CARD_WIDTH, border=True, key=f"dup-{i}-{j}"):
                    show_image(meta["path"], index, 320, square=True, width="stretch")
                    mirrored = ("mirror image · " if meta["path"] in group.mirror_images else "") + (
                        "**missing from disk** · " if meta["path"] in group.missing else ""
                    )
                    st.caption(
                        f"**{os.path.basename(meta['path'])}**  \n{'keep · ' if j == 0 else ''}{mirrored}"
                        f"{meta['width']}x{meta['height']} · {format_bytes(meta['size'])}"
                    )
    if len(groups) > MAX_GROUPS:
        st.caption(
            f"Showing the first {MAX_GROUPS} of {len(groups)} groups; "
            "`python -m retrieval duplicates --json` lists them all."
        )
