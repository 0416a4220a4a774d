"""Contrastive (CLIP) training for any model the factory builds: ``python -m train``.

Single process::

    python -m train --model mini-clip --train-data pairs.csv --image-root images/ \\
        --val-data val.csv --epochs 10 --batch-size 64 --lr 2e-3 --warmup 100 --output runs/x

Data parallel (gloo on CPU, nccl on GPU)::

    torchrun --nproc_per_node=2 -m train --model ViT-B-32:random ... --output runs/x

LiT (locked, cached image tower): add ``--lock-image``. Resume: ``--resume latest``.
The result ``OUTPUT/model.pt`` loads with ``retrieval.create_model("ARCH:OUTPUT/model.pt")``.

Batch semantics: ``--batch-size`` is per process and per micro-batch. The contrastive loss of
each micro-batch sees the negatives of that micro-batch gathered from all processes;
``--accum-steps`` averages the losses of that many micro-batches per optimizer step.

Modules: ``config`` (flags -> TrainConfig), ``data`` and ``sources`` (pairs, shards,
sampling), ``features`` (LiT cache), ``optim`` (AdamW groups, warmup+cosine), ``step``
(accumulation, one update), ``distributed`` (process group, gathered loss), ``checkpoint``
(exact resume), ``validate`` (recall during training), ``plot`` (curves), ``loop`` (the run).
"""
