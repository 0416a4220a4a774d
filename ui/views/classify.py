"""Classify page: zero-shot labels for chosen photos, with a prompt template set."""

from __future__ import annotations

import streamlit as st

from retrieval.errors import RetrievalError

from ..components import score_chart
from ..config import AppConfig
from ..safety import UploadLimits
from .common import require_main_index
from .pickers import pick_images

CUSTOM = "Custom…"
EXAMPLE_LABELS = "dog, cat, car, bird, flower, person"


def choose_templates() -> str | list[str]:
    """A shipped template set name, or custom templates typed by the user (each with one ``{}``)."""
    from retrieval.zeroshot.prompts import DEFAULT_TEMPLATES, list_template_sets

    sets = list_template_sets()
    default = sets.index(DEFAULT_TEMPLATES) if DEFAULT_TEMPLATES in sets else 0
    choice = st.selectbox("Prompt templates", [*sets, CUSTOM], index=default, key="classify_template_set")
    if choice != CUSTOM:
        return choice
    text = st.text_area(
        "Templates (one per line, `{}` is replaced by the label)", "a photo of a {}.", key="classify_templates"
    )
    return [line.strip() for line in text.splitlines() if line.strip()]


def render(config: AppConfig) -> None:
    from retrieval.zeroshot.classify import classify, parse_labels

    index = require_main_index(config)
    st.title("Classify photos")
    labels_text = st.text_area("Labels (comma-separated or one per line)", EXAMPLE_LABELS, key="classify_labels")
    templates = choose_templates()
    reject = st.checkbox(
        'Allow "none of these" (needs a calibration for the model)', value=False, key="classify_reject"
    )
    images = pick_images(index, "classify", UploadLimits(max_bytes=config.max_upload_bytes), multiple=True)
    if not images:
        st.info("Choose one or more images to classify.")
        return
    try:
        labels = parse_labels(labels_text)
        k = min(5, len(labels))
        predictions = classify([img for _, img in images], labels, templates, k, model=index.encoder, reject=reject)
    except RetrievalError as exc:
        st.error(f"Could not classify: {exc}")
        return
    for (name, image), preds in zip(images, predictions):
        with st.container(border=True):
            left, right = st.columns([1, 3])
            left.image(image, caption=name, width="stretch")
            with right:
                if not preds:
                    st.warning("None of these labels fits this image well enough.")
                    continue
                st.markdown(f"**{preds[0].label}** ({preds[0].probability:.0%})")
                score_chart([p.label for p in preds], [p.probability for p in preds], "probability", "label")
