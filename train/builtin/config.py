"""The built-in model recipe's training settings (``python -m train.builtin`` makes one flag of each field).

Its own module so that the training loop (:mod:`.fit`) and the batch maker (:mod:`.batches`)
both read it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FitConfig:
    """How :func:`train.builtin.fit` trains the built-in model's tower tops on cached features.

    Separate from :class:`train.config.TrainConfig` because it configures another trainer:
    that one trains whole CLIP towers on image files (a model spec, data files, DDP,
    accumulation, checkpoints), this one trains only the tops, on the CPU, from a feature
    cache, with per-group learning rates, cached views, EMA and a model soup.
    """

    epochs: int = 15
    batch_size: int = 512
    head_lr: float = 1e-3
    scale_lr: float = 1e-3
    tower_lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 20
    label_smoothing: float = 0.1
    # captions of each image in a batch, per soup member (member i takes entry i, cycling; one value: all)
    captions_per_image: tuple[int, ...] = field(default=(1, 2, 2), metadata={"item": int})
    ema_decay: float = 0.0
    text_layers: int = 4
    train_conv_head: bool = False
    views: tuple[str, ...] = ("center", "flip", "crop")
    window_p: float = 0.5
    window_min: int = 4
    text_buckets: int = 4
    soup: int = 3
    soup_from: int = 0
    seed: int = 0
    precision: str = "auto"  # "bf16" autocasts the trained tops' forward; "auto": bf16 where the CPU has it natively
