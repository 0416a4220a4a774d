"""Zero-shot classification with the tiny random model: templates, ensembling, caching, CLI."""

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

from retrieval.errors import CalibrationError, ImageDecodeError, InvalidQueryError
from retrieval.zeroshot.classify import ZeroShotClassifier, classify, parse_labels
from retrieval.zeroshot.prompts import get_templates, list_template_sets
from retrieval.zeroshot.relevance import NoMatchCalibration

from .conftest import run_main

REPO = Path(__file__).resolve().parents[1]
LABELS = ["cat", "dog", "car", "tree"]


pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture(scope="module")
def encoder(tiny_encoder):
    return tiny_encoder


def _images(folder: Path, n: int = 6) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 255, size=(40 + i, 48, 3), dtype=np.uint8)
        p = folder / f"img{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def test_template_sets_ship_as_data():
    assert {"single", "clip80", "photo", "tuned"} <= set(list_template_sets())
    assert get_templates("single") == ["a photo of a {}."]
    clip80 = get_templates("clip80")
    assert len(clip80) == 80 and len(set(clip80)) == 80
    assert all(t.count("{}") == 1 for t in clip80 + get_templates("photo") + get_templates("tuned"))
    assert get_templates(None) == get_templates("tuned")


@pytest.mark.parametrize("command", [["retrieval", "classify"], ["indexer", "tag"]])
def test_templates_help_names_the_real_default_and_every_set(command):
    """The flag's help is built from the shipped sets (it once said "default photo" after the default became tuned)."""
    from retrieval.zeroshot.prompts import DEFAULT_TEMPLATES

    out = " ".join(run_main(*command, "--help").stdout.split())
    help_text = out.split("--templates TEMPLATES ", 1)[1].split(" --", 1)[0]
    assert help_text.endswith(f"default {DEFAULT_TEMPLATES}") and all(
        name in help_text for name in list_template_sets()
    )


