"""Calibration: logistic relevance curve, no-match threshold fitting, file lookup by fingerprint."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.errors import CalibrationError
from retrieval.zeroshot.calibrate import (
    absent_concepts,
    fit_no_match,
    open_set_metrics,
    relevance_training_scores,
    relevance_weights,
)
from retrieval.zeroshot.classify import ZeroShotClassifier
from retrieval.zeroshot.relevance import (
    NO_MATCH,
    RELEVANCE,
    NoMatchCalibration,
    RelevanceCalibration,
    calibration_paths,
    fit_logistic,
    fit_threshold,
    load_no_match,
    load_relevance,
)

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture(scope="module")
def encoder(tiny_encoder):
    return tiny_encoder


def test_logistic_fit_recovers_the_generating_curve():
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.2, 0.6, size=20000)
    y = rng.random(x.size) < 1 / (1 + np.exp(-(12 * x - 3)))
    slope, intercept = fit_logistic(x, y)
    assert slope == pytest.approx(12, rel=0.1) and intercept == pytest.approx(-3, rel=0.1)
    with pytest.raises(CalibrationError):
        fit_logistic(x, np.zeros_like(x))
    with pytest.raises(CalibrationError):
        fit_logistic(x, x > 2)


def test_relevance_probability_is_monotone_and_invertible(tmp_path):
    cal = RelevanceCalibration("m/1", slope=20.0, intercept=-5.0)
    p = cal.probability(np.array([0.0, 0.2, 0.25, 0.3, 0.5]))
    assert p.dtype == np.float32 and np.all(np.diff(p) > 0)
    assert p[2] == pytest.approx(0.5)
    assert cal.score_for(0.9) == pytest.approx((np.log(9) + 5) / 20)
    loaded = RelevanceCalibration.load(cal.save(tmp_path / "r.json"), expect_fingerprint="m/1")
    assert loaded == cal
    with pytest.raises(CalibrationError):
        RelevanceCalibration.load(tmp_path / "r.json", expect_fingerprint="m/2")
    with pytest.raises(CalibrationError):
        NoMatchCalibration.load(tmp_path / "r.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CalibrationError):
        RelevanceCalibration.load(tmp_path / "bad.json")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(CalibrationError, match="cannot write the calibration file .*a-file/r.json"):
        cal.save(tmp_path / "a-file" / "r.json")  # its folder is a file: a typed error, no traceback


def test_relevance_training_pairs_never_use_the_own_image_as_negative():
    rng = np.random.default_rng(3)
    img = rng.normal(size=(5, 8)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    own = np.arange(5).repeat(2)
    txt = img[own]  # each caption is exactly its image: positives score 1, negatives < 1
    s, y = relevance_training_scores(txt, img, own, negatives=50)
    assert y.sum() == 10 and len(s) == 10 + 10 * 50
    np.testing.assert_allclose(s[y == 1], 1.0, atol=1e-5)
    assert s[y == 0].max() < 0.999


def test_absent_concepts_are_those_no_caption_mentions():
    captions = ["A dog runs on the beach .", "Two cats sleep", "a man rides a horse"]
    names = ["tabby cat", "golden retriever", "goldfish", "sea lion", "horse cart", "ox", "dogsled"]
    assert absent_concepts(captions, candidates=names) == ["golden retriever", "goldfish", "sea lion", "dogsled"]
    # words of an evaluation set stay out of the fit too; plural/singular forms count as mentions
    assert absent_concepts(captions, exclude_words=["lion"], candidates=names) == [
        "golden retriever",
        "goldfish",
        "dogsled",
    ]
    assert "tench" in absent_concepts(captions)  # default candidates: the ImageNet class names


def test_absent_queries_add_their_top_results_as_hard_negatives():
    rng = np.random.default_rng(4)
    img = rng.normal(size=(30, 8)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    own = np.arange(30)
    absent = img[:2] + 0.1  # two queries close to images 0 and 1
    s, y = relevance_training_scores(img, img, own, negatives=5, absent_emb=absent, absent_top=3)
    assert y.sum() == 30 and len(s) == 30 + 30 * 5 + 2 * 3
    hard = s[-6:].reshape(2, 3)
    for q, row in zip(absent, hard):  # each query's best three images, best last
        np.testing.assert_allclose(row, np.sort(img @ q)[-3:], atol=1e-6)
    w = relevance_weights(y, 5, 30)
    assert w[y == 1].sum() == pytest.approx(w[y == 0].sum())
    assert w[-6:].sum() == pytest.approx(3 * w[30 : 30 + 150].sum())  # hard negatives carry 3/4 of it
    even = relevance_weights(y, 5, 30, hard_share=0.5)
    assert even[30 : 30 + 150].sum() == pytest.approx(even[-6:].sum())
    plain = relevance_weights(y[: 30 + 150], 5, 30)
    assert plain[y[:180] == 1].sum() == pytest.approx(plain[y[:180] == 0].sum())


def test_threshold_fit_reaches_target_precision_with_max_coverage():
    stat = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    ok = np.array([1, 1, 0, 1, 1, 0, 0, 1], bool)
    fit = fit_threshold(stat, ok, 0.8)
    assert fit.threshold == 0.5 and fit.accepted == 5 and fit.precision == pytest.approx(0.8)
    assert fit.coverage == pytest.approx(5 / 8)
    assert fit_threshold(stat, ok, 1.0).threshold == 0.8
    with pytest.raises(CalibrationError):
        fit_threshold(stat, np.zeros(8, bool), 0.5)
    tied = fit_threshold(np.array([0.5, 0.5, 0.4]), np.array([1, 0, 1], bool), 0.6)
    assert tied.accepted == 3  # 0.5 tie cannot be split, so the cut goes below the tie


def test_open_set_metrics():
    m = open_set_metrics(accepted=[1, 1, 0, 1, 0], correct=[1, 0, 0, 0, 0], known=[1, 1, 1, 0, 0])
    assert m.precision == pytest.approx(1 / 3) and m.coverage == pytest.approx(3 / 5)
    assert m.known_coverage == pytest.approx(2 / 3) and m.unknown_rejected == pytest.approx(1 / 2)
    assert m.top1_known == pytest.approx(1 / 3) and (m.n_known, m.n_unknown) == (3, 2)


def test_fit_no_match_on_embeddings_and_lookup_by_fingerprint(encoder, tmp_path):
    labels = ["cat", "dog", "car"]
    clf = ZeroShotClassifier(encoder, labels, "single", no_match=None)
    # Known images: the class embeddings themselves, slightly perturbed; unknown: random vectors.
    rng = np.random.default_rng(0)
    known = clf.class_embeddings.repeat(4, axis=0) + 0.05 * rng.normal(size=(12, encoder.embed_dim))
    unknown = rng.normal(size=(12, encoder.embed_dim))
    emb = np.vstack([known, unknown]).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    truth = [lab for lab in labels for _ in range(4)] + ["zebra"] * 12
    result = fit_no_match(clf, emb, truth, target_precision=0.9)
    assert result.fit.precision >= 0.9 and result.metrics.precision >= 0.9
    assert result.calibration.fingerprint == encoder.fingerprint
    path = result.calibration.save(calibration_paths(encoder, NO_MATCH)[-1])
    assert load_no_match(encoder) == result.calibration
    auto = ZeroShotClassifier(encoder, labels, "single")
    accepted = [bool(r) for r in auto.predict(emb, k=1)]
    assert accepted == list(result.calibration.accepts(clf.scores(emb), clf.probabilities(emb)))
    assert sum(accepted[:12]) > sum(accepted[12:])

    data = json.loads(path.read_text())
    data["fingerprint"] = "tiny-clip/other-weights"
    path.write_text(json.dumps(data))
    assert load_no_match(encoder) is None  # fitted for other weights: ignored, not misapplied
    assert all(ZeroShotClassifier(encoder, labels, "single").predict(emb, k=1))


def test_load_relevance_ignores_foreign_fingerprints(encoder):
    target = calibration_paths(encoder, RELEVANCE)[-1]
    assert load_relevance(encoder) is None
    RelevanceCalibration("tiny-clip/other", 10.0, -2.0).save(target)
    assert load_relevance(encoder) is None
    mine = RelevanceCalibration(encoder.fingerprint, 10.0, -2.0, fitted_on={"captions": 3})
    mine.save(target)
    assert load_relevance(encoder) == mine


@pytest.mark.slow
def test_calibrate_cli_writes_a_threshold_that_classify_uses(encoder, tmp_path):
    labels = ["cat", "dog", "car"]
    folder = tmp_path / "labelled"
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(5)
    clf = ZeroShotClassifier(encoder, labels, no_match=None)
    rows = []
    for i in range(16):
        p = folder / "images" / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)).save(p)
        top = clf.predict([p], k=1)[0][0].label
        rows.append({"image": p.name, "label": top if i % 2 == 0 else "zebra"})  # half known and right
    with open(folder / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "label"])
        w.writeheader()
        w.writerows(rows)
    out_file = tmp_path / "nm.json"
    env = {**os.environ, "RETRIEVAL_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "retrieval",
            "calibrate",
            "--folder",
            str(folder),
            "--labels",
            ",".join(labels),
            "--model",
            "tiny-clip",
            "--target-precision",
            "0.5",
            "--output",
            str(out_file),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["written"] == str(out_file) and report["precision"] >= 0.5
    cal = NoMatchCalibration.load(out_file, expect_fingerprint=encoder.fingerprint)
    assert cal.fitted_on["labels"] == labels and cal.threshold == report["threshold"]
    accepted = [
        bool(r)
        for r in ZeroShotClassifier(encoder, labels, no_match=cal).predict(
            [folder / "images" / r["image"] for r in rows], k=1
        )
    ]
    assert sum(accepted) / len(rows) == pytest.approx(report["coverage"])
