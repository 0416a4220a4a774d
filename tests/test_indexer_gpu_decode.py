"""``indexer build`` with JPEGs decoded on the model's device, run on the CPU (``gpu_decode`` forced on)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from indexer import BuildConfig, build, stats
from indexer.decode import DecodedItem, iter_decoded
from indexer.device_stage import DeviceDecodeDataset, DeviceDecoder, decode_stage, wants_device_decode
from indexer.distributed import DistContext, build_distributed
from indexer.gpu_decode import jpeg_decodes_on
from indexer.scan import scan
from retrieval.imageio import load_image
from retrieval.index.store import IndexReader

from .conftest import run_main, write_image

PILLOW = BuildConfig(workers=0, batch_size=8)  # batches mix JPEGs, a PNG and bad files
DEVICE = replace(PILLOW, gpu_decode=True)
GOOD_JPEGS = ("plain.jpg", "rot6.jpg", "sub/rot8.jpg", "sub/wide.jpg", "small.jpg")
# decoded by Pillow in the workers on both paths; "motion.jpg" has a video appended, as phones write them
PILLOW_FILES = ("graphic.png", "progressive.jpg", "cmyk.jpg", "motion.jpg")
BAD = {"corrupt.jpg", "truncated.jpg", "header.jpg", "bomb.jpg", "text.jpg", "empty.jpg"}


def _orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def _bomb_jpeg(path: Path, source: bytes) -> Path:
    """A real JPEG whose frame header claims 60000 x 60000 pixels (Pillow's bomb limit refuses it)."""
    sof = source.index(b"\xff\xc0") + 5  # marker, length, precision: then height and width
    path.write_bytes(source[:sof] + (60000).to_bytes(2, "big") * 2 + source[sof + 4 :])
    return path


def _photos(root: Path) -> Path:
    """Good JPEGs (two with EXIF orientation), a PNG, and bad files of every kind the device path meets."""
    write_image(root / "plain.jpg", size=(160, 120), color=(200, 60, 30))
    write_image(root / "rot6.jpg", size=(150, 70), color=(30, 160, 90), exif=_orientation(6))
    write_image(root / "sub" / "rot8.jpg", size=(90, 140), color=(90, 30, 200), exif=_orientation(8))
    write_image(root / "sub" / "wide.jpg", size=(240, 60), color=(220, 200, 40))
    write_image(root / "small.jpg", size=(20, 14), color=(10, 120, 220))
    write_image(root / "graphic.png", size=(100, 100), color=(40, 40, 40))
    colours = Image.open(write_image(root.parent / "source.png", size=(120, 90), color=(60, 180, 240)))
    colours.save(root / "progressive.jpg", "JPEG", progressive=True)
    colours.convert("CMYK").save(root / "cmyk.jpg", "JPEG")
    colours.save(root / "motion.jpg", "JPEG")  # baseline, then a video after its end-of-image marker
    with open(root / "motion.jpg", "ab") as f:
        f.write(b"\0\0\0\x18ftypmp42" + bytes(range(256)) * 8)
    full = write_image(root.parent / "full.jpg", size=(200, 200), color=(120, 60, 180)).read_bytes()
    (root / "corrupt.jpg").write_bytes(full[:300] + b"\x00" * 400)
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "header.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    _bomb_jpeg(root / "bomb.jpg", full)
    (root / "text.jpg").write_text("this is not a picture\n")
    (root / "empty.jpg").write_bytes(b"")
    return root


def _vectors(index: Path) -> dict[str, np.ndarray]:
    reader = IndexReader.open(index)
    paths = reader.metadata.column("path").to_pylist()
    return {p: np.asarray(reader.vectors[i], np.float32) for i, p in enumerate(paths)}


def test_auto_means_pillow_on_cpu_and_probes_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert jpeg_decodes_on(cpu)
    assert not wants_device_decode(None, cpu), "auto on a CPU-only machine: the Pillow path"
    assert wants_device_decode(True, cpu) and not wants_device_decode(False, cuda)
    monkeypatch.setattr("indexer.device_stage.jpeg_decodes_on", lambda device: device.type == "cuda")
    assert wants_device_decode(None, cuda) and not wants_device_decode(None, cpu)
    monkeypatch.setattr("indexer.device_stage.jpeg_decodes_on", lambda device: False)  # no nvJPEG in this build
    assert not wants_device_decode(None, cuda)


def test_device_build_matches_pillow_build(tmp_path: Path, tiny_encoder) -> None:
    photos = _photos(tmp_path / "photos")
    pillow = build([photos], tmp_path / "pillow", PILLOW, encoder=tiny_encoder)
    device = build([photos], tmp_path / "device", DEVICE, encoder=tiny_encoder)

    good = len(GOOD_JPEGS) + len(PILLOW_FILES)
    assert not pillow.gpu_decode and (pillow.device_decoded, pillow.pillow_decoded) == (0, good)
    assert device.gpu_decode and (device.device_decoded, device.pillow_decoded) == (len(GOOD_JPEGS), len(PILLOW_FILES))
    assert device.embedded == device.count == good and device.timings.decode_device > 0
    assert "decoded: 5 on the model's device, 4 by Pillow" in device.summary()
    bad = {Path(b.path).name: b for b in device.new_bad}
    assert set(bad) == BAD and all(b.reason for b in bad.values())
    assert {n: (b.reason, b.detail) for n, b in bad.items()} == {
        Path(b.path).name: (b.reason, b.detail) for b in pillow.new_bad
    }, "the same account of each bad file"
    assert {Path(b.path).name: b.reason for b in stats(tmp_path / "device").bad_files} == {
        n: b.reason for n, b in bad.items()
    }, "recorded in the catalog"

    a, b = IndexReader.open(tmp_path / "pillow").metadata, IndexReader.open(tmp_path / "device").metadata
    assert a.drop_columns(["fingerprint"]).equals(b.drop_columns(["fingerprint"])), (
        "the same rows, hashes and EXIF facts"
    )
    # these single-colour pictures have no structure for a fingerprint to keep (test_gpu_decode compares
    # fingerprints of photo-like ones); which of them have one at all does not depend on the decoder
    fingerprinted = [a.column("fingerprint").is_valid(), b.column("fingerprint").is_valid()]
    assert fingerprinted[0].equals(fingerprinted[1])
    pil, dev = _vectors(tmp_path / "pillow"), _vectors(tmp_path / "device")
    cosines = {Path(p).name: float(pil[p] @ dev[p]) for p in pil}
    assert min(cosines.values()) > 0.99, cosines


def test_device_build_in_a_worker_process_and_incremental(tmp_path: Path, tiny_encoder) -> None:
    photos = _photos(tmp_path / "photos")
    config = replace(DEVICE, workers=1, batch_size=3)
    first = build([photos], tmp_path / "idx", config, encoder=tiny_encoder)
    assert (first.device_decoded, first.pillow_decoded, len(first.new_bad)) == (
        len(GOOD_JPEGS),
        len(PILLOW_FILES),
        len(BAD),
    )
    os.rename(photos / "plain.jpg", photos / "sub" / "moved.jpg")
    write_image(photos / "late.jpg", size=(70, 50), color=(5, 5, 250))
    again = build([photos], tmp_path / "idx", config, encoder=tiny_encoder)
    assert (again.embedded, again.reused, again.device_decoded, again.pillow_decoded) == (1, 1, 1, 0)
    assert again.skipped_bad == len(BAD) and again.count == len(GOOD_JPEGS) + len(PILLOW_FILES) + 1


def test_device_stage_gives_upright_model_input(tmp_path: Path, tiny_encoder) -> None:
    files = scan([str(_photos(tmp_path / "photos"))])
    dataset, on_device = decode_stage(files, tiny_encoder, DEVICE, frozenset())
    assert isinstance(dataset, DeviceDecodeDataset) and on_device is not None
    (shipped,) = list(iter_decoded(dataset, batch_size=16, workers=1))  # from a worker process
    encoded = [it.encoded for it in shipped.items if it.encoded is not None]
    assert len(encoded) >= len(GOOD_JPEGS) and all(e.data is None for e in encoded), "bytes travel packed"
    sizes = {it.file.path: it.encoded.packed_size for it in shipped.items if it.encoded is not None}
    assert all(size == os.path.getsize(path) for path, size in sizes.items())
    assert shipped.jpegs is not None and shipped.jpegs.numel() == sum(sizes.values())
    batch = on_device(shipped)
    assert batch.pixels is not None and batch.pixels.dtype == torch.float32 and batch.on_device == len(GOOD_JPEGS)
    assert all(it.encoded is None and it.pixels is None for it in batch.items), "nothing left to ship on"
    for row, k in enumerate(batch.pixel_items):
        path = batch.items[k].file.path
        diff = (batch.pixels[row] - tiny_encoder.transform(load_image(path))).abs().mean()
        assert diff < 0.05, (path, diff)  # normalised units: other JPEG decoder and resize kernel, same picture
        if "rot" in path:
            sideways = (batch.pixels[row] - tiny_encoder.transform(Image.open(path).convert("RGB"))).abs().mean()
            assert sideways > max(0.01, 10 * diff), (path, sideways, diff)


class _CrashingDeviceDataset(DeviceDecodeDataset):
    def _read(self, item: DecodedItem, data: bytes | None) -> None:
        if Path(item.file.path).name.startswith("crash"):
            os._exit(7)  # as a crash inside a C decoder would
        super()._read(item, data)


@pytest.mark.slow
def test_worker_crash_costs_one_file_on_the_device_path(tmp_path: Path, tiny_encoder) -> None:
    for i in range(5):
        write_image(tmp_path / f"{i}.{'png' if i == 2 else 'jpg'}", size=(60, 40), color=(50 * i, 90, 10))
    write_image(tmp_path / "crash.jpg")
    files = scan([str(tmp_path)])
    dataset, on_device = decode_stage(files, tiny_encoder, DEVICE, frozenset())
    assert isinstance(on_device, DeviceDecoder)
    crashing = _CrashingDeviceDataset(files, dataset.transform, dataset.draft_size)
    batches = [on_device(b) for b in iter_decoded(crashing, batch_size=2, workers=1)]
    items = [it for b in batches for it in b.items]
    assert [it.file.path for it in items] == [f.path for f in files]
    assert [Path(it.file.path).name for it in items if it.reason] == ["crash.jpg"]
    assert sum(b.on_device for b in batches) == 4 and sum(len(b.pixel_items) for b in batches) == 5


def test_sharded_build_uses_the_same_choice(tmp_path: Path, tiny_encoder) -> None:
    photos = _photos(tmp_path / "photos")
    one = build([photos], tmp_path / "one", DEVICE, encoder=tiny_encoder)
    sharded = build_distributed(
        (tmp_path / "sharded").resolve(), [str(photos.resolve())], DEVICE, DistContext(), encoder=tiny_encoder
    )
    assert sharded.gpu_decode and (sharded.device_decoded, sharded.pillow_decoded) == (
        len(GOOD_JPEGS),
        len(PILLOW_FILES),
    )
    assert {b.path: b.reason for b in sharded.new_bad} == {b.path: b.reason for b in one.new_bad}
    a, b = _vectors(tmp_path / "one"), _vectors(tmp_path / "sharded")
    assert a.keys() == b.keys() and all(np.allclose(a[p], b[p], atol=2e-3) for p in a)


def test_cli_gpu_decode_flag(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_image(photos / "a.jpg", size=(80, 60), exif=_orientation(3))
    write_image(photos / "b.png", size=(80, 60), color=(10, 200, 10))
    (photos / "c.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    idx = str(tmp_path / "idx")
    tiny = ["--model", "tiny-clip", "--workers", "0", "--no-progress", "--json"]
    on = json.loads(run_main("indexer", "build", str(photos), "--index", idx, "--gpu-decode", "on", *tiny).stdout)
    assert on["gpu_decode"] and (on["device_decoded"], on["pillow_decoded"]) == (1, 1)
    assert on["timings"]["decode_device"] > 0 and [Path(b["path"]).name for b in on["new_bad"]] == ["c.jpg"]
    write_image(photos / "d.jpg", size=(50, 70))
    off = json.loads(run_main("indexer", "update", "--index", idx, "--gpu-decode", "off", *tiny).stdout)
    assert not off["gpu_decode"] and (off["embedded"], off["device_decoded"], off["pillow_decoded"]) == (1, 0, 1)
    write_image(photos / "e.jpg", size=(70, 50))
    auto = json.loads(run_main("indexer", "update", "--index", idx, *tiny).stdout)  # auto on a CPU: Pillow
    assert not auto["gpu_decode"] and (auto["embedded"], auto["pillow_decoded"]) == (1, 1)
