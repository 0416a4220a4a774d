"""Indexer library: formats, EXIF, bad files, incremental updates, removal, model mismatch."""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer import BuildConfig, build, remove, stats, update
from indexer.catalog import Catalog
from retrieval.errors import ImageDecodeError, ModelMismatchError, PathNotFoundError
from retrieval.index.store import IndexReader, catalog_url

from .conftest import write_image

CFG = BuildConfig(workers=0, batch_size=4)
LINKS = BuildConfig(workers=0, batch_size=4, follow_links=True)  # folders linked in from another drive


def _paths(index: Path) -> set[str]:
    return set(IndexReader.open(index).metadata.column("path").to_pylist())


def test_build_all_formats(photo_dir: Path, tmp_path: Path, tiny_encoder) -> None:
    progress: list[tuple[int, int]] = []
    report = build(
        [photo_dir], tmp_path / "idx", CFG, progress=lambda d, t: progress.append((d, t)), encoder=tiny_encoder
    )
    files = sorted(p for p in photo_dir.rglob("*") if p.is_file())
    assert report.published and report.embedded == len(files) == report.count and not report.new_bad
    assert progress[0] == (0, len(files)) and progress[-1] == (len(files), len(files))
    reader = IndexReader.open(tmp_path / "idx")
    assert _paths(tmp_path / "idx") == {str(p.resolve()) for p in files}
    types = set(reader.metadata.column("file_type").to_pylist())
    assert {"jpeg", "png", "webp", "bmp", "gif", "tiff"} <= types
    row = reader.row(int(reader.rows_for_paths([photo_dir / "img_png.png"])[0]))
    assert (row["width"], row["height"], row["size"]) == (40, 30, (photo_dir / "img_png.png").stat().st_size)
    assert len(row["sha256"]) == 64 and row["tags"] == [] and row["captured_at"] is None
    # vectors are the model's own embedding of the file
    expected = tiny_encoder.encode_images([Image.open(photo_dir / "img_png.png")])
    got = np.asarray(reader.vectors[reader.rows_for_paths([photo_dir / "img_png.png"])[0]], np.float32)
    assert np.allclose(got, expected[0], atol=2e-3)
    scores, ids = reader.search_vectors(expected, k=1)
    assert reader.row(int(ids[0, 0]))["path"].endswith("img_png.png")
    assert reader.manifest.roots == (str(photo_dir.resolve()),) and reader.manifest.model_spec == "tiny-clip"


def test_exif_orientation_and_metadata(tmp_path: Path, tiny_encoder) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    exif[0x010F], exif[0x0110] = "Canon", "EOS 5D"
    exif.get_ifd(0x8769)[0x9003] = "2021:07:04 15:30:00"
    exif.get_ifd(0x8769)[0x9011] = "+02:00"
    exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 30.0), 3: "W", 4: (2.0, 21.0, 0.0)})
    photo = write_image(tmp_path / "p" / "rotated.jpg", size=(60, 20), exif=exif)
    build([photo.parent], tmp_path / "idx", CFG, encoder=tiny_encoder)
    row = IndexReader.open(tmp_path / "idx").row(0)
    assert (row["width"], row["height"]) == (20, 60), "size is recorded after EXIF orientation"
    assert row["captured_at"] == datetime(2021, 7, 4, 13, 30, tzinfo=timezone.utc)
    assert (row["camera_make"], row["camera_model"]) == ("Canon", "EOS 5D")
    assert row["gps_lat"] == pytest.approx(48.858333, abs=1e-5) and row["gps_lon"] == pytest.approx(-2.35, abs=1e-5)
    reader = IndexReader.open(tmp_path / "idx")
    assert reader.filter_mask(date_from="2021-07-04", date_to="2021-07-04").tolist() == [True]
    upright = tiny_encoder.encode_images([Image.open(photo).transpose(Image.Transpose.ROTATE_270)])
    assert np.allclose(np.asarray(reader.vectors[0], np.float32), upright[0], atol=2e-3)


