"""Compare page: one query against two indexes (built with different models), side by side."""

from __future__ import annotations

import time

import streamlit as st

from retrieval.errors import RetrievalError

from ..components import result_grid
from ..config import AppConfig
from .common import open_or_explain


def render(config: AppConfig) -> None:
    st.title("Compare indexes")
    dirs = [str(d) for d in config.index_dirs]
    if len(dirs) < 2:
        st.info(
            "Comparing needs two indexes. Start the app with two of them, for example "
            "`python -m ui --index DIR_A --index DIR_B`."
        )
        return
    query = st.text_input("Query for both indexes", key="compare_query", placeholder="a red car")
    k = st.slider("Results per index", 1, 50, 12, key="compare_k")
    columns = st.columns(2)
    for side, (column, default) in enumerate(zip(columns, (0, 1))):
        with column:
            chosen = st.selectbox("Index", dirs, index=default, key=f"compare_index_{side}")
            index = open_or_explain(chosen, config)
            if index is None:
                continue
            manifest = index.manifest
            st.caption(f"model `{manifest.model_spec}` · {manifest.count:,} photos · {manifest.index_type}")
            if not query.strip():
                continue
            if len(index) == 0:
                st.warning("This index is empty.")
                continue
            try:
                start = time.perf_counter()
                results = index.search(query, k)
                elapsed = time.perf_counter() - start
            except RetrievalError as exc:
                st.error(f"Search failed: {exc}")
                continue
            if not results:
                st.warning("No match in this index.")
                continue
            st.caption(f"{len(results)} results in {elapsed * 1000:.0f} ms")
            result_grid(results, index, key=f"compare-{side}")
