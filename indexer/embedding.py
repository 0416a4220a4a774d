"""The decode and embed stages of a build, overlapped: one batch decodes while the model runs the last.

A one-process build runs it over every file to embed; under torchrun each rank runs it over
its slice (:mod:`indexer.distributed`), so both decode and embed the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from tqdm import tqdm

from retrieval.cores import TorchThreads
from retrieval.models.encoder import Encoder

from .config import BuildConfig, BuildReport, ProgressCallback, StageTimes
from .decode import DecodedBatch, iter_decoded
from .device_stage import DeviceDecoder, decode_stage
from .pipeline import EmbeddedBatch, start_embed
from .scan import ScannedFile


def _callback(progress: bool | ProgressCallback | None, total: int) -> tuple[ProgressCallback | None, tqdm | None]:
    if progress is True:
        bar = tqdm(total=total, unit="img", desc="embedding", dynamic_ncols=True, smoothing=0.1)
        return (lambda done, _total: bar.update(done - bar.n)), bar
    return (progress if callable(progress) else None), None


def embed_all(
    files: Sequence[ScannedFile],
    known_sha256: frozenset[str],
    encoder: Encoder,
    config: BuildConfig,
    progress: bool | ProgressCallback | None,
    report: BuildReport,
) -> list[EmbeddedBatch]:
    """Decode (in workers, then JPEGs on the model's device if ``config.gpu_decode`` says so) and embed
    (here), overlapped; fills the report's decode counts and timings. On CUDA a batch's result is collected
    after the next batch has been decoded and started, so the GPU is not left idle while the host
    prepares it; the device's work being asynchronous, part of ``decode_device`` shows in ``embed``."""
    t = report.timings
    on_gpu = encoder.device.type == "cuda"
    dataset, on_device = decode_stage(files, encoder, config, known_sha256)
    report.gpu_decode = on_device is not None
    report.precision = encoder.resolved_precision if files else ""
    total = len(dataset)
    callback, bar = _callback(progress, total)
    out: list[EmbeddedBatch] = []
    done = 0
    threads = TorchThreads() if encoder.device.type == "cpu" else None  # as many as cores are free, batch by batch
    try:
        if callback:
            callback(0, total)
        batches = iter_decoded(
            dataset,
            config.resolved_batch_size(on_gpu),
            config.resolved_workers(on_gpu),
            pin=on_gpu,
            niceness=config.resolved_worker_niceness(on_gpu),
            on_inline=lambda why: setattr(report, "decoded_inline", why),
        )
        in_flight: tuple[int, Callable[[], EmbeddedBatch]] | None = None  # files in the batch, its result
        while True:
            tick = time.perf_counter()
            batch = next(batches, None)
            t.decode_wait += time.perf_counter() - tick
            if threads is not None:
                threads.adjust()
            started = (len(batch.items), _start_batch(batch, on_device, encoder, t)) if batch is not None else None
            if in_flight is not None:  # the previous batch's model run, done while this one was prepared
                tick = time.perf_counter()
                result = in_flight[1]()
                t.embed += time.perf_counter() - tick
                out.append(result)
                done += in_flight[0]
                _tally(report, result)
                if callback:
                    callback(done, total)
            if started is None:
                break
            in_flight = started
    finally:
        if bar is not None:
            bar.close()
        if threads is not None:
            threads.close()
            report.threads = sorted(threads.used)
    return out


def _start_batch(
    batch: DecodedBatch, on_device: DeviceDecoder | None, encoder: Encoder, t: StageTimes
) -> Callable[[], EmbeddedBatch]:
    """The main process's share of one batch: decode its JPEGs on the device (when on), start the model."""
    if on_device is not None:
        tick = time.perf_counter()
        batch = on_device(batch)
        t.decode_device += time.perf_counter() - tick
    tick = time.perf_counter()
    finish = start_embed(encoder, batch)
    t.embed += time.perf_counter() - tick
    t.decode_cpu += sum(it.seconds for it in batch.items)
    return finish


def _tally(report: BuildReport, result: EmbeddedBatch) -> None:
    """How the batch was decoded; what became of its files is counted when the generation is published."""
    report.device_decoded += result.on_device
    report.pillow_decoded += len(result.new) - result.on_device
