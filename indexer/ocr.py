"""Reading the text in a photo: PP-OCR (detection, recognition) through ONNX Runtime, on the CPU.

The models are the PP-OCRv4 detection and recognition models that the ``rapidocr-onnxruntime``
wheel ships (Apache-2.0, as is the wheel); nothing is downloaded. The engine drives the two
models itself rather than calling ``RapidOCR()`` with its defaults, because most photos hold no
text and the defaults spend about 1.5 s on each of them (the detector runs on the photo scaled
up to a 736-pixel short side, then the angle classifier, then recognition):

- **gate**: the detector runs once on the photo at a small size (``gate_side``, 320 pixels on
  the long side). No text box there: the photo has no text, and that is all it costs.
- **detection sized to the photo**: a photo that passes the gate is detected again at its own
  size, bounded by ``min_side``/``max_side`` (small photos are scaled up, large ones down).
- **no angle classifier**: photos are shown upright (EXIF orientation is applied on decode);
  a crop taller than wide is turned a quarter, which covers vertical signs.
- **batched recognition**: all the crops of a photo go through the recogniser in batches,
  sorted by width so a batch pads little.
- **threads**: each model runs on one thread without spin-waiting, and photos are read in
  parallel, one per CPU this process may use (:meth:`OcrEngine.read_files`). Small inputs
  gain little from splitting one model run over threads, and a pool of spinning threads loses
  half its speed when another process takes a core; photos side by side do neither.

``OcrEngine.read_file(path)`` returns a :class:`PhotoText`: the lines found (each with the
recogniser's confidence), joined into the text stored with the photo.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.errors import OcrUnavailableError
from retrieval.imageio import load_image

from .config import available_cpus

ENGINE_NAME = "rapidocr-onnxruntime PP-OCRv4 (det + rec)"


@dataclass(frozen=True)
class OcrSettings:
    """How the engine reads. The defaults are the ones ``bench/bench_ocr.py`` measures."""

    gate_side: int = 256  # long side of the text/no-text pass
    min_side: int = 640  # photos smaller than this (long side) are scaled up for detection
    max_side: int = 1280  # and larger ones down
    min_score: float = 0.5  # recognised lines below this confidence are dropped
    min_chars: int = 2  # single characters are mostly noise (a texture read as "I")
    threads: int = 1  # ONNX Runtime intra-op threads per model run
    workers: int | None = None  # photos read at once (None: the CPUs this process may use, at most 4)
    rec_batch: int = 8


@dataclass(frozen=True)
class PhotoText:
    """The text read from one photo. ``confidence`` is the mean of the lines' confidences,
    weighted by their length; None when no text was found."""

    lines: tuple[tuple[str, float], ...] = ()

    @property
    def text(self) -> str:
        return "\n".join(line for line, _ in self.lines)

    @property
    def confidence(self) -> float | None:
        chars = sum(len(line) for line, _ in self.lines)
        if not chars:
            return None
        return float(sum(len(line) * score for line, score in self.lines) / chars)


def _session_config(section: dict, threads: int) -> dict:
    return {**section, "intra_op_num_threads": threads, "inter_op_num_threads": 1, "use_cuda": False, "use_dml": False}


def _cpu_runner(model_path: str, threads: int) -> onnxruntime.InferenceSession:  # noqa: F821 - imported inside
    """An ONNX Runtime CPU runner whose threads sleep instead of spinning between runs (rapidocr's spin)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 4
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])