def test_templates_from_file_list_and_errors(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("# my prompts\na picture of {}\n\nart of a {}.\n")
    assert get_templates(str(f)) == ["a picture of {}", "art of a {}."]
    assert get_templates(["x {} y"]) == ["x {} y"]
    assert get_templates("a shot of a {}") == ["a shot of a {}"]
    with pytest.raises(InvalidQueryError):
        get_templates("no-such-set")
    with pytest.raises(InvalidQueryError):
        get_templates(["no placeholder"])
    with pytest.raises(InvalidQueryError):
        get_templates([])


def test_labels_parsing():
    assert parse_labels(" cat, dog ,car ") == ["cat", "dog", "car"]
    assert parse_labels("# pets\ncat\ndog\n\n") == ["cat", "dog"]
    with pytest.raises(InvalidQueryError):
        parse_labels("cat,cat")
    with pytest.raises(InvalidQueryError):
        parse_labels(" , ")
    with pytest.raises(InvalidQueryError, match=r"duplicate labels \(case does not count\): Cat, cat"):
        parse_labels("cat,Cat,dog")  # the text towers lowercase: the same label twice, 50% each


def test_class_embeddings_are_the_renormalised_template_average(encoder):
    templates = ["a photo of a {}.", "a drawing of a {}.", "{} in the wild"]
    clf = ZeroShotClassifier(encoder, LABELS, templates, no_match=None)
    emb = clf.class_embeddings
    assert emb.shape == (len(LABELS), encoder.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    dog = encoder.encode_texts([t.format("dog") for t in templates]).mean(axis=0)
    np.testing.assert_allclose(emb[1], dog / np.linalg.norm(dog), atol=1e-5)
    single = ZeroShotClassifier(encoder, LABELS, "single", no_match=None).class_embeddings
    assert not np.allclose(single, emb)


def test_predict_ranks_by_probability_and_matches_softmax(encoder, tmp_path):
    paths = _images(tmp_path / "imgs")
    clf = ZeroShotClassifier(encoder, LABELS, no_match=None)
    preds = clf.predict(paths, k=10)
    assert len(preds) == len(paths)
    emb = encoder.encode_images([Image.open(p) for p in paths])
    scores = emb @ clf.class_embeddings.T
    for i, row in enumerate(preds):
        assert [p.label for p in row] == [LABELS[j] for j in np.argsort(-scores[i])]
        assert sum(p.probability for p in row) == pytest.approx(1.0, abs=1e-5)
        z = np.exp(encoder.logit_scale * (scores[i] - scores[i].max()))
        assert row[0].probability == pytest.approx(float(z.max() / z.sum()), rel=1e-4)
        assert row[0].score == pytest.approx(float(scores[i].max()), abs=1e-5)
    assert [[p.label for p in r] for r in clf.predict(emb, k=2)] == [[p.label for p in r[:2]] for r in preds]


def test_each_class_embedding_is_classified_as_itself(encoder):
    clf = ZeroShotClassifier(encoder, LABELS, "clip80", no_match=None)
    top = [row[0].label for row in clf.predict(clf.class_embeddings, k=1)]
    assert top == LABELS


def test_disk_cache_is_reused_and_survives_damage(encoder, tmp_path):
    cache = tmp_path / "emb-cache"
    first = ZeroShotClassifier(encoder, LABELS, "photo", cache_dir=cache, no_match=None)
    emb = first.class_embeddings
    files = list((cache / "class_embeddings").glob("*.npy"))
    assert len(files) == 1
    again = ZeroShotClassifier(encoder, LABELS, "photo", cache_dir=cache, no_match=None)
    np.testing.assert_array_equal(again.class_embeddings, emb)
    other = ZeroShotClassifier(encoder, LABELS[:2], "photo", cache_dir=cache, no_match=None)
    assert other.cache_key != first.cache_key
    files[0].write_bytes(b"garbage")
    rebuilt = ZeroShotClassifier(encoder, LABELS, "photo", cache_dir=cache, no_match=None)
    np.testing.assert_allclose(rebuilt.class_embeddings, emb, atol=1e-6)


def test_no_match_threshold_gives_empty_predictions(encoder, tmp_path):
    paths = _images(tmp_path / "imgs")
    plain = ZeroShotClassifier(encoder, LABELS, no_match=None)
    best = np.array([r[0].score for r in plain.predict(paths, k=1)])
    cut = float(np.median(best))
    cal = NoMatchCalibration(encoder.fingerprint, threshold=cut, statistic="score")
    clf = ZeroShotClassifier(encoder, LABELS, no_match=cal)
    rejected = [not r for r in clf.predict(paths, k=3)]
    assert rejected == list(best < cut) and any(rejected) and not all(rejected)
    assert all(clf.predict(paths, k=3, reject=False))
    with pytest.raises(CalibrationError):
        ZeroShotClassifier(encoder, LABELS, no_match=NoMatchCalibration("other/weights", 0.5))


def test_classify_accepts_paths_and_images_and_raises_on_bad_files(encoder, tmp_path):
    paths = _images(tmp_path / "imgs", n=2)
    by_path = classify(paths, LABELS, k=2, model=encoder)
    by_image = classify([Image.open(p) for p in paths], LABELS, k=2, model=encoder)
    assert [[p.label for p in r] for r in by_path] == [[p.label for p in r] for r in by_image]
    assert all(len(r) == 2 for r in by_path)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(ImageDecodeError):
        classify([bad], LABELS, model=encoder)
    with pytest.raises(InvalidQueryError):
        classify(paths, LABELS, k=0, model=encoder)


def _cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RETRIEVAL_CACHE_DIR": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "retrieval", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )


def test_cli_json_output_and_usage_errors(tmp_path, capsys):
    from retrieval.__main__ import main

    paths = _images(tmp_path / "photos", n=2)
    assert (
        main(["classify", *map(str, paths), "--labels", "cat,dog,car", "--model", "tiny-clip", "-k", "2", "--json"])
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert [d["path"] for d in doc] == [str(p) for p in paths]
    assert all(len(d["predictions"]) == 2 and d["predictions"][0]["label"] in {"cat", "dog", "car"} for d in doc)
    assert all(d["predictions"][0]["probability"] >= d["predictions"][1]["probability"] for d in doc)
    assert main(["classify", str(paths[0]), "--model", "tiny-clip"]) == 2
    assert "--labels" in capsys.readouterr().err
    assert main(["classify", str(paths[0]), "--labels", "a,b", "--templates", "nope", "--model", "tiny-clip"]) == 2
    capsys.readouterr()

    assert main(["classify", str(paths[0]), "--labels", "airplane", "--model", "tiny-clip"]) == 2
    assert "one label ('airplane') would score 100% on any image" in capsys.readouterr().err
    assert main(["classify", str(paths[0]), "--labels", "", "--model", "tiny-clip"]) == 2
    assert "labels must be a non-empty list" in capsys.readouterr().err
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffdog\ncat\n".encode("utf-8"))  # a byte-order mark, as Windows editors write
    assert main(["classify", str(paths[0]), "--labels-file", str(bom), "--model", "tiny-clip", "--json"]) == 0
    assert {p["label"] for p in json.loads(capsys.readouterr().out)[0]["predictions"]} == {"dog", "cat"}
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\nth\xe9\n".encode("latin-1"))
    assert main(["classify", str(paths[0]), "--labels-file", str(latin), "--model", "tiny-clip"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: labels file {latin} is not UTF-8 text (byte 0xe9 at offset 3); save it as UTF-8"
    )


@pytest.mark.slow
def test_cli_folder_to_csv_skips_corrupt_files(tmp_path):
    _images(tmp_path / "photos", n=3)
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("cat\ndog\ncar\n")
    out_csv = tmp_path / "out.csv"
    out = _cli(
        "classify",
        "--folder",
        str(tmp_path / "photos"),
        "--labels-file",
        str(labels_file),
        "--model",
        "tiny-clip",
        "-k",
        "1",
        "--csv",
        str(out_csv),
        cache=tmp_path / "c",
    )
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 4
    broken = [r for r in rows if r["path"].endswith("broken.jpg")]
    assert broken and broken[0]["error"] in {"corrupt", "truncated", "not_an_image"}
    assert all(r["label"] in {"cat", "dog", "car"} for r in rows if r is not broken[0])
    assert "skipped 1 unreadable" in out.stderr


@pytest.mark.slow
def test_a_cache_folder_that_cannot_be_written_costs_a_warning_not_the_answer(tmp_path):
    """A read-only or misconfigured RETRIEVAL_CACHE_DIR (here a plain file) must not stop a classification."""
    paths = _images(tmp_path / "photos", n=1)
    not_a_folder = tmp_path / "cache-is-a-file"
    not_a_folder.write_text("oops")
    done = _cli("classify", str(paths[0]), "--labels", "cat,dog", "--model", "tiny-clip", "--json", cache=not_a_folder)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)[0]["predictions"][0]["label"] in {"cat", "dog"}
    warned = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 1 and "could not cache the label embeddings" in warned[0] and "Traceback" not in done.stderr
    assert not_a_folder.read_text() == "oops"
