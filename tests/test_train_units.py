"""Trainer building blocks on real parts: the loss, optimizer groups, schedule, accumulation, data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval import create_model
from train.data import Batch, EpochBatchSampler, PairDataset, collate, read_pairs, train_transform
from train.distributed import DistContext
from train.loss import INIT_LOGIT_SCALE, MAX_LOGIT_SCALE, clip_loss
from train.optim import OptimSettings, WarmupCosine, build_optimizer, build_scheduler
from train.step import accumulate_gradients


def reference_clip_loss(img: torch.Tensor, txt: torch.Tensor, t: float) -> float:
    """Plain float64 loops: mean of the per-row and per-column cross-entropies."""
    img = img.double() / img.double().norm(dim=1, keepdim=True)
    txt = txt.double() / txt.double().norm(dim=1, keepdim=True)
    scale = math.exp(min(t, math.log(100.0)))
    n = img.shape[0]
    sims = [[scale * float(img[i] @ txt[j]) for j in range(n)] for i in range(n)]
    rows = [-sims[i][i] + math.log(sum(math.exp(s) for s in sims[i])) for i in range(n)]
    cols = [-sims[j][j] + math.log(sum(math.exp(sims[i][j]) for i in range(n))) for j in range(n)]
    return (sum(rows) / n + sum(cols) / n) / 2


@pytest.mark.parametrize("t", [INIT_LOGIT_SCALE, 0.0, 7.0])
def test_clip_loss_matches_reference(t):
    g = torch.Generator().manual_seed(1)
    img, txt = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    got = clip_loss(img, txt, torch.tensor(t))
    assert got.item() == pytest.approx(reference_clip_loss(img, txt, t), rel=1e-5)


def test_temperature_starts_at_1_over_0_07_and_is_capped_at_100():
    model = create_model("tiny-clip", device="cpu").model
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-6)
    t = torch.tensor(6.0, requires_grad=True)  # exp(6) = 403 > 100
    img, txt = torch.randn(4, 3), torch.randn(4, 3)
    loss = clip_loss(img, txt, t)
    assert loss.item() == pytest.approx(clip_loss(img, txt, torch.tensor(MAX_LOGIT_SCALE)).item())
    loss.backward()
    assert t.grad.item() == 0.0


def test_weight_decay_skips_norms_biases_and_temperature():
    model = create_model("tiny-clip", device="cpu").model
    opt = build_optimizer(model, OptimSettings(lr=1e-3, wd=0.2))
    by_wd = {g["weight_decay"]: set(g["names"]) for g in opt.param_groups}
    no_decay, decay = by_wd[0.0], by_wd[0.2]
    assert "logit_scale" in no_decay
    names = dict(model.named_parameters())
    norms = [n for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms
    for n in norms:
        assert f"{n}.weight" in no_decay and f"{n}.bias" in no_decay
    assert all(n in no_decay for n in names if n.endswith(".bias"))
    assert "text_projection" in decay and "visual.proj" in decay
    assert any(n.endswith("attn.in_proj_weight") for n in decay)
    assert no_decay | decay == set(names) and not no_decay & decay


def test_warmup_then_cosine():
    f = WarmupCosine(warmup=4, total=14)
    assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f(4) == pytest.approx(1.0)
    assert f(9) == pytest.approx(0.5)  # half-way through the 10 decay steps
    assert f(14) == pytest.approx(0.0, abs=1e-12)
    param = torch.nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.AdamW([param], lr=0.01)
    sched = build_scheduler(opt, warmup=4, total=14)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01])
    assert lrs[9] == pytest.approx(0.005)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))


def _batch(model_enc, n: int, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=g)
    words = ["dog", "cat", "red", "car", "tree", "boat", "sky", "girl", "man", "ball"]
    texts = model_enc.tokenizer([f"a {words[(seed + i) % 10]} and a {words[(seed * 3 + i) % 10]}" for i in range(n)])
    return Batch(images=images, texts=texts, paths=[str(i) for i in range(n)])


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_accumulation_averages_micro_batch_losses():
    enc = create_model("tiny-clip", device="cpu")
    model = enc.model.train()
    a, b = _batch(enc, 4, 1), _batch(enc, 4, 2)
    result = accumulate_gradients(model, [a, b], DistContext())
    got = _grads(model)

    expected_loss = 0.0
    model.zero_grad()
    for part in (a, b):
        loss = clip_loss(model.encode_image(part.images), model.encode_text(part.texts), model.logit_scale)
        (loss / 2).backward()
        expected_loss += loss.item() / 2
    want = _grads(model)
    assert result.loss == pytest.approx(expected_loss, rel=1e-6) and result.samples == 8
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-4 * float(want[name].abs().max()))

    # Negatives stay per micro-batch: one batch of 8 is a different objective.
    model.zero_grad()
    accumulate_gradients(
        model,
        [collate([(x, y, "") for x, y in zip(torch.cat([a.images, b.images]), torch.cat([a.texts, b.texts]))])],
        DistContext(),
    )
    assert not torch.allclose(_grads(model)["text_projection"], want["text_projection"])


def test_sampler_shards_and_resumes_mid_epoch():
    full = list(EpochBatchSampler(23, batch_size=3, seed=5, epoch=2, rank=0, world_size=1))
    assert len(full) == 7 and len({i for b in full for i, _ in b}) == 21
    assert list(EpochBatchSampler(23, 3, 5, 2, start=4)) == full[4:]
    r0 = list(EpochBatchSampler(23, 3, 5, 2, rank=0, world_size=2))
    r1 = list(EpochBatchSampler(23, 3, 5, 2, rank=1, world_size=2))
    assert len(r0) == len(r1) == 3
    assert not {i for b in r0 for i, _ in b} & {i for b in r1 for i, _ in b}
    assert full[0] != list(EpochBatchSampler(23, 3, 5, 3))[0]  # a new order every epoch


def test_pairs_dataset_skips_corrupt_images_and_crops_deterministically(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff this is not a jpeg")
    (tmp_path / "p.csv").write_text("filepath,title\nok.png,a noisy picture\nbad.jpg,broken\nmissing.jpg,gone\n")
    pairs = read_pairs(tmp_path / "p.csv", img_key="filepath", caption_key="title")
    assert pairs.images[0] == str(tmp_path / "ok.png")
    enc = create_model("tiny-clip", device="cpu")
    ds = PairDataset(pairs, enc.tokenizer, train_transform(enc.preprocess, augment=True))
    batch = collate([ds[(0, 11)], ds[(1, 11)], ds[(2, 11)]])
    assert len(batch) == 1 and batch.skipped == 2 and batch.images.shape == (1, 3, 32, 32)
    assert torch.equal(ds[(0, 11)][0], ds[(0, 11)][0])
    assert not torch.equal(ds[(0, 11)][0], ds[(0, 12)][0])


def test_bf16_autocast_step_tracks_fp32():
    enc = create_model("tiny-clip", device="cpu")
    model = enc.model.train()
    batch = _batch(enc, 6, 4)
    fp32 = accumulate_gradients(model, [batch], DistContext(), precision="fp32")
    g32 = model.text_projection.grad.clone()
    model.zero_grad()
    bf16 = accumulate_gradients(model, [batch], DistContext(), precision="bf16")
    g16 = model.text_projection.grad
    assert bf16.loss != fp32.loss and bf16.loss == pytest.approx(fp32.loss, rel=0.05)
    cos = torch.nn.functional.cosine_similarity(g32.flatten(), g16.flatten(), dim=0)
    assert cos > 0.95


def test_parquet_pairs_with_split_and_image_root(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {"path": ["a.jpg", "/abs/b.jpg", "c.jpg"], "text": ["one", "two", "three"], "part": ["train", "val", "train"]}
    )
    pq.write_table(table, tmp_path / "pairs.parquet")
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.jpg")  # c.jpg is missing: skipped while training
    pairs = read_pairs(
        tmp_path / "pairs.parquet", "path", "text", image_root=tmp_path / "imgs", split_key="part", split="train"
    )
    assert pairs.images == [str(tmp_path / "imgs" / "a.jpg"), str(tmp_path / "imgs" / "c.jpg")]
    assert pairs.captions == ["one", "three"]
    from retrieval.errors import TrainingError

    with pytest.raises(TrainingError, match="no column 'caption'"):
        read_pairs(tmp_path / "pairs.parquet", "path", "caption")
