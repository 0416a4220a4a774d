"""Folding eval BatchNorms into convolutions: same outputs, fewer layers, and only where it is exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from retrieval.models.factory import create_model
from retrieval.models.fold import conv_bn_pairs, fold_batchnorms


def _randomise(module: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics, so a wrong fold shows in the output."""
    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return module.eval()


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


class SharedOutput(Plain):
    """conv1's output feeds its BatchNorm and, unnormalised, a residual: folding would change the sum."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        return self.bn1(y) + y


class PreActivation(Plain):
    """BatchNorm before the convolution: nothing to fold."""

    def __init__(self) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.bn0(x))


def _probe() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_folding_keeps_outputs_and_removes_every_batchnorm() -> None:
    model, x = _randomise(Plain()), _probe()
    folded, count = fold_batchnorms(model, lambda m: m(x))
    assert count == 2 and folded is not model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    other = torch.randn(3, 3, 24, 24)
    with torch.inference_mode():
        assert torch.allclose(folded(other), model(other), atol=1e-5)


def test_a_conv_output_used_twice_is_left_alone() -> None:
    model, x = _randomise(SharedOutput()), _probe()
    assert conv_bn_pairs(model, lambda m: m(x)) == [("conv1", "bn1")]  # looks like a pair...
    folded, count = fold_batchnorms(model, lambda m: m(x))
    assert (folded, count) == (model, 0)  # ...but the check on the probe batch refuses it


def test_preactivation_and_training_mode_batchnorms_are_not_folded() -> None:
    model, x = _randomise(PreActivation()), _probe()
    assert conv_bn_pairs(model, lambda m: m(x)) == []
    assert fold_batchnorms(model, lambda m: m(x)) == (model, 0)
    training = _randomise(Plain()).train()
    assert fold_batchnorms(training, lambda m: m(x)) == (training, 0)


@pytest.mark.slow
def test_builtin_encoder_folds_on_first_image_batch_with_the_same_vectors() -> None:
    # fp32: folding must not change the vectors beyond float rounding (bf16, auto on some CPUs, would hide that)
    inference = create_model("builtin:random", device="cpu", precision="fp32")
    training = create_model("builtin:random", device="cpu", training=True, precision="fp32")
    pixels = torch.randint(0, 256, (3, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    got, want = inference.encode_pixels(pixels), training.encode_pixels(pixels)
    assert inference.folded_batchnorms > 40  # EfficientNet-Lite0: every conv has one
    assert not any(isinstance(m, nn.BatchNorm2d) for m in inference.model.visual.modules())
    assert training.folded_batchnorms == 0
    assert any(isinstance(m, nn.BatchNorm2d) for m in training.model.visual.modules())
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize(("spec", "batchnorms"), [("tiny-clip", 0), ("mini-rn-clip", 19)])
def test_other_towers_keep_their_vectors(spec: str, batchnorms: int) -> None:
    """A ViT has nothing to fold; open_clip's ModifiedResNet folds, with non-trivial statistics."""
    inference = create_model(spec, device="cpu", precision="fp32")  # fp32: see above
    training = create_model(spec, device="cpu", training=True, precision="fp32")
    for enc in (inference, training):
        _randomise(enc.model.visual)
    pixels = torch.randint(
        0,
        256,
        (2, 3, inference.image_size, inference.image_size),
        dtype=torch.uint8,
        generator=torch.Generator().manual_seed(3),
    )
    assert torch.allclose(inference.encode_pixels(pixels), training.encode_pixels(pixels), atol=1e-5)
    assert inference.folded_batchnorms == batchnorms
