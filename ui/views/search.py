"""Search page: text (query expressions), image or "more like this" queries, sidebar filters and sort,
a paged grid with relevance feedback ("more / less like this" add the photo to the query), a large view."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import date
from typing import Any

import streamlit as st

from retrieval.errors import RetrievalError
from retrieval.query.filters import explain_no_match
from retrieval.query.parse import Query as Expression
from retrieval.query.parse import Term
from retrieval.zeroshot.relevance import DEFAULT_MIN_RELEVANCE

from ..components import detail_panel, image_uploader, result_grid
from ..config import AppConfig
from ..resources import image_query_vector, index_facets, index_generation, query_vector
from ..safety import PathRefusedError, UploadLimits, resolve_indexed
from .common import require_main_index

SELECTED = "search_selected"
MORE_LIKE = "search_more_like"
ALL_FOLDERS = "All folders"
ANY_TAG = "Any tag"
PAGES = "search_pages"
SIGNATURE = "search_signature"
SORTS = {"Relevance": "relevance", "Newest first": "-date", "Oldest first": "date"}


@dataclass(frozen=True)
class SearchFilters:
    """The sidebar's filters, as keyword arguments for ``Index.search``."""

    folder: str | None = None
    date_from: date | None = None
    date_to: date | None = None
    file_types: tuple[str, ...] = ()
    tag: str | None = None
    contains: str | None = None  # words the photo's text (OCR) must hold

    @property
    def active(self) -> bool:
        return bool(self.folder or self.date_from or self.date_to or self.file_types or self.tag or self.contains)

    def as_kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("folder", "date_from", "date_to", "tag", "contains"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        if self.file_types:
            out["file_types"] = list(self.file_types)
        return out


@dataclass(frozen=True)
class Query:
    """What to search for: exactly one of text, an uploaded image, or an indexed path (more like this)."""

    text: str = ""
    image: Any = None
    image_digest: str = ""
    more_like: str | None = None

    @property
    def empty(self) -> bool:
        return not self.text.strip() and self.image is None and not self.more_like


def sidebar_filters(facets: dict[str, Any], has_text: bool = False) -> SearchFilters:
    side = st.sidebar
    side.header("Filters")
    folder = side.selectbox("Folder", [ALL_FOLDERS, *facets["folders"]], key="search_folder")
    date_from = date_to = None
    if facets["dates"] is not None:
        low, high = facets["dates"]
        if side.checkbox("Filter by date", key="search_use_dates"):
            picked = side.date_input("Taken between", value=(low, high), key="search_dates")
            picked = tuple(picked) if isinstance(picked, (list, tuple)) else (picked,)
            date_from = picked[0] if picked else None
            date_to = picked[1] if len(picked) > 1 else None
    else:
        side.caption("No capture dates in this index.")
    types = side.multiselect("File type", facets["file_types"], key="search_types")
    tag = ANY_TAG
    if facets["tags"]:
        tag = side.selectbox("Tag", [ANY_TAG, *facets["tags"]], key="search_tag")
    contains = ""
    if has_text:
        contains = side.text_input(
            "Text in the photo",
            key="search_contains",
            placeholder="EXIT 12",
            help="Only photos whose text (read by OCR) holds these words; "
            "spaces, case and an OCR slip in a long word do not matter",
        )
    else:
        side.caption("No text read in these photos: `python -m indexer ocr --index DIR` reads it.")
    return SearchFilters(
        folder=None if folder == ALL_FOLDERS else folder,
        date_from=date_from,
        date_to=date_to,
        file_types=tuple(types),
        tag=None if tag == ANY_TAG else tag,
        contains=contains.strip() or None,
    )


def run_query(
    index: Any,
    query: Query,
    k: int,
    filters: SearchFilters,
    min_relevance: float | None,
    sort: str = "relevance",
    offset: int = 0,
) -> list[Any]:
    kwargs: dict[str, Any] = {**filters.as_kwargs(), "sort": sort, "offset": offset}
    if query.more_like:
        return index.more_like_this(query.more_like, k, **kwargs)
    fingerprint = index.manifest.model_fingerprint
    if query.image is not None:
        return index.search(
            image_query_vector(index, fingerprint, query.image_digest, query.image), k, modality="image", **kwargs
        )
    text = query.text.strip() or '"' + (filters.contains or "").replace('"', "") + '"'  # a text filter alone: its words
    expression = Expression.parse(text)
    if expression.is_plain_text and not index.manifest.ocr:
        # the cached embedding: reruns (filters, sliders, "Open") do not re-encode it; with OCR text in the
        # index the query goes in as text, so photos whose text holds its words rank higher (hybrid)
        return index.search(
            query_vector(index, fingerprint, expression.terms[0].text or text),
            k,
            modality="text",
            min_relevance=min_relevance,
            **kwargs,
        )
    return index.search(expression, k, min_relevance=min_relevance, **kwargs)


def explain_empty(
    index: Any, query: Query, k: int, filters: SearchFilters, min_relevance: float | None, sort: str = "relevance"
) -> str:
    """Why a search found nothing: the relevance threshold or the filters (an empty index is caught earlier)."""
    if sort != "relevance" and min_relevance is None:
        min_relevance = DEFAULT_MIN_RELEVANCE
    if min_relevance is not None and run_query(index, query, k, filters, None):
        return (
            f"No photo is relevant enough: nothing scored above the minimum relevance of "
            f"{min_relevance:.0%}. Lower the slider to see weaker matches."
        )
    if filters.contains:
        return f'No photo\'s text holds "{filters.contains}".'
    if filters.active and run_query(index, query, k, SearchFilters(), min_relevance):
        why = explain_no_match(index.reader.metadata, **filters.as_kwargs())
        if why:
            return f"The filters leave nothing to search: {why}."
        return "The filters excluded every match. Widen the folder, date, file type or tag filters."
    return "No match found for this query."


def add_feedback(path: str, sign: int) -> None:
    """ "More / less like this": the photo joins the query in the search box as a + or - image term."""
    text = str(st.session_state.get("search_query", "")).strip()
    term = Term(1.0, image=path)
    try:
        base = Expression.parse(text) if text else None
        query = (
            Expression((Term(float(sign), image=path),))
            if base is None
            else (base.plus(term) if sign > 0 else base.minus(term))
        )
        st.session_state["search_query"] = str(query)
    except RetrievalError:  # the box holds an expression that does not parse: append, and let it say where
        st.session_state["search_query"] = f"{text} {'+' if sign > 0 else '-'} {term}"
    st.session_state[PAGES] = 1
    _clear_more_like()


def _more_results() -> None:
    st.session_state[PAGES] = st.session_state.get(PAGES, 1) + 1


def _clear_more_like() -> None:
    st.session_state.pop(MORE_LIKE, None)


def read_query(limits: UploadLimits) -> Query:
    st.text_input(
        "Search your photos",
        key="search_query",
        placeholder="a dog running on the beach",
        on_change=_clear_more_like,
        help="Add and subtract terms with a spaced + or -: `dog + beach - people`, weights as "
        "`2:sunset + 0.5:city`, photos as `@path/to/photo.jpg`; quote a term to take it literally.",
    )
    with st.expander("Search by image", expanded=False):
        image = image_uploader(
            "Upload a photo to find similar ones", "search_upload", limits, on_change=_clear_more_like
        )
    upload = st.session_state.get("search_upload")
    digest = hashlib.sha256(upload.getvalue()).hexdigest() if upload is not None and image is not None else ""
    more_like = st.session_state.get(MORE_LIKE)
    if more_like:
        left, right = st.columns([5, 1], vertical_alignment="center")
        left.info(f"Showing photos like **{more_like}**")
        right.button("Clear", key="search_clear_more", on_click=_clear_more_like)
        return Query(more_like=more_like)
    if image is not None:
        return Query(image=image, image_digest=digest)
    return Query(text=st.session_state.get("search_query", ""))


def selected_path() -> str | None:
    """The photo to show large: picked with "Open", or given in the URL as ``?open=PATH``."""
    from_url = st.query_params.get("open")
    if from_url and not st.session_state.get(SELECTED):
        st.session_state[SELECTED] = from_url
    return st.session_state.get(SELECTED)


def show_selected(index: Any, path: str) -> None:
    try:
        resolve_indexed(path, index)
    except PathRefusedError as exc:
        st.error(f"Refused to open `{path}`: {exc.detail}. Only photos in the index are shown.")
        st.session_state.pop(SELECTED, None)
        st.query_params.pop("open", None)
        return
    rows = index.reader.rows_for_paths([path])
    metadata = dict(index.reader.row(int(rows[0]))) if len(rows) and rows[0] >= 0 else {}
    detail_panel(path, metadata, index, SELECTED, MORE_LIKE)


def render(config: AppConfig) -> None:
    index = require_main_index(config)
    facets = index_facets(index, index_generation(index))
    filters = sidebar_filters(facets, bool(index.manifest.ocr))
    k = st.sidebar.slider("Number of results", 1, 100, 24, key="search_k")
    min_relevance = None
    sort = "relevance"
    if index.has_relevance:
        threshold = st.sidebar.slider(
            "Minimum relevance",
            0.0,
            1.0,
            0.0,
            0.05,
            key="search_min_relevance",
            help="Hide results the calibrated model thinks are unlikely to match",
        )
        min_relevance = threshold or None
        sort = SORTS[
            st.sidebar.selectbox(
                "Order",
                list(SORTS),
                key="search_sort",
                help="Date order shows the photos that match (relevance at least the "
                f"minimum, {DEFAULT_MIN_RELEVANCE:.0%} when it is 0), by capture time",
            )
        ]
    st.title("Photo search")
    query = read_query(UploadLimits(max_bytes=config.max_upload_bytes))
    path = selected_path()
    if path:
        show_selected(index, path)
    if len(index) == 0:
        st.warning(
            "The index is empty: no photos have been indexed yet (see the Index page).", icon=":material/search_off:"
        )
        return
    if query.empty and not filters.contains:
        st.caption(f"{len(index):,} photos indexed with `{index.manifest.model_spec}`. Type a query to start.")
        return
    signature = repr((query.text, query.image_digest, query.more_like, filters, k, min_relevance, sort))
    if st.session_state.get(SIGNATURE) != signature:
        st.session_state[SIGNATURE], st.session_state[PAGES] = signature, 1
    try:
        start = time.perf_counter()
        results, last = [], []
        for page in range(st.session_state.get(PAGES, 1)):
            last = run_query(index, query, k, filters, min_relevance, sort, offset=page * k)
            results += last
            if len(last) < k:
                break
        elapsed = time.perf_counter() - start
    except RetrievalError as exc:
        st.error(f"Search failed: {exc}")
        return
    if not results:
        st.warning(explain_empty(index, query, k, filters, min_relevance, sort), icon=":material/search_off:")
        return
    matched = getattr(last, "matched", None)
    counted = (
        ""
        if matched is None
        else (
            f" · {matched:,} matched (relevance at least {min_relevance or DEFAULT_MIN_RELEVANCE:.0%}), "
            f"{'newest' if sort == '-date' else 'oldest'} first"
        )
    )
    st.caption(f"{len(results)} results in {elapsed * 1000:.0f} ms{counted}")
    feedback = add_feedback if query.text and query.image is None and not query.more_like else None
    result_grid(results, index, key="results", on_open=SELECTED, on_feedback=feedback)
    if len(last) == k and (matched is None or len(results) < matched):
        st.button("More results", key="search_more_results", icon=":material/expand_more:", on_click=_more_results)
