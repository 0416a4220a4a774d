"""A text query from a fresh process: the exported text tower, no torch, the same answers.

The index is built with the built-in model (the build exports its text tower into a private
cache folder); the real ``python -m retrieval search`` command then runs in a new process,
and its imports and its output are compared with the full torch path's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, write_image

HEAVY = ("torch", "torchvision", "open_clip", "timm", "streamlit", "transformers")
QUERIES = ["a red square", "green grass", "a blue sky over the sea", "yellow", "Ein Café &amp; a crème brûlée"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fast_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A built-in-model index of seven real image files, and the cache folder its build exported into."""
    from indexer.api import build
    from indexer.config import BuildConfig

    root = tmp_path_factory.mktemp("cold")
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200), (90, 90, 90)]
    for i, color in enumerate(colors):
        write_image(root / "photos" / f"p{i}.jpg", size=(64, 48), color=color)
    cache = root / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETRIEVAL_CACHE_DIR", str(cache))
        report = build([root / "photos"], root / "index", BuildConfig(model="builtin", workers=0, device="cpu"))
    assert report.count == len(colors)
    return root / "index", cache


def _env(cache: Path, **extra: str) -> dict[str, str]:
    return dict(os.environ, RETRIEVAL_CACHE_DIR=str(cache), RETRIEVAL_DEVICE="cpu", PYTHONPATH=str(REPO), **extra)


def _search(index: Path, cache: Path, query: str, **env: str) -> tuple[list[dict], set[str]]:
    """Run the real command in a new process; return its JSON results and the modules it imported."""
    proc = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "retrieval",
            "search",
            query,
            "--index",
            str(index),
            "-k",
            "7",
            "--json",
        ],
        cwd=REPO,
        env=_env(cache, **env),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", proc.stderr, re.M))
    return json.loads(proc.stdout), imported


def test_the_build_exports_the_text_tower(fast_index: tuple[Path, Path]) -> None:
    _, cache = fast_index
    (folder,) = (cache / "text-onnx").iterdir()
    info = json.loads((folder / "text.json").read_text())
    assert info["spec"] == "builtin" and (folder / "text.onnx").is_file() and (folder / "text.onnx.data").is_file()


def test_a_text_query_imports_no_torch_and_answers_as_the_full_model(fast_index: tuple[Path, Path]) -> None:
    index, cache = fast_index
    fast, imported = _search(index, cache, "a red square")
    assert (
        "onnxruntime" in imported and "retrieval.query.search" in imported
    )  # the measurement sees the query's imports
    assert not {m.split(".")[0] for m in imported} & set(HEAVY), sorted(m for m in imported if m.split(".")[0] in HEAVY)
    full, imported_full = _search(index, cache, "a red square", RETRIEVAL_FAST_TEXT="0")
    assert "torch" in imported_full and "onnxruntime" not in imported_full
    assert [r["path"] for r in fast] == [r["path"] for r in full]
    np.testing.assert_allclose([r["score"] for r in fast], [r["score"] for r in full], atol=1e-4)
    np.testing.assert_allclose([r["relevance"] for r in fast], [r["relevance"] for r in full], atol=1e-4)


