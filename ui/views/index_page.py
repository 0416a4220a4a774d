"""Index page: what is in the index, which files failed and why, and an incremental update button."""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd
import streamlit as st

from retrieval.errors import RetrievalError

from ..config import AppConfig
from .common import require_main_index


def _as_dict(stats: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        return {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)}
    return dict(stats) if isinstance(stats, dict) else dict(vars(stats))


def show_overview(index: Any) -> None:
    manifest = index.manifest
    cols = st.columns(4)
    cols[0].metric("Photos", f"{manifest.count:,}")
    cols[1].metric("Bad files", f"{manifest.bad_count:,}")
    cols[2].metric("Embedding size", manifest.embed_dim)
    cols[3].metric("Index type", manifest.index_type or "-")
    st.markdown(f"**Model:** `{manifest.model_spec}`  \n**Last build:** {manifest.build_time or 'unknown'}  \n"
                f"**Folders:** " + ", ".join(f"`{r}`" for r in manifest.roots))


def show_bad_files(stats: dict[str, Any]) -> None:
    bad = stats.get("bad_files") or stats.get("bad") or []
    st.subheader(f"Files that could not be indexed ({len(bad)})")
    if not bad:
        st.caption("None.")
        return
    rows = [_as_dict(b) if not isinstance(b, (tuple, list)) else {"path": b[0], "reason": b[1]} for b in bad]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def run_update(config: AppConfig, index: Any) -> None:
    import indexer

    bar = st.progress(0.0, text="Looking for new, changed and deleted files…")

    def progress(done: int, total: int) -> None:
        fraction = done / total if total else 1.0
        bar.progress(min(1.0, fraction), text=f"Embedding {done:,} of {total:,} files")

    try:
        report = indexer.update(index.path, progress=progress)
    except RetrievalError as exc:
        bar.empty()
        st.error(f"Update failed: {exc}")
        return
    bar.progress(1.0, text="Done")
    index.reload()
    st.cache_data.clear()
    st.success(f"Update finished: {report}")


def render(config: AppConfig) -> None:
    index = require_main_index(config)
    st.title("Index")
    show_overview(index)
    try:
        import indexer

        stats = _as_dict(indexer.stats(index.path))
    except (RetrievalError, AttributeError, ImportError) as exc:
        st.warning(f"Detailed statistics are unavailable: {exc}")
        stats = {}
    show_bad_files(stats)
    st.divider()
    st.button("Update index now", type="primary", key="index_update",
              help="Index new and changed files in the indexed folders and drop deleted ones")
    if st.session_state.get("index_update"):
        run_update(config, index)
