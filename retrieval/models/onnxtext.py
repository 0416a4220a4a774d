"""The text tower through ONNX Runtime: a text query without torch.

A text query needs one forward pass of the text tower. Importing torch, open_clip and
transformers and building both towers costs seconds and over a gigabyte of memory; ONNX
Runtime runs the same tower, exported once from the shipped weights, in a fraction of both.

A build (which has the model loaded) exports the text tower into the cache dir, in a folder
named by the weights' fingerprint (:func:`folder_for`): the graph, its weights beside it (read
through a memory map, so a query touches only the pages it needs), the tokenizer's
``tokenizer.json`` and a small ``text.json``. A query uses it when the weights on disk still
have that fingerprint; otherwise (no export yet, a model whose tokenizer is not a Hugging Face
one, ``RETRIEVAL_FAST_TEXT=0``) it takes the torch path. The export checks itself against the
torch tower before it is kept.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import default_cache_dir
from ..cores import usable_cpus

FORMAT = 1
FOLDER = "text-onnx"
MODEL_FILE, DATA_FILE, TOKENIZER_FILE, INFO_FILE = "text.onnx", "text.onnx.data", "tokenizer.json", "text.json"
ENV = "RETRIEVAL_FAST_TEXT"
_MAX_DIFF = 1e-4  # the export's largest allowed difference from the torch tower, per coordinate
_PROBES = [
    "a cat",
    "two dogs run across the snowy field toward a red ball",
    "Ein Café in Zürich &amp; a crème brûlée",
    "x " * 80,
]
_PLAIN = re.compile(r"[\x20-\x25\x27-\x7e\t\n]*\Z")  # printable ASCII without '&': ftfy leaves it as it is


def enabled() -> bool:
    """Whether queries may use an exported text tower (``RETRIEVAL_FAST_TEXT=0`` says no)."""
    return os.environ.get(ENV, "1").strip() != "0"


def folder_for(fingerprint: str, kind: str = FOLDER) -> Path:
    """Where the text tower (or another export ``kind``) of the weights with this fingerprint is kept."""
    return default_cache_dir() / kind / re.sub(r"[^A-Za-z0-9._-]+", "_", fingerprint)


def clean(text: str) -> str:
    """open_clip's ``HFTokenizer`` cleaning (ftfy, HTML entities, runs of whitespace), importing
    ftfy (0.1-0.4 s) only for text it could change."""
    if not _PLAIN.match(text):
        import ftfy

        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).strip()


@dataclass
class OnnxTextEncoder:
    """The text half of an :class:`~retrieval.models.encoder.Encoder`, run by ONNX Runtime.

    ``spec`` and ``fingerprint`` are those of the encoder it was exported from, so calibrations
    and the index's model check treat the two alike.
    """

    spec: str
    fingerprint: str
    runtime: Any  # the ONNX Runtime inference object
    tokenizer: Any
    pad_id: int
    embed_dim: int

    @classmethod
    def load(cls, folder: Path, threads: int | None = None) -> OnnxTextEncoder | None:
        """The exported tower in ``folder``, or None when it is missing, of another format or unreadable."""
        try:
            info = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
            if info.get("format") != FORMAT:
                return None
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except (OSError, ValueError, ImportError):
            return None  # the torch path answers instead
        options = ort.SessionOptions()
        # Every usable core: with spinning off, a descheduled thread does not hold the others up, and on a
        # crowded machine two threads get two shares of the CPU (bench/bench_contention.py).
        options.intra_op_num_threads = threads or usable_cpus()
        options.inter_op_num_threads = 1
        # The export is saved optimized, and prepacking weights costs 0.1 s of CPU to save 0.01 s a
        # query: a one-query process loads it in 0.03 s. No spinning threads on a shared core.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.add_session_config_entry("session.disable_prepacking", "1")
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            runtime = ort.InferenceSession(str(folder / MODEL_FILE), options, providers=["CPUExecutionProvider"])
            tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        except Exception:  # ONNX Runtime's errors share no base class but Exception; the torch path answers
            return None
        length = int(info["context_length"])
        tokenizer.enable_truncation(max_length=length)
        tokenizer.enable_padding(length=length, pad_id=int(info["pad_id"]), pad_token=str(info["pad_token"]))
        return cls(
            str(info["spec"]), str(info["fingerprint"]), runtime, tokenizer, int(info["pad_id"]), int(info["embed_dim"])
        )

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids ``[N, L]``, the all-padding tail cut off (as ``Encoder.encode_texts`` does)."""
        ids = np.array([e.ids for e in self.tokenizer.encode_batch([clean(t) for t in texts])], np.int64)
        return ids[:, : max(1, int((ids != self.pad_id).sum(1).max()))]

    def encode_texts(self, texts: Sequence[str] | str, batch_size: int = 256) -> np.ndarray:
        """Embed texts. Returns ``[N, D]`` float32, unit length."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        out = [
            self.runtime.run(None, {"input_ids": self.tokenize(texts[s : s + batch_size])})[0]
            for s in range(0, len(texts), batch_size)
        ]
        if not out:
            return np.zeros((0, self.embed_dim), np.float32)
        vectors = np.concatenate(out).astype(np.float32, copy=False)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def for_model(spec: str, fingerprint: str) -> OnnxTextEncoder | None:
    """The exported text tower for an index's model, or None (the torch path answers then).

    Used only while the weights on disk still have ``fingerprint``: with other weights the
    torch path refuses the query with its own message.
    """
    if not enabled():
        return None
    folder = folder_for(fingerprint)
    if not (folder / INFO_FILE).is_file():
        return None
    from ..errors import RetrievalError
    from .modelid import expected_fingerprint

    try:
        if expected_fingerprint(spec) != fingerprint:
            return None
    except (RetrievalError, OSError):
        return None
    found = OnnxTextEncoder.load(folder)
    return found if found is not None and found.fingerprint == fingerprint else None
