"""The shipped built-in model, and the recipe that trains it (on a tiny corpus)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval.errors import ModelError
from retrieval.models.factory import create_model
from retrieval.models.registry import WEIGHTS_DIR

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = WEIGHTS_DIR / "builtin-v1.safetensors"
MAX_BYTES = 25 * 1024 * 1024


@functools.cache
def _shared(spec: str, precision: str = "auto"):
    """One encoder per spec and precision for the tests that only read it: loading one takes
    seconds. A test that changes its model's weights builds its own with ``create_model``."""
    return create_model(spec, device="cpu", precision=precision)


def test_weights_are_shipped_and_small() -> None:
    assert WEIGHTS.is_file()
    assert WEIGHTS.stat().st_size <= MAX_BYTES


@pytest.mark.slow
def test_builtin_ranks_obvious_pairs() -> None:
    from PIL import Image
    from skimage import data

    photos = [data.chelsea(), data.rocket(), data.coffee(), data.astronaut()]
    texts = ["a photo of a cat", "a rocket launching into the sky", "a cup of coffee", "an astronaut in a space suit"]
    enc = _shared("builtin")
    assert enc.fingerprint.startswith("builtin/") and "random" not in enc.fingerprint
    img = enc.encode_images([Image.fromarray(p) for p in photos])
    txt = enc.encode_texts(texts)
    sims = img @ txt.T
    assert sims[:, 0].argmax() == 0  # "cat" finds the cat
    assert sims[:, 1].argmax() == 1  # "rocket" finds the rocket
    assert sims[:, 2].argmax() == 2  # "coffee" finds the coffee
    assert sims[0].argmax() == 0  # the cat's best caption is the cat one
    assert sims[1].argmax() == 1  # the rocket's best caption is the rocket one


FLICKR = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"


@pytest.mark.slow
@pytest.mark.skipif(not (FLICKR / "pairs.csv").is_file(), reason="Flickr8k not available")
def test_builtin_retrieves_flickr_test_captions() -> None:
    from PIL import Image

    from retrieval.zeroshot.datasets import read_pairs
    from train.metrics import recall_at_k

    pairs = read_pairs(FLICKR / "pairs.csv", "test", limit=100)
    enc = create_model("builtin", device="cpu")
    img = enc.encode_images([Image.open(p) for p in pairs.image_paths(FLICKR / "images")])
    scores = recall_at_k(img, enc.encode_texts(pairs.captions), pairs.caption_image)
    # 100 candidate images: chance is 10% for R@10 and about 5% for image->text R@1.
    # builtin-v1 (semantic bridge + 2 fine-tuned MiniLM layers) measures 91.6 and 59.0 here.
    assert scores.text_to_image["R@10"] > 80.0
    assert scores.image_to_text["R@1"] > 45.0


@pytest.mark.slow
def test_cached_tower_split_matches_the_full_model() -> None:
    from retrieval.models.towers import anchor_text
    from train.builtin.towers import image_bottom, image_top, text_bottom, text_top

    enc = create_model("builtin:random", device="cpu")
    m = enc.model
    with torch.no_grad():  # a non-zero semantic bridge, so its branch counts in the comparison
        m.visual.bridge.class_embeddings.normal_(generator=torch.Generator().manual_seed(0))
    pixels = torch.randn(2, 3, 224, 224)
    tokens = enc.tokenizer(["a dog runs along the beach .", "two men"])
    mask = (tokens != m.text.config.pad_token_id).long()
    with torch.inference_mode():
        assert m.visual.bridge(m.visual.trunk(pixels)).abs().sum() > 0
        assert torch.allclose(m.encode_image(pixels), image_top(m, image_bottom(m, pixels)), atol=1e-5)
        full = m.encode_text(tokens)
        split = text_top(m, text_bottom(m, tokens, mask, 2), mask, 2, buckets=2)
        split = anchor_text(m, split, m.text_anchor(tokens))  # what training adds for the anchor
        assert full.shape == split.shape == (2, enc.embed_dim)
        assert torch.allclose(full, split, atol=1e-5)


