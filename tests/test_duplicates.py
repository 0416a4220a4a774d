"""Near-duplicate groups: real photos and their edited copies, and the grouping rules on a real store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageEnhance, ImageOps

import retrieval
from retrieval.duplicates.groups import find_duplicates, group_pairs, similar_pairs
from retrieval.errors import InvalidQueryError
from retrieval.index.manifest import METADATA_SCHEMA, Manifest
from retrieval.index.store import IndexReader, write_generation

from .conftest import run_main, run_module


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def _store(tmp_path: Path, mtimes: list[float] | None = None) -> Path:
    """Six rows with designed vectors: a chain a~b~c where a and c are far apart, two identical
    files whose vectors differ, and one loner."""
    e = np.eye(8, dtype=np.float32)
    b = e[0]
    a = np.cos(0.3176) * b + np.sin(0.3176) * e[1]  # cos(a, b) = 0.95
    c = np.cos(0.2838) * b - np.sin(0.2838) * e[1]  # cos(b, c) = 0.96; cos(a, c) = cos(0.6014) = 0.82
    vectors = _unit(np.stack([a, b, c, e[3], _unit(e[3] + 1.2 * e[4]), e[5]]))
    names = ["x/a.jpg", "x/b.jpg", "y/c.jpg", "z/d.jpg", "z/d-copy.jpg", "z/f.jpg"]
    sizes = [(100, 100), (100, 100), (400, 300), (50, 50), (50, 50), (10, 10)]
    shas = ["a", "b", "c", "d", "d", "f"]
    rows = [
        {
            "path": str(tmp_path / "photos" / n),
            "size": 1000 + i,
            "mtime": mtimes[i] if mtimes else 0.0,
            "sha256": s * 64,
            "width": w,
            "height": h,
            "file_type": "jpeg",
            "captured_at": None,
            "camera_make": None,
            "camera_model": None,
            "gps_lat": None,
            "gps_lon": None,
            "tags": [],
            "tag_scores": [],
        }
        for i, (n, (w, h), s) in enumerate(zip(names, sizes, shas))
    ]
    for n in names:  # the files the rows stand for
        (tmp_path / "photos" / n).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "photos" / n).write_bytes(b"")
    manifest = Manifest(model_spec="test", model_fingerprint="test/fp", embed_dim=8, roots=(str(tmp_path / "photos"),))
    write_generation(tmp_path / "idx", vectors, pa.Table.from_pylist(rows, schema=METADATA_SCHEMA), manifest)
    return tmp_path / "idx"


def test_groups_are_complete_linkage_and_identical_files_always_join(tmp_path: Path) -> None:
    reader = IndexReader.open(_store(tmp_path))
    groups = find_duplicates(reader, threshold=0.92)
    assert [[Path(p).name for p in g.paths] for g in groups] == [["c.jpg", "b.jpg"], ["d-copy.jpg", "d.jpg"]]
    bc, dd = groups
    assert bc.keep.endswith("c.jpg"), "the one with the most pixels comes first"
    assert bc.min_similarity == pytest.approx(0.96, abs=2e-3) and bc.identical_files == 0
    assert dd.identical_files == 2 and dd.min_similarity < 0.92, "same content hash joins whatever the vectors say"
    assert dd.paths[0].endswith("d-copy.jpg")  # equal pixels: the larger file first

    # a chain: at 0.8 every pair of a, b, c is close enough and they form one group
    assert [len(g.rows) for g in find_duplicates(reader, threshold=0.8)] == [3, 2]
    # without c (a folder filter), a and b pair up
    no_c = find_duplicates(reader, threshold=0.92, mask=reader.filter_mask(folder=tmp_path / "photos" / "x"))
    assert [[Path(p).name for p in g.paths] for g in no_c] == [["b.jpg", "a.jpg"]]  # equal pixels: larger file first
    assert find_duplicates(reader, threshold=0.99, mask=reader.filter_mask(folder=tmp_path / "photos" / "x")) == []
    # one search at a low threshold serves every higher one (the app's slider) with the same groups
    pairs = similar_pairs(reader, threshold=0.8)
    assert len(pairs) == 4  # a-b, b-c, a-c and the identical d files, each pair once
    for threshold in (0.8, 0.92, 0.955, 0.99):
        assert [g.rows for g in group_pairs(reader, pairs, threshold)] == [
            g.rows for g in find_duplicates(reader, threshold)
        ]
    with pytest.raises(InvalidQueryError, match="cannot group at a lower"):
        group_pairs(reader, similar_pairs(reader, threshold=0.92), 0.8)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(InvalidQueryError, match="threshold"):
            find_duplicates(reader, threshold=bad)
    with pytest.raises(InvalidQueryError, match="neighbours"):
        find_duplicates(reader, neighbours=0)


def test_cli_lists_groups_as_text_and_json(tmp_path: Path) -> None:
    idx = _store(tmp_path)
    text = run_module("retrieval", "duplicates", "--index", str(idx), "--no-progress").stdout
    assert text.startswith("2 groups, 4 images") and "keep  " + str(tmp_path / "photos" / "y" / "c.jpg") in text
    doc = json.loads(run_main("retrieval", "duplicates", "--index", str(idx), "--json").stdout)
    assert [len(g["paths"]) for g in doc] == [2, 2] and doc[1]["identical_files"] == 2
    assert doc[0]["images"][0] == {
        "path": str(tmp_path / "photos" / "y" / "c.jpg"),
        "width": 400,
        "height": 300,
        "size": 1002,
    }
    none = run_main(
        "retrieval",
        "duplicates",
        "--index",
        str(idx),
        "--threshold",
        "1.0",
        "--folder",
        str(tmp_path / "photos" / "x"),
        "--no-progress",
    ).stdout
    assert none.strip() == "no near-duplicates at threshold 1.0"
    only_png = run_main("retrieval", "duplicates", "--index", str(idx), "--type", "png", "--no-progress").stdout
    assert only_png.strip() == "no near-duplicates at threshold 0.92"  # search's filters apply (every row is a jpeg)
    bad = run_main("retrieval", "duplicates", "--index", str(idx), "--threshold", "2", check=False)
    assert bad.returncode == 2 and "threshold is a cosine" in bad.stderr
    missing = run_main("retrieval", "duplicates", "--index", str(tmp_path / "nothing"), check=False)
    assert missing.returncode == 2 and "no index" in missing.stderr


def test_a_file_no_longer_on_disk_is_marked_and_never_the_one_to_keep(tmp_path: Path) -> None:
    """The index keeps photos under a folder it cannot read (or one renamed away); proposing the
    missing copy as the one to keep would have the user set aside the only real file."""
    idx = _store(tmp_path)
    reader = IndexReader.open(idx)
    assert all(g.missing == [] for g in find_duplicates(reader))
    (tmp_path / "photos" / "y" / "c.jpg").unlink()  # the largest: it was the one to keep
    bc = find_duplicates(reader)[0]
    assert [Path(p).name for p in bc.paths] == ["b.jpg", "c.jpg"] and bc.missing == [
        str(tmp_path / "photos" / "y" / "c.jpg")
    ]
    text = run_main("retrieval", "duplicates", "--index", str(idx), "--no-progress").stdout
    assert "keep  " + str(tmp_path / "photos" / "x" / "b.jpg") in text
    assert str(tmp_path / "photos" / "y" / "c.jpg") + "  400x300  1.0 KB  (missing)" in text
    assert "1 of them are no longer on disk" in text
    doc = json.loads(run_main("retrieval", "duplicates", "--index", str(idx), "--json").stdout)
    assert doc[0]["keep"].endswith("b.jpg") and doc[0]["missing"] == [str(tmp_path / "photos" / "y" / "c.jpg")]


def test_of_equal_pixels_the_oldest_is_kept_not_the_largest_file(tmp_path: Path) -> None:
    """A PNG re-save or a grayscale copy of a JPEG is a larger file than the original; the
    original is older."""
    reader = IndexReader.open(_store(tmp_path, mtimes=[100.0, 200.0, 300.0, 50.0, 60.0, 0.0]))
    groups = find_duplicates(reader, threshold=0.8)
    assert [[Path(p).name for p in g.paths] for g in groups] == [["c.jpg", "a.jpg", "b.jpg"], ["d.jpg", "d-copy.jpg"]]


@pytest.mark.slow
def test_edited_copies_of_real_photos_group_with_the_built_in_model(tmp_path: Path) -> None:
    """Copies, re-compressions, a downsized copy, a brighter edit and a light crop find their originals
    by their vectors, a grayscale version and a mirror image by their fingerprints; eight different
    photos stay apart (the default threshold, the shipped model, the real indexer)."""
    from skimage import data

    from indexer import BuildConfig, build

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("chelsea", "astronaut", "coffee", "rocket", "camera", "moon", "coins", "hubble_deep_field"):
        Image.fromarray(getattr(data, name)()).convert("RGB").save(photos / f"{name}.jpg", quality=95)
    cat = Image.open(photos / "chelsea.jpg")
    cat.save(photos / "chelsea_q30.jpg", quality=30)
    cat.resize((cat.width * 6 // 10, cat.height * 6 // 10), Image.Resampling.LANCZOS).save(
        photos / "chelsea_small.jpg", quality=75
    )
    shutil.copy(photos / "chelsea.jpg", photos / "copy_of_chelsea.jpg")
    ImageEnhance.Brightness(Image.open(photos / "astronaut.jpg")).enhance(1.15).save(
        photos / "astronaut_bright.jpg", quality=90
    )
    cup = Image.open(photos / "coffee.jpg")
    w, h = cup.size
    cup.crop((w // 20, h // 20, w - w // 20, h - h // 20)).save(photos / "coffee_crop.jpg", quality=90)
    ImageOps.grayscale(Image.open(photos / "hubble_deep_field.jpg")).save(photos / "hubble_gray.jpg", quality=90)
    ImageOps.mirror(Image.open(photos / "astronaut.jpg")).save(photos / "astronaut_mirrored.jpg", quality=90)

    build([photos], tmp_path / "idx", BuildConfig(model="builtin", workers=0))
    index = retrieval.open_index(tmp_path / "idx")
    groups = index.duplicates()
    named = [sorted(Path(p).name for p in g.paths) for g in groups]
    assert named == [
        ["chelsea.jpg", "chelsea_q30.jpg", "chelsea_small.jpg", "copy_of_chelsea.jpg"],
        ["astronaut.jpg", "astronaut_bright.jpg", "astronaut_mirrored.jpg"],
        ["coffee.jpg", "coffee_crop.jpg"],
        ["hubble_deep_field.jpg", "hubble_gray.jpg"],
    ]
    assert [Path(g.keep).name for g in groups] == [
        "chelsea.jpg",
        "astronaut.jpg",
        "coffee.jpg",
        "hubble_deep_field.jpg",
    ]
    assert groups[0].identical_files == 2 and groups[0].min_similarity >= 0.92 and groups[2].min_similarity >= 0.92
    # the model puts a grayscale version and a mirror image further apart: their fingerprints join them
    assert groups[1].min_similarity < 0.92 and groups[3].min_similarity < 0.92
    assert [Path(p).name for p in groups[1].mirror_images] == ["astronaut_mirrored.jpg"]
    assert all(g.mirror_images == [] for g in groups if g is not groups[1])
    text = run_main("retrieval", "duplicates", "--index", str(tmp_path / "idx"), "--no-progress").stdout
    assert f"{photos / 'astronaut_mirrored.jpg'}  512x512" in text and "(mirror image)" in text
    strict = [sorted(Path(p).name for p in g.paths) for g in index.duplicates(threshold=0.99)]
    assert ["hubble_deep_field.jpg", "hubble_gray.jpg"] in strict, "fingerprints link at any threshold"
    assert ["astronaut.jpg", "astronaut_bright.jpg", "astronaut_mirrored.jpg"] in strict
