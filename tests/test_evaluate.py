"""Retrieval metrics on hand-made embeddings, and the evaluate CLI end to end."""

from __future__ import annotations

import numpy as np
import pytest

from train.metrics import per_class_accuracy, recall_at_k, retrieval_ranks, topk_accuracy

IMAGES = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
CAPTIONS = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])
OWNER = [0, 0, 1, 2]


def test_ranks_on_hand_made_case() -> None:
    t2i, i2t = retrieval_ranks(IMAGES, CAPTIONS, OWNER)
    assert t2i.tolist() == [0, 1, 0, 2]
    assert i2t.tolist() == [0, 1, 2]


def test_recall_at_k_exact_values() -> None:
    scores = recall_at_k(IMAGES, CAPTIONS, OWNER, ks=(1, 2, 3))
    assert scores.text_to_image == {"R@1": 50.0, "R@2": 75.0, "R@3": 100.0}
    assert scores.image_to_text["R@1"] == pytest.approx(100 / 3)
    assert scores.image_to_text["R@2"] == pytest.approx(200 / 3)
    assert scores.image_to_text["R@3"] == 100.0


def test_recall_is_chunk_independent_and_perfect_on_identity() -> None:
    rng = np.random.default_rng(0)
    img = rng.normal(size=(50, 8))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    owner = np.repeat(np.arange(50), 3)
    txt = img[owner] + 1e-3 * rng.normal(size=(150, 8))
    a = retrieval_ranks(img, txt, owner, chunk=7)
    b = retrieval_ranks(img, txt, owner, chunk=1000)
    assert all(x.tolist() == y.tolist() for x, y in zip(a, b))
    assert recall_at_k(img, txt, owner).text_to_image["R@1"] == 100.0


def test_mapping_outside_images_is_rejected() -> None:
    with pytest.raises(ValueError):
        retrieval_ranks(IMAGES, CAPTIONS, [0, 0, 1, 3])


def test_topk_and_per_class_accuracy() -> None:
    logits = np.array([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1]])
    labels = [0, 1, 1, 2]
    assert topk_accuracy(logits, labels, ks=(1, 2)) == {"top1": 50.0, "top2": 75.0}
    assert per_class_accuracy(logits, labels, 3) == [100.0, 50.0, 0.0]