@pytest.mark.slow
def test_anchor_carries_the_frozen_text_tower_and_the_conse_vector() -> None:
    """The shipped model's vectors are [learned, anchor]: the anchor half is the pretrained towers' own."""
    from PIL import Image
    from skimage import data

    from retrieval.models.towers import text_features

    enc = _shared("builtin", "fp32")  # compared with fp32 arithmetic below
    base = _shared("builtin:random")  # the towers as the packages ship them
    m, w = enc.model, enc.model.visual.anchor.weight
    learned_dim = m.text.proj.out_features
    assert enc.embed_dim == learned_dim + 384
    layer = "encoder.layer.5.output.dense.weight"
    live, frozen, pristine = (x.transformer.state_dict()[layer] for x in (m.text, m.text_anchor, base.model.text))
    assert not torch.equal(live, frozen) and torch.equal(frozen, pristine)  # fine-tuning never reaches the anchor

    texts = ["a photo of a cat", "a rocket launching into the sky"]
    txt = enc.encode_texts(texts)
    img = enc.encode_images([Image.fromarray(data.chelsea()), Image.fromarray(data.rocket())])
    for v in (txt, img):  # unit length, split 1 : w between the halves
        assert np.allclose((v[:, :learned_dim] ** 2).sum(1), 1 / (1 + w), atol=1e-5)
        assert np.allclose((v[:, learned_dim:] ** 2).sum(1), w / (1 + w), atol=1e-5)
    center = m.visual.bridge.center()
    expected = torch.nn.functional.normalize(text_features(base.model, base.tokenizer, texts) - center, dim=-1)
    got = txt[:, learned_dim:] * np.sqrt((1 + w) / w)
    assert np.allclose(got, expected.numpy(), atol=1e-4)
    anchor_cos = (img[:, learned_dim:] @ txt[:, learned_dim:].T) * (1 + w) / w
    assert anchor_cos[0].argmax() == 0 and anchor_cos[1].argmax() == 1  # the anchor alone already tells them apart


def _tiny_corpus(root: Path) -> None:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    rows = ["image,caption,split"]
    rng = np.random.default_rng(0)
    words = ["red", "green", "blue", "dark", "bright", "striped"]
    for i in range(12):
        arr = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(root / "images" / f"{i}.jpg")
        split = "val" if i >= 9 else "train"
        rows += [
            f"{i}.jpg,a {words[i % 6]} picture number {i},{split}",
            f"{i}.jpg,photo {i} looking {words[(i + 1) % 6]},{split}",
        ]
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")


@pytest.mark.slow
def test_recipe_end_to_end_on_a_tiny_corpus(tmp_path: Path) -> None:
    _tiny_corpus(tmp_path / "data")
    out = tmp_path / "w.safetensors"
    cmd = [
        sys.executable,
        "-m",
        "train.builtin",
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--warmup-steps",
        "1",
        "--text-layers",
        "1",
        "--train-conv-head",
        "true",
        "--soup",
        "1",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["best_epoch"] in {1, 2} and len(summary["history"]) == 2
    assert set(summary["val"]) == {"text_to_image", "image_to_text"}
    from safetensors.torch import load_file

    trained = load_file(str(out))
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        recipe = json.loads(f.metadata()["recipe"])
    assert recipe["precision"] in {"bf16", "fp32"} and recipe["soup"] == 1  # what ran, not "auto"
    assert "visual.head.proj.weight" in trained and "text.proj.weight" in trained and "logit_scale" in trained
    assert "visual.bridge.proj.weight" in trained and trained["visual.bridge.class_embeddings"].abs().sum() > 0
    assert not any(k.startswith("visual.bridge.classifier") for k in trained)  # comes from the package
    assert any(k.startswith("text.transformer.encoder.layer.5.") for k in trained)
    assert not any(k.startswith("text.transformer.encoder.layer.4.") for k in trained)
    enc = create_model(f"builtin:{out}", device="cpu")
    loaded = enc.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in trained.items())