def test_capture_time_falls_back_to_digitised_then_file_time(tmp_path: Path) -> None:
    """A scan has only DateTimeDigitized, some cameras only IFD0's DateTime; the taken time wins
    when it is there, and an unset '0000:00:00' one does not hide the others."""
    from indexer.exif import read_photo_info

    def photo(
        name: str,
        original: str | None = None,
        digitized: str | None = None,
        written: str | None = None,
        offset: str | None = None,
    ) -> Path:
        exif = Image.Exif()
        if written:
            exif[0x0132] = written
        sub = exif.get_ifd(0x8769)
        for tag, value in ((0x9003, original), (0x9004, digitized), (0x9010, offset)):
            if value:
                sub[tag] = value
        return write_image(tmp_path / name, exif=exif)

    def when(path: Path) -> datetime | None:
        return read_photo_info(path).captured_at

    all_three = photo("a.jpg", "2020:01:02 03:04:05", "2021:01:01 00:00:00", "2022:01:01 00:00:00")
    assert when(all_three) == datetime(2020, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert when(photo("scan.jpg", digitized="2019:05:06 07:08:09")) == datetime(
        2019, 5, 6, 7, 8, 9, tzinfo=timezone.utc
    )
    written = photo("old.jpg", "0000:00:00 00:00:00", written="2005:06:07 20:00:00", offset="+02:00")
    assert when(written) == datetime(2005, 6, 7, 18, 0, tzinfo=timezone.utc)
    assert when(photo("none.jpg")) is None


def _bomb_png(path: Path) -> Path:
    """A valid PNG header claiming 20000x20000 pixels (the data is tiny)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    )
    return path


def test_bad_files_are_skipped_counted_and_recorded(tmp_path: Path, tiny_encoder) -> None:
    root = tmp_path / "p"
    good = write_image(root / "good.jpg")
    full = write_image(tmp_path / "full.jpg", size=(200, 200)).read_bytes()
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("this is not a picture\n")
    _bomb_png(root / "bomb.png")
    report = build([root], tmp_path / "idx", CFG, encoder=tiny_encoder)
    reasons = {Path(b.path).name: b.reason for b in report.new_bad}
    assert reasons == {
        "truncated.jpg": "truncated",
        "corrupt.png": reasons.get("corrupt.png"),
        "empty.jpg": "empty",
        "text.jpg": "not_an_image",
        "bomb.png": "decompression_bomb",
    }
    assert reasons["corrupt.png"] in {"corrupt", "truncated", "not_an_image"}
    assert report.embedded == 1 and _paths(tmp_path / "idx") == {str(good.resolve())}
    s = stats(tmp_path / "idx")
    assert s.bad_count == 5 and {Path(b.path).name: b.reason for b in s.bad_files} == reasons
    assert IndexReader.open(tmp_path / "idx").manifest.bad_count == 5
    again = build([root], tmp_path / "idx", CFG, encoder=tiny_encoder)
    assert again.skipped_bad == 5 and again.embedded == 0 and not again.published, "known bad files are not retried"
    write_image(root / "empty.jpg", color=(1, 2, 3))  # fixed: now a real image
    (root / "text.jpg").unlink()
    fixed = build([root], tmp_path / "idx", CFG, encoder=tiny_encoder)
    assert fixed.embedded_paths == [str((root / "empty.jpg").resolve())] and stats(tmp_path / "idx").bad_count == 3


def test_incremental_add_modify_rename_delete(photo_dir: Path, tmp_path: Path, tiny_encoder) -> None:
    idx = tmp_path / "idx"
    first = build([photo_dir], idx, CFG, encoder=tiny_encoder)
    stale = idx / "gen-99990101T000000000000Z-0badc0de"  # as left by a build killed mid-write
    stale.mkdir()
    same = build([photo_dir], idx, CFG, encoder=tiny_encoder)
    assert not stale.exists(), "a writer removes generations newer than the live one"
    assert same.embedded == 0 and same.reused == 0 and not same.published and same.unchanged == first.count
    old_vec = {p: IndexReader.open(idx).vectors[i].copy() for i, p in enumerate(sorted(_paths(idx)))}

    added = write_image(photo_dir / "new" / "added.png", color=(10, 250, 90))
    modified = photo_dir / "img_jpg.jpg"
    write_image(modified, color=(0, 0, 0))
    os.utime(modified, (1_000_000_000, 1_000_000_000))
    renamed_from, renamed_to = photo_dir / "img_bmp.bmp", photo_dir / "sub" / "moved.bmp"
    shutil.move(renamed_from, renamed_to)
    deleted = photo_dir / "img_webp.webp"
    deleted.unlink()
    touched = photo_dir / "img_png.png"
    os.utime(touched, (2_000_000_000, 2_000_000_000))

    report = update(idx, CFG, encoder=tiny_encoder)
    assert sorted(report.embedded_paths) == sorted([str(added.resolve()), str(modified.resolve())])
    assert report.reused_paths == [str(renamed_to.resolve())]  # moved; the touched file is unchanged, not "reused"
    assert (report.reused, report.touched, report.unchanged) == (1, 1, first.count - 3)
    assert (
        f"1 reused (moved/copied), {first.count - 3} unchanged (1 touched: new time, same content)" in report.summary()
    )
    assert IndexReader.open(idx).row(int(IndexReader.open(idx).rows_for_paths([touched])[0]))["mtime"] == 2_000_000_000
    assert sorted(report.removed_paths) == sorted([str(renamed_from.resolve()), str(deleted.resolve())])
    assert report.count == first.count
    reader = IndexReader.open(idx)
    assert _paths(idx) == {str(p.resolve()) for p in photo_dir.rglob("*") if p.is_file()}
    moved_row = reader.row(int(reader.rows_for_paths([renamed_to])[0]))
    assert moved_row["mtime"] == renamed_to.stat().st_mtime
    assert np.array_equal(reader.vectors[reader.rows_for_paths([renamed_to])[0]], old_vec[str(renamed_from.resolve())])
    assert update(idx, CFG, encoder=tiny_encoder).embedded == 0
    files = Catalog(catalog_url(idx)).files()
    assert files[str(deleted.resolve())].status == "deleted" and files[str(added.resolve())].status == "ok"


def test_remove_files_and_folders(photo_dir: Path, tmp_path: Path, tiny_encoder) -> None:
    idx = tmp_path / "idx"
    build([photo_dir], idx, CFG, encoder=tiny_encoder)
    before = _paths(idx)
    report = remove([photo_dir / "sub", photo_dir / "img_png.png"], idx)
    gone = {p for p in before if "/sub/" in p or p.endswith("img_png.png")}
    assert len(gone) == 3 and set(report.removed_paths) == gone and _paths(idx) == before - gone
    assert "no supported images" not in report.summary(), "a remove scans nothing and says nothing about it"
    again = update(idx, CFG, encoder=tiny_encoder)
    assert again.embedded == 0 and _paths(idx) == before - gone, "removed files stay out on update"
    assert again.left_out_removed == 3 and again.scanned == again.unchanged + 3
    assert (
        f"left out 3 images under paths removed from the index (python -m indexer build PATH --index {idx.resolve()} "
        "adds a removed one back)" in again.summary()
    )
    same_root = build([photo_dir], idx, CFG, encoder=tiny_encoder)  # the index's own folder: an update
    assert same_root.embedded == 0 and _paths(idx) == before - gone and same_root.left_out_removed == 3
    build([photo_dir / "sub"], idx, CFG, encoder=tiny_encoder)
    assert _paths(idx) == before - {p for p in gone if p.endswith("img_png.png")}, (
        "building a folder again adds it back"
    )


def test_model_mismatch_is_refused(photo_dir: Path, tmp_path: Path, tiny_encoder) -> None:
    idx = tmp_path / "idx"
    build([photo_dir], idx, CFG, encoder=tiny_encoder)
    generation = IndexReader.open(idx).generation_dir
    other = BuildConfig(model="tiny-clip:" + str(tmp_path / "other.pt"), workers=0)
    import torch

    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in tiny_encoder.model.state_dict().items()}
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(ModelMismatchError, match=r"built with model 'tiny-clip'.*--rebuild"):
        build([photo_dir], idx, other)
    assert IndexReader.open(idx).generation_dir == generation
    rebuilt = build([photo_dir], idx, BuildConfig(model=other.model, workers=0, rebuild=True))
    assert rebuilt.embedded == rebuilt.count > 0
    assert IndexReader.open(idx).manifest.model_fingerprint != tiny_encoder.fingerprint

    # the same spec, but the file behind it replaced: no advice to use the spec that just failed
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, tmp_path / "other.pt")
    with pytest.raises(
        ModelMismatchError, match=r"the weights behind that spec have changed since .* --rebuild"
    ) as info:
        build([photo_dir], idx, BuildConfig(model=other.model, workers=0))
    assert "update it with" not in str(info.value)


def test_an_update_with_nothing_to_do_loads_no_model(photo_dir: Path, tmp_path: Path, tiny_encoder) -> None:
    """A nightly update of an unchanged folder checks the weights' fingerprint without building the
    model (seconds); the fingerprint it checks is the one create_model gives."""
    import torch

    from retrieval.models.factory import create_model, expected_fingerprint

    torch.save(tiny_encoder.model.state_dict(), tmp_path / "mine.pt")
    spec = "tiny-clip:" + str(tmp_path / "mine.pt")
    for s in ("tiny-clip", spec, "builtin"):
        assert expected_fingerprint(s) == create_model(s, device="cpu").fingerprint, s
    assert expected_fingerprint("ViT-B-32:laion2b_s34b_b79k") == "ViT-B-32/tag-laion2b_s34b_b79k"
    assert expected_fingerprint("tiny-clip:" + str(tmp_path / "gone.pt")) is None  # create_model says why

    idx = tmp_path / "idx"
    first = build([photo_dir], idx, BuildConfig(model=spec, workers=0))
    assert first.timings.load_model > 0
    unchanged = update(idx, BuildConfig(workers=0))
    assert not unchanged.published and unchanged.unchanged == first.count and unchanged.timings.load_model == 0
    write_image(photo_dir / "added.jpg", color=(9, 99, 199))
    added = update(idx, BuildConfig(workers=0))
    assert added.embedded == 1 and added.timings.load_model > 0
    torch.save(
        {k: v + 1 if v.is_floating_point() else v for k, v in tiny_encoder.model.state_dict().items()},
        tmp_path / "mine.pt",
    )
    with pytest.raises(ModelMismatchError, match=r"the weights behind that spec have changed since"):
        update(idx, BuildConfig(workers=0))


def test_missing_root_and_symlink_loop(tmp_path: Path, tiny_encoder) -> None:
    with pytest.raises(PathNotFoundError):
        build([tmp_path / "nope"], tmp_path / "idx", CFG, encoder=tiny_encoder)
    root = tmp_path / "p"
    write_image(root / "a" / "x.png")
    os.symlink(root, root / "a" / "loop")
    os.symlink(root / "a" / "x.png", root / "alias.png")
    report = build([root], tmp_path / "idx", CFG, encoder=tiny_encoder)
    assert report.count == 1 and _paths(tmp_path / "idx") == {str((root / "a" / "x.png").resolve())}


def test_an_image_indexed_by_itself_is_dropped_once_deleted(tmp_path: Path, tiny_encoder) -> None:
    """A file given to build directly, then deleted from a folder that is still there, is gone;
    it used to be kept as 'under a folder that cannot be read', and found at a path that is no more."""
    single = write_image(tmp_path / "desk" / "one.png")
    write_image(tmp_path / "p" / "x.png", color=(9, 200, 9))
    build([single, tmp_path / "p"], tmp_path / "idx", CFG, encoder=tiny_encoder)
    assert len(_paths(tmp_path / "idx")) == 2
    single.unlink()
    report = update(tmp_path / "idx", CFG, encoder=tiny_encoder)
    assert report.removed == 1 and not report.unreachable and report.kept_unreachable == 0
    assert _paths(tmp_path / "idx") == {str((tmp_path / "p" / "x.png").resolve())}


@pytest.mark.parametrize(("cpus", "cpu_workers", "gpu_workers"), [(1, 0, 1), (2, 0, 1), (4, 1, 3), (16, 4, 8)])
def test_default_decode_workers_follow_the_machine(monkeypatch, cpus, cpu_workers, gpu_workers) -> None:
    import indexer.config

    monkeypatch.setattr(indexer.config, "available_cpus", lambda: cpus)
    assert BuildConfig().resolved_workers(on_gpu=False) == cpu_workers
    assert BuildConfig().resolved_workers(on_gpu=True) == gpu_workers
    assert BuildConfig(workers=1).resolved_workers(on_gpu=False) == 1


def test_avif_is_indexed_upright_with_its_metadata(tmp_path: Path, tiny_encoder, monkeypatch) -> None:
    """AVIF (Pillow's own decoder): EXIF orientation, camera and file type as for a JPEG, and a type filter."""
    from PIL import features

    from retrieval import imageio

    if not imageio.pillow_reads_avif() or not features.check("avif"):
        pytest.skip("this Pillow has no AVIF codec")
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F], exif[0x0110] = "Google", "Pixel 9"
    photo = tmp_path / "p" / "phone.avif"
    photo.parent.mkdir()
    Image.new("RGB", (60, 20), (200, 30, 30)).save(photo, quality=90, exif=exif.tobytes())
    write_image(tmp_path / "p" / "other.jpg")
    report = build([photo.parent], tmp_path / "idx", CFG, encoder=tiny_encoder)
    assert report.embedded == 2 and not report.new_bad
    reader = IndexReader.open(tmp_path / "idx")
    i = int(reader.rows_for_paths([photo])[0])
    row = reader.row(i)
    assert (row["file_type"], row["width"], row["height"]) == ("avif", 20, 60), "size after EXIF orientation"
    assert (row["camera_make"], row["camera_model"]) == ("Google", "Pixel 9")
    assert reader.filter_mask(file_types=[".AVIF"]).tolist() == [
        p.endswith("phone.avif") for p in reader.metadata.column("path").to_pylist()
    ]
    upright = imageio.load_image(photo)
    assert upright.size == (20, 60)
    assert np.allclose(np.asarray(reader.vectors[i], np.float32), tiny_encoder.encode_images([upright])[0], atol=2e-3)

    monkeypatch.setattr(imageio, "pillow_reads_avif", lambda: False)  # as with a Pillow built without libavif
    with pytest.raises(ImageDecodeError) as err:
        imageio.load_image(photo)
    assert err.value.reason == "unsupported_format" and "AVIF" in str(err.value)


def test_files_that_are_not_images_are_counted_not_silently_dropped(tmp_path: Path, tiny_encoder) -> None:
    """Videos, RAW files and sidecars are reported by extension; hidden files and the index itself are not."""
    root = tmp_path / "camera"
    write_image(root / "a.jpg")
    for name in ("clip1.MOV", "trip/clip2.mov", "IMG_1.CR2", "IMG_1.xmp", ".DS_Store", "notes"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"not a photo")
    report = build([root], root / "idx", CFG, encoder=tiny_encoder)  # the index inside the folder is skipped
    assert report.embedded == 1 and report.ignored == {"mov": 2, "cr2": 1, "xmp": 1, "(none)": 1}
    assert "ignored 5 files that are not supported images (mov 2, cr2 1, xmp 1, (none) 1)" in report.summary()
    assert "no supported images" not in report.summary()
    only_videos = build([root / "trip"], tmp_path / "idx2", CFG, encoder=tiny_encoder)
    assert only_videos.scanned == 0 and only_videos.ignored == {"mov": 1}
    assert "no supported images found; supported: avif, bmp," in only_videos.summary()


def test_photos_under_a_folder_that_is_not_there_are_kept_not_dropped(tmp_path: Path, tiny_encoder) -> None:
    """An unmounted drive or share (a missing root, or an empty mount point) must not empty the index."""
    nas, local, index = tmp_path / "nas", tmp_path / "local", tmp_path / "idx"
    for i, color in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        write_image(nas / "2024" / f"p{i}.jpg", color=color)
    write_image(local / "here.png")
    assert build([nas, local], index, CFG, encoder=tiny_encoder).count == 4
    everything = _paths(index)

    shutil.rmtree(nas)  # the share is gone: its root is missing
    report = update(index, CFG, encoder=tiny_encoder)
    assert report.removed == 0 and report.kept_unreachable == 3 and report.unchanged == 1
    assert report.unreachable == {str(nas.resolve()): "No such file or directory"}
    assert _paths(index) == everything and len(IndexReader.open(index)) == 4
    assert (
        "kept 3 indexed photos under folders that cannot be read or are empty now: "
        f"{nas.resolve()} (No such file or directory). If they are gone for good: python -m indexer remove"
    ) in report.summary()

    nas.mkdir()  # an unmounted mount point: the folder is there and empty
    report = update(index, CFG, encoder=tiny_encoder)
    assert report.removed == 0 and report.kept_unreachable == 3 and _paths(index) == everything
    assert "empty: a drive or share that is not mounted?" in report.unreachable[str(nas.resolve())]

    write_image(nas / "new.jpg", color=(90, 90, 90))  # mounted again, with one photo: the others really are gone now
    report = update(index, CFG, encoder=tiny_encoder)
    assert report.unreachable == {} and report.removed == 3 and report.embedded == 1
    assert _paths(index) == {str((nas / "new.jpg").resolve()), str((local / "here.png").resolve())}

    shutil.rmtree(nas)
    remove([str(nas)], index)  # gone for good, said so: dropped, and no longer reported
    report = update(index, CFG, encoder=tiny_encoder)
    assert report.unreachable == {} and _paths(index) == {str((local / "here.png").resolve())}

    empty = tmp_path / "empty"
    empty.mkdir()
    assert build([empty], tmp_path / "idx2", CFG, encoder=tiny_encoder).unreachable == {}  # empty and new: just empty


def test_a_linked_folder_on_a_drive_that_is_not_there_keeps_its_photos(tmp_path: Path, tiny_encoder) -> None:
    """A link into a drive that is not mounted leads nowhere: its photos are kept, as under a
    missing root, not dropped (and re-embedded, untagged, when the drive is back). A link to
    nothing the index holds is reported, not counted as a file without an extension."""
    drive, photos, index = tmp_path / "drive", tmp_path / "photos", tmp_path / "idx"
    for i, color in enumerate([(200, 30, 30), (30, 200, 30)]):
        write_image(drive / "holiday" / f"h{i}.jpg", color=color)
    write_image(photos / "here.jpg")
    (photos / "holiday").symlink_to(drive / "holiday")
    (photos / "loop-a.jpg").symlink_to(photos / "loop-b.jpg")
    (photos / "loop-b.jpg").symlink_to(photos / "loop-a.jpg")
    first = build([photos], index, LINKS, encoder=tiny_encoder)
    assert first.count == 3 and first.ignored == {}
    assert sorted(first.broken_links) == [str(photos / "loop-a.jpg"), str(photos / "loop-b.jpg")]
    assert (
        f"skipped 2 link(s) that lead nowhere (the file or folder they point to is missing, or they loop): "
        f"{photos / 'loop-a.jpg'}" in first.summary()
    )
    everything = _paths(index)

    (drive).rename(tmp_path / "unmounted")
    report = update(index, CFG, encoder=tiny_encoder)
    assert report.removed == 0 and report.kept_unreachable == 2 and _paths(index) == everything
    holiday = str(tmp_path / "drive" / "holiday")
    assert report.unreachable == {holiday: f"the link {photos / 'holiday'} leads to it, and it is not there"}
    assert report.ignored == {} and "kept 2 indexed photos under folders that cannot be read" in report.summary()
    (tmp_path / "unmounted").rename(drive)
    back = update(index, CFG, encoder=tiny_encoder)
    assert back.embedded == 0 and not back.published and _paths(index) == everything


def test_removing_a_folder_takes_the_photos_it_reached_through_links_with_it(tmp_path: Path, tiny_encoder) -> None:
    """Photos reached through a link are indexed by their real paths, outside the folder: a remove
    of the folder left them in the index ('10 images, folders: -') until the next update."""
    drive, photos, other, index = tmp_path / "drive", tmp_path / "photos", tmp_path / "other", tmp_path / "idx"
    write_image(drive / "holiday" / "h0.jpg", color=(200, 30, 30))
    write_image(drive / "holiday" / "h1.jpg", color=(30, 200, 30))
    write_image(photos / "here.jpg")
    (photos / "holiday").symlink_to(drive / "holiday")
    write_image(other / "there.jpg", color=(9, 9, 9))
    (other / "h1-too.jpg").symlink_to(drive / "holiday" / "h1.jpg")  # reached from a folder that stays too
    assert build([photos, other], index, LINKS, encoder=tiny_encoder).count == 4
    report = remove([photos], index)
    assert sorted(report.removed_paths) == sorted(
        str(p.resolve()) for p in (photos / "here.jpg", drive / "holiday" / "h0.jpg", drive / "holiday" / "h1.jpg")
    )
    assert _paths(index) == {str((other / "there.jpg").resolve())}
    # h1 is also reached from a folder that stays (a remove does not scan those): the next update has it back
    again = update(index, CFG, encoder=tiny_encoder)
    assert again.removed == 0 and again.embedded_paths == [str((drive / "holiday" / "h1.jpg").resolve())]


def test_a_folder_indexed_as_its_own_root_and_deleted_from_its_indexed_parent_is_gone(
    tmp_path: Path, tiny_encoder
) -> None:
    """Index 2024 first and its parent later: deleting 2024 must drop its photos (the parent, read
    fine, shows it is gone), not keep them as if on a drive that is not mounted."""
    photos, index = tmp_path / "photos", tmp_path / "idx"
    write_image(photos / "2024" / "a.jpg", color=(200, 30, 30))
    write_image(photos / "2023" / "b.jpg", color=(30, 200, 30))
    build([photos / "2024"], index, CFG, encoder=tiny_encoder)
    build([photos], index, CFG, encoder=tiny_encoder)
    shutil.rmtree(photos / "2024")
    report = update(index, CFG, encoder=tiny_encoder)
    assert report.unreachable == {} and report.removed == 1 and report.published
    assert _paths(index) == {str((photos / "2023" / "b.jpg").resolve())}
    assert IndexReader.open(index).manifest.roots == (str(photos.resolve()),)


def test_a_folder_that_cannot_be_read_and_holds_no_indexed_photo_is_not_reported_as_kept(
    tmp_path: Path, tiny_encoder
) -> None:
    """'kept 0 indexed photos ... If they are gone for good: indexer remove' was advice to keep
    the folder out for good once it could be read again."""
    photos, docs = tmp_path / "photos", tmp_path / "docs"
    write_image(photos / "a.jpg")
    (docs / "notes.txt").parent.mkdir()
    (docs / "notes.txt").write_text("no photos here")
    build([photos, docs], tmp_path / "idx", CFG, encoder=tiny_encoder)
    shutil.rmtree(docs)
    report = update(tmp_path / "idx", CFG, encoder=tiny_encoder)
    assert report.kept_unreachable == 0 and "indexer remove" not in report.summary()
    assert f"could not read {docs.resolve()} (No such file or directory); nothing there is indexed" in report.summary()
    if os.geteuid() == 0:
        return  # root reads any folder
    write_image(photos / "a.jpg")
    write_image(photos / "locked" / "b.jpg")
    (photos / "locked").chmod(0)
    try:
        report = build([photos], tmp_path / "idx3", CFG, encoder=tiny_encoder)
    finally:
        (photos / "locked").chmod(0o755)
    assert report.count == 1 and report.kept_unreachable == 0
    assert (
        f"could not read {(photos / 'locked').resolve()} (Permission denied); nothing there is indexed"
        in report.summary()
    )
    assert "indexer remove" not in report.summary()


def test_a_file_that_could_not_be_read_is_tried_again_once_it_can(tmp_path: Path, tiny_encoder) -> None:
    """Fixing a permission changes neither size nor time: a file that was 'unreadable' stayed bad
    for ever. It is tried again once it can be read; a corrupt one waits for a change or --rebuild,
    and a retried file that is still bad is a known bad file, not a new one."""
    photos, index = tmp_path / "photos", tmp_path / "idx"
    write_image(photos / "a.jpg")
    corrupt = photos / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")
    os.mkfifo(photos / "pipe.jpg")  # a pipe named like a photo: reading it would wait for ever
    first = build([photos], index, CFG, encoder=tiny_encoder)
    assert first.count == 1 and [b.path for b in first.new_bad] == [str(corrupt.resolve())]

    locked = write_image(photos / "locked.jpg", color=(9, 9, 200))
    st = locked.stat()
    catalog = Catalog(catalog_url(index))  # what a build without permission to read it recorded (tests run as root)
    catalog.record(
        None, bad=[(str(locked.resolve()), st.st_size, st.st_mtime, None, "unreadable: [Errno 13] Permission denied")]
    )
    catalog.close()
    retried = update(index, CFG, encoder=tiny_encoder)  # readable now; its size and time are the same
    assert retried.embedded_paths == [str(locked.resolve())] and retried.new_bad == []
    assert retried.skipped_bad == 1  # the corrupt file: unchanged, so not tried again
    assert [b.path for b in stats(index).bad_files] == [str(corrupt.resolve())]

    rebuilt = update(index, BuildConfig(workers=0, rebuild=True), encoder=tiny_encoder)
    assert rebuilt.count == 2 and rebuilt.new_bad == [] and rebuilt.skipped_bad == 1, "tried, still bad: known"
    assert [b.path for b in stats(index).bad_files] == [str(corrupt.resolve())]
    remove([photos], index)  # what is removed is no longer the index's business: its bad files neither
    assert stats(index).bad_files == [] and stats(index).bad_count == 0


def test_a_damaged_index_says_how_to_rebuild_and_rebuild_recovers_it(tmp_path: Path, tiny_encoder) -> None:
    from retrieval.errors import IndexFormatError
    from retrieval.query.search import open_index

    photos, index = tmp_path / "photos", tmp_path / "idx"
    for i, color in enumerate([(200, 30, 30), (30, 200, 30)]):
        write_image(photos / f"p{i}.jpg", color=color)
    build([photos], index, CFG, encoder=tiny_encoder)

    def damage(name: str) -> None:
        target = index / (index / "CURRENT").read_text().strip() / name
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])  # a torn write

    damage("index.faiss")
    with pytest.raises(
        IndexFormatError, match=r"damaged; rebuild it with `python -m indexer build FOLDER --index .* --rebuild`"
    ):
        open_index(index)
    with pytest.raises(IndexFormatError, match="damaged"):
        update(index, CFG)  # an update needs the live vectors: refused, nothing written
    report = update(index, BuildConfig(workers=0, rebuild=True))  # model and folders from the damaged manifest
    assert report.model_spec == "tiny-clip" and report.embedded == 2 and len(open_index(index)) == 2

    damage("manifest.json")
    with pytest.raises(IndexFormatError, match="does not say which folders it held; name them"):
        update(index, BuildConfig(workers=0, rebuild=True))
    report = build([photos], index, BuildConfig(model="tiny-clip", workers=0, rebuild=True))
    assert report.embedded == 2 and _paths(index) == {str((photos / f"p{i}.jpg").resolve()) for i in range(2)}


