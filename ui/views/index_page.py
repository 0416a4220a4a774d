"""Index page: what is in the index, which files failed and why, and an incremental update button."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from retrieval.errors import RetrievalError

from ..config import AppConfig
from .common import require_main_index


def show_overview(stats: Any) -> None:
    cols = st.columns(4)
    cols[0].metric("Photos", f"{stats.count:,}")
    cols[1].metric("Bad files", f"{stats.bad_count:,}")
    cols[2].metric("Embedding size", stats.embed_dim)
    cols[3].metric("Index type", stats.index_type or "-")
    types = ", ".join(f"{name}: {n:,}" for name, n in stats.file_types.items()) or "none"
    st.markdown(
        f"**Model:** `{stats.model_spec}` (weights `{stats.model_fingerprint}`)  \n"
        f"**Last build:** {stats.build_time or 'unknown'} (generation `{stats.generation}`)  \n"
        f"**File types:** {types}  \n"
        "**Folders:** " + ", ".join(f"`{r}`" for r in stats.roots)
    )


def show_bad_files(stats: Any) -> None:
    st.subheader(f"Files that could not be indexed ({len(stats.bad_files)})")
    if not stats.bad_files:
        st.caption("None: every image file was read.")
        return
    rows = [{"path": b.path, "reason": b.reason, "detail": b.detail} for b in stats.bad_files]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def run_update(index: Any) -> None:
    """Run ``indexer.update`` with a live progress bar, then switch the app to the new generation."""
    import indexer

    bar = st.progress(0.0, text="Looking for new, changed and deleted files…")

    def progress(done: int, total: int) -> None:
        bar.progress(
            min(1.0, done / total) if total else 1.0, text=f"Embedding {done:,} of {total:,} new or changed photos"
        )

    try:
        # Decode in this process: an incremental update is usually small, and forking the server is not worth it.
        report = indexer.update(index.path, indexer.BuildConfig(workers=0), progress=progress, encoder=index.encoder)
    except RetrievalError as exc:
        bar.empty()
        st.error(f"Update failed: {exc}")
        return
    bar.progress(1.0, text="Done")
    index.reload()
    st.cache_data.clear()
    st.success(
        f"Update finished: {report.embedded} embedded, {report.reused} reused, {report.removed} removed, "
        f"{report.unchanged} unchanged, {len(report.new_bad)} new bad files; {report.count:,} photos indexed."
    )
    for note in report.notices(shown=20):
        st.warning(note[:1].upper() + note[1:])


def render(config: AppConfig) -> None:
    import indexer

    index = require_main_index(config)
    st.title("Index")
    if st.button(
        "Update index now",
        type="primary",
        key="index_update",
        help="Index new and changed files in the indexed folders and drop deleted ones",
    ):
        run_update(index)
    try:
        stats = indexer.stats(index.path)
    except RetrievalError as exc:
        st.error(f"Cannot read the index statistics: {exc}")
        return
    show_overview(stats)
    show_bad_files(stats)
