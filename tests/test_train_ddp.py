"""Two CPU processes (gloo, DDP) must reproduce the single-process loss and gradients of the global batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from retrieval import create_model
from train.data import Batch
from train.distributed import DistContext, init_distributed, shutdown_distributed
from train.step import accumulate_gradients

WORDS = ["dog", "cat", "red", "car", "tree", "boat", "sky", "girl", "man", "ball", "beach", "snow"]


def _global_batches(tokenizer, sizes: list[int], seed: int) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for m, n in enumerate(sizes):
        images = torch.randn(n, 3, 32, 32, generator=g)
        texts = tokenizer([f"a {WORDS[(m + i) % 12]} near a {WORDS[(3 * i + m) % 12]}" for i in range(n)])
        out.append(Batch(images=images, texts=texts, paths=[f"{m}/{i}" for i in range(n)]))
    return out


def _slice(batch: Batch, lo: int, hi: int) -> Batch:
    return Batch(images=batch.images[lo:hi], texts=batch.texts[lo:hi], paths=batch.paths[lo:hi])


# (global micro-batch sizes, rank 0's share of each) -- the second case has unequal shares.
CASES = {"even_accum2": ([8, 8], [4, 4]), "uneven": ([8], [5])}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    ctx = init_distributed("cpu")
    try:
        from torch.nn.parallel import DistributedDataParallel

        for name, (sizes, rank0_share) in CASES.items():
            enc = create_model("tiny-clip", device="cpu")
            model = DistributedDataParallel(enc.model.train())
            batches = _global_batches(enc.tokenizer, sizes, seed=3)
            mine = [_slice(b, 0, s) if rank == 0 else _slice(b, s, len(b)) for b, s in zip(batches, rank0_share)]
            result = accumulate_gradients(model, mine, ctx)
            grads = {n: p.grad.clone() for n, p in enc.model.named_parameters() if p.grad is not None}
            torch.save(
                {"loss": result.loss, "samples": result.samples, "grads": grads}, f"{out_dir}/{name}_rank{rank}.pt"
            )
    finally:
        shutdown_distributed(ctx)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_two_processes_match_single_process(tmp_path):
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    for name, (sizes, _) in CASES.items():
        enc = create_model("tiny-clip", device="cpu")
        model = enc.model.train()
        single = accumulate_gradients(model, _global_batches(enc.tokenizer, sizes, seed=3), DistContext())
        want = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        for rank in (0, 1):
            got = torch.load(tmp_path / f"{name}_rank{rank}.pt", weights_only=True)
            assert got["samples"] == sum(sizes)
            assert got["loss"] == pytest.approx(single.loss, rel=1e-5), name
            assert set(got["grads"]) == set(want)
            for n, g in want.items():
                torch.testing.assert_close(
                    got["grads"][n], g, rtol=1e-4, atol=1e-4 * float(g.abs().max()), msg=f"{name} {n}"
                )
        assert want["logit_scale"].abs().item() > 0  # the temperature gradient is compared too
