"""The Streamlit app: ``python -m ui --index DIR`` runs this file with ``streamlit run``.

Settings come from the script arguments (after ``--``) or the environment; see
:mod:`ui.config`. Each page lives in :mod:`ui.views`.
"""

from __future__ import annotations

import sys

import streamlit as st

from ui.config import parse_app_args
from ui.views import classify, compare, describe, duplicates, index_page, search

PAGES = {
    "Search": search.render,
    "Describe": describe.render,
    "Classify": classify.render,
    "Duplicates": duplicates.render,
    "Index": index_page.render,
    "Compare": compare.render,
}


def main() -> None:
    st.set_page_config(page_title="Photo search", page_icon=":material/photo_library:", layout="wide")
    config = parse_app_args(sys.argv[1:])
    page = st.sidebar.radio("Page", list(PAGES), key="page", horizontal=False)
    PAGES[page](config)


main()
