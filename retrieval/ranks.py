"""Where this process sits in a ``torchrun`` job: the one reading of ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` that sharded builds (:mod:`indexer.distributed`) and training (:mod:`train.distributed`)
share. A process started without torchrun is rank 0 of a world of one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .errors import RetrievalError


@dataclass(frozen=True)
class DistContext:
    """This process's rank, the number of processes, its rank on this node, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def detect(env: Mapping[str, str] = os.environ) -> DistContext:
    """``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` as set by torchrun; a single process when absent."""
    world = int(env.get("WORLD_SIZE", "1") or 1)
    rank = int(env.get("RANK", "0") or 0)
    if world < 1 or not 0 <= rank < world:
        raise RetrievalError(f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={world}")
    return DistContext(rank=rank, world_size=world, local_rank=int(env.get("LOCAL_RANK", str(rank)) or 0))
