"""Helpers shared by the pages: opening an index with a readable error instead of a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from retrieval.errors import IndexNotFoundError, RetrievalError

from ..config import AppConfig
from ..resources import load_index


def open_or_explain(path: Path | str, config: AppConfig) -> Any | None:
    """The cached index at ``path``, or None after showing why it could not be opened."""
    # --model is how the main index is queried; another index (Compare) is read with its own model
    model = config.model if Path(path) == config.main_index else None
    try:
        index = load_index(str(path), model)
        index.refresh()  # an update from the command line (or another app) published a new generation
        return index
    except RetrievalError as exc:
        st.error(f"Cannot open the index at `{path}`: {exc}")
        if isinstance(exc, IndexNotFoundError):
            st.info(
                "Build one with `python -m indexer build PHOTOS --index DIR`, then start the app with "
                "`python -m ui --index DIR`."
            )
        return None


def require_main_index(config: AppConfig) -> Any:
    """The main index; stops the page (after explaining) when there is none."""
    if config.main_index is None:
        st.error("No index configured. Start the app with `python -m ui --index DIR`.")
        st.stop()
    index = open_or_explain(config.main_index, config)
    if index is None:
        st.stop()
    return index