class OcrEngine:
    """The detection and recognition models, loaded once; :meth:`read_file` per photo."""

    def __init__(self, settings: OcrSettings = OcrSettings()) -> None:
        try:
            from rapidocr_onnxruntime.ch_ppocr_det import TextDetector
            from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer
            from rapidocr_onnxruntime.main import DEFAULT_CFG_PATH
            from rapidocr_onnxruntime.utils import read_yaml, update_model_path
        except ImportError as exc:
            raise OcrUnavailableError(
                "reading text in photos needs the OCR engine: pip install -e '.[ocr]' (rapidocr-onnxruntime)"
            ) from exc
        if settings.max_side > 1500:  # rapidocr scales a "max" input above 1500 pixels down on its own
            raise ValueError("max_side is at most 1500")
        self.settings = settings
        threads = settings.threads
        self.workers = settings.workers or min(4, available_cpus())
        config = update_model_path(read_yaml(DEFAULT_CFG_PATH))
        # "max" leaves an input of up to 1500 pixels at its size (rounded to 32): the scaling is ours
        self._detector = TextDetector({**_session_config(config["Det"], threads), "limit_type": "max"})
        self._recognizer = TextRecognizer(
            {**_session_config(config["Rec"], threads), "rec_batch_num": settings.rec_batch}
        )
        self._detector.infer.session = _cpu_runner(config["Det"]["model_path"], threads)
        self._recognizer.session.session = _cpu_runner(config["Rec"]["model_path"], threads)

    def _detect(self, bgr: np.ndarray, long_side: int) -> np.ndarray:
        """Text boxes (N x 4 x 2, in ``bgr``'s pixels) found with the photo scaled to ``long_side``."""
        import cv2

        h, w = bgr.shape[:2]
        ratio = long_side / max(h, w)
        scaled = cv2.resize(
            bgr,
            (max(32, round(w * ratio)), max(32, round(h * ratio))),
            interpolation=cv2.INTER_AREA if ratio < 1 else cv2.INTER_LINEAR,
        )
        boxes, _ = self._detector(scaled)
        if boxes is None or len(boxes) == 0:
            return np.zeros((0, 4, 2), np.float32)
        return np.asarray(boxes, np.float32) * np.array([w / scaled.shape[1], h / scaled.shape[0]], np.float32)

    def has_text(self, bgr: np.ndarray) -> bool:
        """The gate: whether the detector finds any text box at ``gate_side``."""
        return len(self._detect(bgr, self.settings.gate_side)) > 0

    def read_image(self, bgr: np.ndarray) -> PhotoText:
        """Text lines in a BGR ``uint8`` image (H x W x 3), top to bottom, left to right."""
        if bgr.ndim != 3 or bgr.shape[2] != 3 or min(bgr.shape[:2]) < 8:
            return PhotoText()
        if not self.has_text(bgr):
            return PhotoText()
        s = self.settings
        boxes = self._detect(bgr, min(s.max_side, max(s.min_side, max(bgr.shape[:2]))))
        if len(boxes) == 0:
            return PhotoText()
        crops = [_crop(bgr, box) for box in _reading_order(boxes)]
        results, _ = self._recognizer(crops)
        lines = tuple(
            (text.strip(), float(score))
            for text, score, *_ in results
            if score >= s.min_score and len(text.strip()) >= s.min_chars
        )
        return PhotoText(lines)

    def read_file(self, path: str | os.PathLike[str]) -> PhotoText:
        """Decode ``path`` (upright, JPEGs at a reduced scale that keeps ``max_side``) and read it.
        Raises ImageDecodeError for a file that cannot be decoded."""
        img = load_image(Path(path), draft_size=self.settings.max_side)
        return self.read_image(np.ascontiguousarray(np.asarray(img)[:, :, ::-1]))

    def read_files(self, paths: Sequence[str]) -> Iterator[tuple[str, PhotoText | Exception]]:
        """``(path, text)`` for each path, in order, ``workers`` photos at a time (the models
        release the GIL). A photo that cannot be read yields its exception instead of text."""

        def one(path: str) -> PhotoText | Exception:
            try:
                return self.read_file(path)
            except Exception as exc:  # noqa: BLE001 - any failure costs this photo's text only; the caller counts it
                return exc

        if self.workers <= 1:
            yield from ((p, one(p)) for p in paths)
            return
        with ThreadPoolExecutor(self.workers, thread_name_prefix="ocr") as pool:
            window = 4 * self.workers  # bounded read-ahead: results are yielded in order as they come
            pending: deque = deque()
            for path in paths:
                pending.append((path, pool.submit(one, path)))
                if len(pending) >= window:
                    done_path, future = pending.popleft()
                    yield done_path, future.result()
            while pending:
                done_path, future = pending.popleft()
                yield done_path, future.result()


def _reading_order(boxes: np.ndarray) -> list[np.ndarray]:
    """Boxes top to bottom, and left to right within a line (PaddleOCR's order: 10 pixels make a line)."""
    ordered = sorted(boxes, key=lambda b: (b[0][1], b[0][0]))
    for i in range(len(ordered) - 1):
        for j in range(i, -1, -1):
            if abs(ordered[j + 1][0][1] - ordered[j][0][1]) < 10 and ordered[j + 1][0][0] < ordered[j][0][0]:
                ordered[j], ordered[j + 1] = ordered[j + 1], ordered[j]
            else:
                break
    return ordered


def _crop(img: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The quadrilateral ``points`` (clockwise from top left) warped to an upright rectangle."""
    import cv2

    points = points.astype(np.float32)
    width = int(max(np.linalg.norm(points[0] - points[1]), np.linalg.norm(points[2] - points[3])))
    height = int(max(np.linalg.norm(points[0] - points[3]), np.linalg.norm(points[1] - points[2])))
    width, height = max(width, 1), max(height, 1)
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    crop = cv2.warpPerspective(
        img,
        cv2.getPerspectiveTransform(points, target),
        (width, height),
        borderMode=cv2.BORDER_REPLICATE,
        flags=cv2.INTER_CUBIC,
    )
    return np.rot90(crop) if height / width >= 1.5 else crop
