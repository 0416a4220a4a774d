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


def _write_corpus(root) -> None:
    from PIL import Image

    images = root / "images"
    images.mkdir()
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    rows = ["image,caption,split"]
    for name, rgb in colours.items():
        Image.new("RGB", (40, 30), rgb).save(images / f"{name}.jpg")
        rows += [f"{name}.jpg,a {name} square,test", f"{name}.jpg,something {name},test"]
    Image.new("RGB", (40, 30), (0, 0, 0)).save(images / "black.jpg")
    rows.append("black.jpg,a black square,train")
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    cls = root / "labelled"
    (cls / "images").mkdir(parents=True)
    (cls / "classes.txt").write_text("red\nblue\n")
    lines = ["image,label"]
    for i, (label, rgb) in enumerate([("red", (230, 20, 20)), ("blue", (20, 20, 230)), ("red", (200, 40, 40))]):
        Image.new("RGB", (32, 32), rgb).save(cls / "images" / f"{i}.png")
        lines.append(f"{i}.png,{label}")
    (cls / "labels.csv").write_text("\n".join(lines) + "\n")


def _run_cli(*args: str, in_process: bool = True):
    """``python -m train.evaluate``: its ``main`` in this process, or a real process for the end-to-end run."""
    import subprocess
    import sys
    from pathlib import Path

    from .conftest import run_main

    if in_process:
        return run_main("train.evaluate", *args, check=False)
    repo = Path(__file__).resolve().parents[1]
    return subprocess.run(
        [sys.executable, "-m", "train.evaluate", *args], cwd=repo, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_evaluate_cli_end_to_end_with_tiny_model(tmp_path) -> None:
    import json

    _write_corpus(tmp_path)
    out = tmp_path / "scores.json"
    proc = _run_cli(
        "--model",
        "tiny-clip",
        "--pairs",
        str(tmp_path / "pairs.csv"),
        "--split",
        "test",
        "--zero-shot",
        str(tmp_path / "labelled"),
        "--templates",
        "single,photo",
        "--json-out",
        str(out),
        in_process=False,
    )
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == printed
    for direction in ("text_to_image", "image_to_text"):
        r = printed[direction]
        assert set(r) == {"R@1", "R@5", "R@10"}
        assert 0.0 <= r["R@1"] <= r["R@5"] <= r["R@10"]
        assert r["R@5"] == 100.0  # only 3 test images: everything is in the top 5
    zs = printed["zero_shot"]
    assert zs["n_images"] == 3 and zs["templates"] == "single"
    assert set(zs["by_templates"]) == {"single", "photo"}
    assert zs["top5"] == 100.0
    assert any(zs["top1"] == pytest.approx(100 * k / 3) for k in range(4))
    assert set(zs["per_class"]) == {"red", "blue"}


def test_evaluate_cli_reports_missing_pairs_file(tmp_path) -> None:
    proc = _run_cli("--model", "tiny-clip", "--pairs", str(tmp_path / "nope.csv"))
    assert proc.returncode == 2
    assert "not found" in proc.stderr


def test_evaluate_cli_says_in_one_line_which_image_is_missing_or_broken_or_which_model_a_file_holds(tmp_path) -> None:
    _write_corpus(tmp_path)
    pairs = str(tmp_path / "pairs.csv")
    wrong_root = _run_cli("--model", "tiny-clip", "--pairs", pairs, "--image-root", str(tmp_path))
    assert wrong_root.returncode == 2 and "Traceback" not in wrong_root.stderr
    assert wrong_root.stderr.strip() == (
        f"error: {tmp_path / 'red.jpg'}: not found (3 of the 3 images are missing; "
        "is --image-root the folder that holds them?)"
    )

    (tmp_path / "images" / "green.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    broken = _run_cli("--model", "tiny-clip", "--pairs", pairs)  # images/ next to pairs.csv: found without --image-root
    assert broken.returncode == 2 and "Traceback" not in broken.stderr, broken.stderr[-2000:]
    assert (
        broken.stderr.strip()
        .splitlines()[-1]
        .startswith(  # after the progress bar
            f"error: cannot evaluate on an image that does not decode: {tmp_path / 'images' / 'green.jpg'}: truncated"
        )
    )

    import torch

    from retrieval import create_model

    weights = tmp_path / "model.pt"
    torch.save(
        {"state_dict": create_model("tiny-clip", device="cpu").model.state_dict(), "meta": {"arch": "tiny-clip"}},
        weights,
    )
    other = _run_cli("--model", f"mini-rn-clip:{weights}", "--pairs", pairs)
    assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1, other.stderr[-2000:]
    assert other.stderr.startswith(f"error: {weights} does not fit the mini-rn-clip architecture: of its tensors, ")
    assert other.stderr.strip().endswith(f"it was trained as tiny-clip: use tiny-clip:{weights}")
