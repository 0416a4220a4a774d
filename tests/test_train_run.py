"""Whole training runs with the tiny model on generated images: resume, LiT cache, shards, the CLI."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval import create_model
from train.checkpoint import list_checkpoints
from train.config import TrainConfig, parse_config
from train.features import FeatureCache
from train.loop import train

from .conftest import run_main, sigint_as_at_a_terminal

REPO = Path(__file__).resolve().parents[1]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def make_pairs(folder: Path, n: int = 40, corrupt: int = 1) -> Path:
    """``n`` noisy colour squares captioned by colour, plus ``corrupt`` undecodable files."""
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    lines = ["image,caption,split"]
    for i in range(n):
        name = list(COLOURS)[i % 4]
        pixels = np.clip(np.array(COLOURS[name]) + rng.normal(0, 25, (40, 48, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / "img" / f"{i:03d}.jpg")
        lines.append(f"img/{i:03d}.jpg,a {name} square number {i},{'val' if i >= n - 8 else 'train'}")
    for j in range(corrupt):
        (folder / "img" / f"bad{j}.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
        lines.append(f"img/bad{j}.jpg,a broken file,train")
    (folder / "pairs.csv").write_text("\n".join(lines) + "\n")
    return folder / "pairs.csv"


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        model="tiny-clip",
        train_data=str(data),
        output=str(out),
        train_split="train",
        batch_size=4,
        accum_steps=2,
        steps=7,
        lr=2e-3,
        wd=0.1,
        warmup=2,
        log_every=1,
        progress=False,
        device="cpu",
        threads=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    data = make_pairs(tmp_path / "data")
    # 32 train pairs + 1 corrupt; 4 x 2 micro-batches per step -> 4 steps per epoch; step 3 is mid-epoch.
    full = train(_config(data, tmp_path / "full", save_every=3, keep_checkpoints=0, workers=2))
    assert full.steps == 7
    assert [p.name for p in list_checkpoints(tmp_path / "full")] == [
        "step_0000003.pt",
        "step_0000006.pt",
        "step_0000007.pt",
    ]

    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "full" / "checkpoints" / "step_0000003.pt", part / "checkpoints")
    torch.manual_seed(12345)  # a different process state must not matter
    resumed = train(_config(data, part, resume="latest"))
    assert resumed.steps == 7
    a, b = _weights(full.model_path), _weights(resumed.model_path)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-6), k
    assert not torch.equal(
        a["text_projection"], _weights(tmp_path / "full" / "checkpoints" / "step_0000003.pt")["text_projection"]
    )
    log = [json.loads(line) for line in resumed.log_path.read_text().splitlines()]
    assert [r["step"] for r in log] == [4, 5, 6, 7]
    full_log = [json.loads(line) for line in full.log_path.read_text().splitlines()]
    assert [r["loss"] for r in full_log[3:]] == pytest.approx([r["loss"] for r in log], abs=1e-6)


def test_an_earlier_run_is_never_overwritten_or_resumed_with_other_data_options(tmp_path):
    from retrieval.errors import TrainingError

    data = make_pairs(tmp_path / "data")
    out = tmp_path / "run"
    first = train(_config(data, out, steps=3, save_every=3))
    checkpoint = out / "checkpoints" / "step_0000003.pt"
    saved = checkpoint.read_bytes()

    with pytest.raises(
        TrainingError,
        match=r"already holds a training run \(checkpoints up to step_0000003, model.pt, "
        r"log.jsonl\); go on with it with --resume latest",
    ):
        train(_config(data, out, steps=2))
    assert checkpoint.read_bytes() == saved and first.log_path.is_file()
    with pytest.raises(TrainingError, match="is at step 3, and this launch trains 3 steps in all: nothing to train"):
        train(_config(data, out, steps=3, resume="latest"))
    with pytest.raises(
        TrainingError,
        match="it was trained with --batch-size=4, --seed=0, and this launch says --batch-size=8, --seed=1",
    ):
        train(_config(data, out, steps=6, resume="latest", batch_size=8, seed=1))
    with pytest.raises(TrainingError, match="it holds a tiny-clip model, and this launch trains mini-rn-clip"):
        train(_config(data, out, model="mini-rn-clip", steps=6, resume="latest"))
    assert checkpoint.read_bytes() == saved, "refused launches change nothing"
    assert json.loads((out / "config.json").read_text())["steps"] == 3

    again = train(_config(data, out, steps=2, overwrite=True))  # afresh: the earlier run's files go
    assert [p.name for p in list_checkpoints(out)] == ["step_0000002.pt"]
    assert [json.loads(line)["step"] for line in again.log_path.read_text().splitlines()] == [1, 2]


def test_images_that_do_not_exist_are_refused_before_training_and_images_next_to_the_file_are_found(tmp_path):
    from retrieval.errors import TrainingError

    data = make_pairs(tmp_path / "data", corrupt=0)
    (tmp_path / "data" / "img").rename(tmp_path / "data" / "images")  # the Flickr8k layout: pairs.csv, images/
    names = data.read_text().replace("img/", "")
    data.write_text(names)
    result = train(_config(data, tmp_path / "run", steps=2, accum_steps=1))  # found under images/ without --image-root
    assert result.steps == 2 and result.skipped_images == 0

    missing = tmp_path / "missing.csv"
    missing.write_text("image,caption,split\n" + "".join(f"nope{i}.jpg,a caption,train\n" for i in range(40)))
    with pytest.raises(
        TrainingError,
        match=r"none of the 40 images named in .*missing.csv exists \(the first: "
        r".*nope0.jpg\); relative paths resolve against the data file's folder",
    ):
        train(_config(missing, tmp_path / "run2", steps=2))
    assert not (tmp_path / "run2").exists(), "a launch that fails leaves no run folder behind"


def test_locked_image_tower_trains_text_side_from_cached_features(tmp_path):
    data = make_pairs(tmp_path / "data")
    cfg = _config(data, tmp_path / "lit", lock_image=True, steps=4, accum_steps=1)
    before = {k: v.clone() for k, v in create_model("tiny-clip", device="cpu").model.state_dict().items()}
    result = train(cfg)
    after = _weights(result.model_path)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("visual."))
    assert not torch.equal(before["text_projection"], after["text_projection"])

    enc = create_model("tiny-clip", device="cpu")
    cache = FeatureCache.open(tmp_path / "lit" / "feature_cache", enc.fingerprint)
    first = str(tmp_path / "data" / "img" / "000.jpg")
    want = enc.encode_images([Image.open(first)])[0]
    np.testing.assert_allclose(cache(first).numpy(), want, atol=1e-5)
    assert cache(str(tmp_path / "data" / "img" / "bad0.jpg")) is None
    assert cache.fill([first], enc) == 0  # already cached: nothing re-embedded
    other = FeatureCache.open(tmp_path / "lit" / "feature_cache", "another-model/weights")
    assert other(first) is None  # features never leak across fingerprints


def test_resnet_image_tower_trains_from_scratch(tmp_path):
    data = make_pairs(tmp_path / "data", n=24, corrupt=0)
    result = train(_config(data, tmp_path / "rn", model="mini-rn-clip", steps=2, accum_steps=1))
    before = create_model("mini-rn-clip", device="cpu").model.state_dict()
    after = _weights(result.model_path)
    assert not torch.equal(before["visual.conv1.weight"], after["visual.conv1.weight"])
    assert not torch.equal(before["visual.bn1.running_mean"], after["visual.bn1.running_mean"])
    assert torch.equal(
        create_model(f"mini-rn-clip:{result.model_path}", device="cpu").model.state_dict()["visual.conv1.weight"],
        after["visual.conv1.weight"],
    )


def test_webdataset_shards(tmp_path):
    import webdataset as wds

    rng = np.random.default_rng(1)
    for s in range(2):
        with wds.TarWriter(str(tmp_path / f"shard-{s:03d}.tar")) as sink:
            for i in range(12):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (36, 36, 3), np.uint8)).save(buf, format="JPEG")
                image = buf.getvalue() if i != 5 else b"not an image"
                sink.write({"__key__": f"{s}_{i:03d}", "jpg": image, "txt": f"picture {s} {i}"})
    cfg = replace(
        _config(tmp_path / "unused.csv", tmp_path / "run", steps=None, epochs=2, train_split=None),
        train_data=str(tmp_path / "shard-{000..001}.tar"),
        train_num_samples=24,
        batch_size=6,
        accum_steps=1,
    )
    assert cfg.is_webdataset
    result = train(cfg.validate())
    assert result.steps == 8 and np.isfinite(result.loss)
    assert result.skipped_images >= 1


def test_config_rejects_contradictions(tmp_path):
    from retrieval.errors import TrainingError

    data = make_pairs(tmp_path, n=4, corrupt=0)
    with pytest.raises(TrainingError):
        parse_config(["--model", "tiny-clip", "--train-data", str(data), "--output", "o", "--accum-steps", "0"])
    with pytest.raises(TrainingError):
        parse_config(["--model", "tiny-clip", "--train-data", str(tmp_path / "nope.csv"), "--output", "o"])
    cfg = parse_config(
        ["--model", "tiny-clip", "--train-data", str(data), "--output", "o", "--lock-image", "--steps", "3"]
    )
    assert cfg.lock_image and cfg.steps == 3 and cfg.batch_size == 64


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cli_end_to_end(tmp_path):
    data = make_pairs(tmp_path / "data", n=24, corrupt=2)
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "train",
        "--model",
        "tiny-clip",
        "--train-data",
        str(data),
        "--train-split",
        "train",
        "--val-data",
        str(data),
        "--val-split",
        "val",
        "--output",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--warmup",
        "1",
        "--log-every",
        "1",
        "--save-every",
        "3",
        "--eval-every",
        "3",
        "--device",
        "cpu",
        "--no-progress",
        "--threads",
        "1",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"images skipped \(missing or undecodable\): [1-9]", proc.stdout)  # the 2 broken files, each epoch

    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in steps] == list(range(1, 9))  # 16 train pairs + 2 broken -> 4 steps per epoch
    for r in steps:
        assert {"step", "epoch", "loss", "temperature", "lr", "samples_per_s"} <= r.keys()
        assert 0 < r["temperature"] <= 100 and r["samples_per_s"] > 0
    assert steps[-1]["skipped_images"] >= 1
    vals = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in vals] == [3, 6, 8]
    assert all(0 <= r[f"{d}_R@{k}"] <= 100 for r in vals for d in ("t2i", "i2t") for k in (1, 5, 10))

    with Image.open(out / "curves.png") as png:
        assert png.format == "PNG" and png.width > 300
    enc = create_model(f"tiny-clip:{out / 'model.pt'}", device="cpu")
    trained = _weights(out / "model.pt")
    assert torch.equal(enc.model.state_dict()["text_projection"], trained["text_projection"])
    assert enc.fingerprint != create_model("tiny-clip", device="cpu").fingerprint

    bad = run_main(
        "train", "--model", "tiny-clip", "--train-data", str(tmp_path / "no.csv"), "--output", str(out), check=False
    )
    assert bad.returncode == 2 and "not found" in bad.stderr and "Traceback" not in bad.stderr

    (tmp_path / "a-file").write_text("")  # an output folder that cannot be made: one line, exit 2
    args = cmd[3:]  # after "python -m train"
    refused = run_main(
        "train",
        *(args[: args.index("--output") + 1] + [str(tmp_path / "a-file" / "run")] + args[args.index("--output") + 2 :]),
        check=False,
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert refused.stderr.startswith(f"error: could not write the training run in {tmp_path / 'a-file' / 'run'}")
    assert "Not a directory" in refused.stderr and "--resume latest" in refused.stderr


@pytest.mark.timeout(900)
@pytest.mark.slow
def test_ctrl_c_stops_training_with_one_line_saying_how_to_go_on(tmp_path):
    import signal
    import time

    data = make_pairs(tmp_path / "data", n=24, corrupt=0)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "train",
            "--model",
            "tiny-clip",
            "--train-data",
            str(data),
            "--output",
            str(out),
            "--steps",
            "100000",
            "--batch-size",
            "4",
            "--save-every",
            "2",
            "--device",
            "cpu",
            "--no-progress",
            "--threads",
            "1",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_as_at_a_terminal,
    )
    deadline = time.monotonic() + 600  # the event is the first checkpoint on disk; the deadline only ends a hung run
    while not list_checkpoints(out):
        assert proc.poll() is None, f"training ended before its first checkpoint: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint within 600 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    last = list_checkpoints(out)[-1].stem
    assert (
        err.strip()
        == f"interrupted; go on with --resume latest (the last checkpoint is {last}; later steps are redone)"
    )