@pytest.mark.slow
def test_shipped_bridge_embeddings_come_from_the_frozen_text_tower() -> None:
    from safetensors.torch import load_file

    from retrieval.models.registry import project_config
    from retrieval.models.towers import fill_class_embeddings

    shipped = load_file(str(WEIGHTS))["visual.bridge.class_embeddings"]
    block = project_config("builtin")["semantic_bridge"]
    base = _shared("builtin:random")  # pretrained towers, before fine-tuning
    assert base.model.visual.bridge.class_embeddings.abs().sum() == 0
    fresh = fill_class_embeddings(base.model, base.tokenizer, block["classnames"], block["template"])
    assert fresh.shape == shipped.shape == (1000, 384)
    assert torch.allclose(fresh, shipped.float(), atol=1e-3)  # shipped as float16 (recipe.save_weights)
    # the bridge vector is a convex combination of top_k class rows
    pooled = torch.randn(3, 1280, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        sem = base.model.visual.bridge.semantic(pooled)
        probs = torch.softmax(base.model.visual.bridge.classifier(pooled), -1)
    top, idx = probs.topk(block["top_k"], -1)
    expected = torch.stack([(t[:, None] / t.sum() * fresh[i]).sum(0) for t, i in zip(top, idx)])
    assert torch.allclose(sem, expected, atol=1e-5)


@pytest.mark.slow
def test_text_padding_is_trimmed_without_changing_the_vectors() -> None:
    """encode_texts drops the all-padding tail (a short query costs its own length): same vectors."""
    enc = _shared("builtin", "fp32")  # the same arithmetic, so the same vectors to 1e-5
    texts = ["a dog", "two children playing in a fountain in front of a tall building", "x"]
    tokens = enc.tokenizer(texts)
    assert tokens.shape[1] == 48 and enc._text_pad_id() == enc.model.text.config.pad_token_id
    with torch.inference_mode():
        full = torch.nn.functional.normalize(enc.model.encode_text(tokens).float(), dim=-1).numpy()
    assert np.allclose(enc.encode_texts(texts), full, atol=1e-5)
    assert np.allclose(enc.encode_texts(texts[0]), full[:1], atol=1e-5)  # alone: trimmed to 4 tokens


@pytest.mark.slow
def test_soup_members_branch_from_the_shared_run_and_are_averaged(tmp_path: Path) -> None:
    """``--soup 2 --soup-from 1``: member 0 is the plain run, member 1 its own branch, the result their mean."""
    from train.builtin import FitConfig, fit
    from train.builtin.features import build_cache
    from train.builtin.fit import average_states
    from train.builtin.recipe import RecipeConfig, cache_spec

    _tiny_corpus(tmp_path / "data")
    enc = create_model("builtin:random", device="cpu", training=True)
    base = FitConfig(epochs=3, batch_size=4, warmup_steps=1, text_layers=1, soup=1)
    recipe = RecipeConfig(
        data=tmp_path / "data", out=tmp_path / "w.safetensors", cache_dir=tmp_path / "cache", train=base
    )
    cache = build_cache(enc, cache_spec(enc, recipe), recipe.cache_dir)
    start = {k: v.clone() for k, v in enc.model.state_dict().items()}

    def run(cfg: FitConfig):
        enc.model.load_state_dict(start)
        return fit(enc.model, cache, cfg, report_splits=("val",))

    plain = run(base)
    soup = run(FitConfig(**{**base.__dict__, "soup": 2, "soup_from": 1}))
    assert len(soup.members) == 2
    last = [r for r in plain.history if r["epoch"] == 3][0]
    assert [r["loss"] for r in soup.history if r.get("member", 0) == 0 and "loss" in r] == [
        r["loss"] for r in plain.history
    ]
    assert soup.history[-1]["member"] == "soup" and soup.best_epoch == 3
    # the shared epoch, then each member's epochs 2 and 3 (the last with val recall)
    assert [r.get("member") for r in soup.history] == [None, 0, 0, 1, 1, "soup"]
    assert soup.history[2]["t2i_R@1"] == pytest.approx(last["t2i_R@1"])
    a, b = soup.members
    key = "text.proj.weight"
    assert not torch.equal(a[key], b[key])  # the branch saw other batches
    assert torch.allclose(soup.state[key], (a[key] + b[key]) / 2)
    assert all(torch.equal(soup.state[k], v) for k, v in average_states(soup.members).items())
    assert torch.equal(enc.model.state_dict()[key], soup.state[key])  # the model is left holding the soup
    assert soup.reports["val"].as_dict() == soup.val.as_dict()
    with pytest.raises(ValueError, match="soup"):
        fit(enc.model, cache, FitConfig(**{**base.__dict__, "soup": 2, "soup_from": 3}))


@pytest.mark.slow
def test_each_soup_member_takes_its_own_captions_per_image(tmp_path: Path) -> None:
    """``--captions-per-image 2,1``: member 0 trains with 2 captions of each image, member 1 with 1."""
    from train.builtin import FitConfig, fit
    from train.builtin.features import build_cache
    from train.builtin.recipe import RecipeConfig, cache_spec

    _tiny_corpus(tmp_path / "data")
    enc = create_model("builtin:random", device="cpu", training=True)
    base = FitConfig(epochs=2, batch_size=4, warmup_steps=1, text_layers=1, soup=1, captions_per_image=(2,))
    recipe = RecipeConfig(
        data=tmp_path / "data", out=tmp_path / "w.safetensors", cache_dir=tmp_path / "cache", train=base
    )
    cache = build_cache(enc, cache_spec(enc, recipe), recipe.cache_dir)
    start = {k: v.clone() for k, v in enc.model.state_dict().items()}

    def member_losses(**changes) -> list[list[float]]:
        enc.model.load_state_dict(start)
        history = fit(enc.model, cache, FitConfig(**{**base.__dict__, **changes})).history
        members = sorted({r.get("member", 0) for r in history} - {"soup"})
        return [[r["loss"] for r in history if r.get("member", 0) == m and "loss" in r] for m in members]

    (two,) = member_losses()  # a plain run with 2 captions per image
    two_one = member_losses(soup=2, captions_per_image=(2, 1))
    one_one = member_losses(soup=2, captions_per_image=(1,))  # one entry: every member
    assert two_one[0] == two and two_one[1] == one_one[1]
    assert one_one[0] != two  # the count changes what member 0 trains on
    cycled, all_two = member_losses(soup=3, captions_per_image=(2, 1)), member_losses(soup=3)
    assert cycled[2] == all_two[2] and cycled[1] != all_two[1]  # the entries cycle: member 2 takes entry 0
    for bad in [(), (1, 0)]:
        with pytest.raises(ValueError, match="captions_per_image"):
            fit(enc.model, cache, FitConfig(**{**base.__dict__, "captions_per_image": bad}))
    # more images per batch than the corpus has: it trained nothing (loss nan) and wrote the weights
    with pytest.raises(
        ValueError, match=r"training images are fewer than one batch of 512; pass --batch-size \d+ or less"
    ):
        fit(enc.model, cache, FitConfig(**{**base.__dict__, "batch_size": 512}))


def test_recipe_flags_are_checked_before_any_work(tmp_path: Path) -> None:
    from train.builtin.__main__ import _parse, main

    args = [
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "w.safetensors"),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    cfg, _ = _parse([*args, "--captions-per-image", "1,2,2", "--views", "center,flip"])
    assert cfg.train.captions_per_image == (1, 2, 2) and cfg.train.views == ("center", "flip")
    for bad in (["--captions-per-image", "1,0"], ["--soup", "0"], ["--precision", "fp16"]):
        assert main([*args, *bad]) == 2
    assert not (tmp_path / "cache").exists() and not (tmp_path / "w.safetensors").exists()
    with pytest.raises(SystemExit):
        _parse([*args, "--captions-per-image", "1,two"])


@pytest.mark.slow
def test_bf16_tops_track_the_fp32_run(tmp_path: Path) -> None:
    """``--precision bf16`` autocasts the trained tops: the same run within bf16 rounding, not bit for bit."""
    from train.builtin import FitConfig, fit
    from train.builtin.features import build_cache
    from train.builtin.recipe import RecipeConfig, cache_spec

    _tiny_corpus(tmp_path / "data")
    enc = create_model("builtin:random", device="cpu", training=True)
    base = FitConfig(epochs=2, batch_size=4, warmup_steps=1, text_layers=2, soup=1, precision="fp32")
    recipe = RecipeConfig(
        data=tmp_path / "data", out=tmp_path / "w.safetensors", cache_dir=tmp_path / "cache", train=base
    )
    cache = build_cache(enc, cache_spec(enc, recipe), recipe.cache_dir)
    start = {k: v.clone() for k, v in enc.model.state_dict().items()}

    def losses(cfg: FitConfig) -> tuple[list[float], dict[str, torch.Tensor]]:
        enc.model.load_state_dict(start)
        result = fit(enc.model, cache, cfg)
        return [r["loss"] for r in result.history], result.state

    fp32, s32 = losses(base)
    bf16, s16 = losses(FitConfig(**{**base.__dict__, "precision": "bf16"}))
    assert fp32 != bf16  # the autocast really ran
    assert np.allclose(fp32, bf16, rtol=2e-2)
    key = "text.transformer.encoder.layer.5.output.dense.weight"
    assert s16[key].dtype == torch.float32  # master weights stay fp32
    assert torch.allclose(s16[key], s32[key], atol=5e-3)
    with pytest.raises(ModelError, match="precision"):
        fit(enc.model, cache, FitConfig(**{**base.__dict__, "precision": "fp16"}))


def test_auto_precision_follows_the_cpu_and_the_model() -> None:
    """One rule for ``auto`` (encoder, indexer, recipe): bf16 on a CPU with native bf16, for models that gain from it."""
    from retrieval.models.encoder import resolve_precision
    from train.builtin import FitConfig
    from train.builtin.fit import checked

    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert resolve_precision("auto", "cpu", bf16_on_cpu=True) == ("bf16" if native else "fp32")
    assert resolve_precision("auto", "cpu", bf16_on_cpu=False) == "fp32"
    assert checked(FitConfig()).precision == resolve_precision("auto", "cpu", bf16_on_cpu=True)
    # the built-in model's config asks for bf16 on such CPUs; tiny-clip (like open_clip's towers) does not
    assert _shared("builtin:random").resolved_precision == ("bf16" if native else "fp32")
    assert create_model("tiny-clip", device="cpu").resolved_precision == "fp32"
    for explicit in ("fp32", "bf16"):
        assert resolve_precision(explicit, "cpu", bf16_on_cpu=False) == explicit
        assert checked(FitConfig(precision=explicit)).precision == explicit
        assert create_model("tiny-clip", device="cpu", precision=explicit).resolved_precision == explicit
    if not torch.cuda.is_available():
        assert resolve_precision("auto", "meta", bf16_on_cpu=True) == "fp32"  # neither CUDA nor the CPU: no autocast
    for bad in ("half", "fp16"):  # fp16 is what auto means on a GPU without bf16, not a choice
        with pytest.raises(ModelError, match="auto, fp32, bf16"):
            resolve_precision(bad, "cpu", bf16_on_cpu=True)


@pytest.mark.slow
def test_bf16_encoder_on_the_cpu_matches_fp32_within_rounding() -> None:
    from PIL import Image
    from skimage import data

    from retrieval.models.encoder import resolve_precision

    images = [Image.fromarray(p) for p in (data.chelsea(), data.rocket(), data.coffee(), data.astronaut())]
    texts = ["a photo of a cat", "a rocket launching into the sky", "a cup of coffee", "an astronaut in a space suit"]
    fp32, bf16, auto = _shared("builtin", "fp32"), _shared("builtin", "bf16"), _shared("builtin")
    a, b = fp32.encode_images(images), bf16.encode_images(images)
    assert not np.array_equal(a, b) and (a * b).sum(1).min() > 0.99
    same = {"fp32": a, "bf16": b}[resolve_precision("auto", "cpu", bf16_on_cpu=True)]  # bf16 on a CPU with native bf16
    assert auto.resolved_precision in {"fp32", "bf16"} and np.array_equal(auto.encode_images(images), same)
    ta, tb = fp32.encode_texts(texts), bf16.encode_texts(texts)
    assert not np.array_equal(ta, tb) and (ta * tb).sum(1).min() > 0.99
    assert list((b @ tb.T).argmax(1)) == list((a @ ta.T).argmax(1)) == [0, 1, 2, 3]  # each photo's own caption
    with pytest.raises(ModelError, match="precision"):
        create_model("builtin", device="cpu", precision="fp16")