def test_names_that_are_not_utf8_are_left_out_and_reported_not_a_crash(tmp_path: Path, tiny_encoder) -> None:
    """A Latin-1 name from an old camera or archive used to crash the build when Parquet refused it."""
    root = tmp_path / "photos"
    write_image(root / "fine.jpg")
    try:
        shutil.copy(root / "fine.jpg", os.fsencode(root) + b"/caf\xe9.jpg")
        os.makedirs(os.fsencode(root) + b"/D\xe9cembre")
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    write_image(Path(os.fsdecode(os.fsencode(root) + b"/D\xe9cembre/inside.jpg")), color=(20, 90, 200))
    report = build([root], tmp_path / "idx", CFG, encoder=tiny_encoder)
    assert report.count == 1 and _paths(tmp_path / "idx") == {str((root / "fine.jpg").resolve())}
    assert sorted(report.bad_names) == [f"{root.resolve()}/D\\xe9cembre", f"{root.resolve()}/caf\\xe9.jpg"]
    assert "left out 2 images or folders whose names are not UTF-8 (rename them to index them)" in report.summary()

    os.rename(os.fsencode(root) + b"/caf\xe9.jpg", root / "café.jpg")  # renamed: indexed on the next update
    report = update(tmp_path / "idx", CFG, encoder=tiny_encoder)
    assert report.bad_names == [f"{root.resolve()}/D\\xe9cembre"] and report.count == 2