def test_the_fast_path_ranks_as_the_full_path(fast_index: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from retrieval.models import onnxtext
    from retrieval.query.search import open_index

    index, cache = fast_index
    monkeypatch.setenv("RETRIEVAL_CACHE_DIR", str(cache))
    fast, full = open_index(index), open_index(index, model="builtin", device="cpu")
    assert isinstance(fast._text_encoder(), onnxtext.OnnxTextEncoder)
    vectors = fast._text_encoder().encode_texts(QUERIES)
    np.testing.assert_allclose(vectors, full.encoder.encode_texts(QUERIES), atol=1e-4)
    for query in QUERIES:
        got, want = fast.search(query, k=7), full.search(query, k=7)
        assert [r.path for r in got] == [r.path for r in want], query
        np.testing.assert_allclose([r.score for r in got], [r.score for r in want], atol=1e-4)
    assert fast._encoder is None  # text queries never loaded the full model


def test_the_fast_path_steps_aside_when_it_cannot_be_trusted(
    fast_index: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from retrieval.models import onnxtext

    _, cache = fast_index
    monkeypatch.setenv("RETRIEVAL_CACHE_DIR", str(cache))
    (folder,) = (cache / "text-onnx").iterdir()
    fingerprint = json.loads((folder / "text.json").read_text())["fingerprint"]
    assert onnxtext.for_model("builtin", fingerprint) is not None
    assert onnxtext.for_model("builtin", "builtin/0123456789abcdef") is None  # no export for other weights
    monkeypatch.setenv("RETRIEVAL_FAST_TEXT", "0")
    assert onnxtext.for_model("builtin", fingerprint) is None
    monkeypatch.delenv("RETRIEVAL_FAST_TEXT")
    broken = folder.parent / "broken"
    broken.mkdir()
    (broken / "text.json").write_text(json.dumps({**json.loads((folder / "text.json").read_text())}))
    assert onnxtext.OnnxTextEncoder.load(broken) is None  # no graph beside it: the torch path answers


def test_import_retrieval_is_light_and_its_public_names_resolve() -> None:
    code = (
        f"import sys, retrieval; heavy = [m for m in {HEAVY!r} if m in sys.modules]; "
        "import retrieval.query.search, retrieval.zeroshot.classify; print(heavy, callable(retrieval.search), "
        "retrieval.search.__module__, retrieval.Index.__module__, retrieval.classify.__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.split()
    assert out == ["[]", "True", "retrieval.query.search", "retrieval.query.search", "classify"]


def test_a_build_loads_the_exported_image_tower_with_the_full_models_vectors(
    fast_index: tuple[Path, Path], tmp_path: Path
) -> None:
    """The first build exported both towers; the next imports no timm, torchvision, open_clip or
    transformers, and its vectors are the full model's."""
    from retrieval.index.reader import IndexReader
    from retrieval.models.factory import create_model

    index, cache = fast_index
    (exported,) = (cache / "image-onnx").iterdir()
    assert (cache / "text-onnx" / exported.name).is_dir()  # both towers, under the same weights' name
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "indexer", "build", str(index.parent / "photos")]
        + ["--index", str(tmp_path / "again"), "--workers", "0"],
        cwd=REPO,
        env=_env(cache),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = {m.split(".")[0] for m in re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", proc.stderr, re.M)}
    assert "onnxruntime" in imported and "torch" in imported  # the measurement sees the build's imports
    assert not imported & {"timm", "torchvision", "open_clip", "transformers"}, sorted(imported)
    assert "image tower export" not in proc.stdout and "text tower export" not in proc.stdout

    reader = IndexReader.open(tmp_path / "again")
    paths = reader.metadata.column("path").to_pylist()
    full = create_model("builtin", device="cpu")
    want = full.encode_images([Image.open(p) for p in paths])
    np.testing.assert_allclose(reader.vectors, want, atol=1e-4)


def test_an_image_only_encoder_builds_its_text_tower_once_when_asked(tmp_path: Path) -> None:
    from retrieval.models.factory import create_model

    image = create_model("builtin", device="cpu", towers="image")
    assert image.tokenizer is None and image.text_loader is not None
    full = create_model("builtin", device="cpu")
    assert (image.fingerprint, image.embed_dim) == (full.fingerprint, full.embed_dim)
    photo = write_image(tmp_path / "a.jpg", size=(80, 60), color=(120, 40, 200))
    np.testing.assert_allclose(
        image.encode_images([Image.open(photo)]), full.encode_images([Image.open(photo)]), atol=1e-4
    )
    np.testing.assert_allclose(image.encode_texts(QUERIES), full.encode_texts(QUERIES), atol=1e-5)
    assert image.with_text() is image.with_text() is not image
    assert (
        create_model("builtin:random", device="cpu", towers="image").text_loader is None
    )  # random weights: both towers


def test_a_damaged_image_export_is_not_used_and_the_next_build_makes_it_again(
    fast_index: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from retrieval.models.factory import create_model
    from retrieval.models.onnxexport import fast_image_encoder
    from retrieval.models.onnximage import OnnxVisual

    _, cache = fast_index
    shutil.copytree(cache, tmp_path / "cache")
    monkeypatch.setenv("RETRIEVAL_CACHE_DIR", str(tmp_path / "cache"))
    (graph,) = (tmp_path / "cache" / "image-onnx").glob("*/image.onnx")
    graph.write_bytes(graph.read_bytes()[:1000])  # cut short, as a full disk or a killed copy leaves it
    encoder = create_model("builtin", device="cpu", towers="image")
    assert not isinstance(encoder.model.visual, OnnxVisual)  # the timm tower answers instead
    again = fast_image_encoder(encoder)
    assert isinstance(again.model.visual, OnnxVisual) and graph.stat().st_size > 1000


def test_a_damaged_text_export_is_made_again(
    fast_index: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from retrieval.models import onnxtext
    from retrieval.models.factory import create_model
    from retrieval.models.onnxexport import ensure_text_onnx

    _, cache = fast_index
    shutil.copytree(cache, tmp_path / "cache")
    monkeypatch.setenv("RETRIEVAL_CACHE_DIR", str(tmp_path / "cache"))
    encoder = create_model("builtin", device="cpu", towers="image")
    folder = onnxtext.folder_for(encoder.fingerprint)
    weights = folder / onnxtext.DATA_FILE
    weights.write_bytes(weights.read_bytes()[:100_000])  # cut short
    assert onnxtext.OnnxTextEncoder.load(folder) is None  # queries take the torch path meanwhile
    assert ensure_text_onnx(encoder) == folder
    assert onnxtext.OnnxTextEncoder.load(folder) is not None and weights.stat().st_size > 100_000
