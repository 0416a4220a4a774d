"""Calibration: turning raw cosine scores into decisions users can trust.

Two calibrations, both JSON files tied to one encoder fingerprint (a file fitted for other
weights is ignored, never misapplied):

* :class:`RelevanceCalibration`: ``P(relevant | cosine)`` for text->image search, a
  logistic curve fitted on labelled caption/image pairs. Search fills ``Result.relevance``
  with it and ``min_relevance`` filters on it.
* :class:`NoMatchCalibration`: the "none of these" threshold of zero-shot classification,
  fitted on a labelled folder for a target precision.

Files live next to the model's weights (``<weights>.relevance.json``,
``<weights>.nomatch.json``) or, for models without a local weights file, in the user
cache dir (``calibration/<fingerprint>.<kind>.json``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..atomic import replacing
from ..cache import default_cache_dir
from ..errors import CalibrationError
from ..models.registry import resolve_weights

if TYPE_CHECKING:
    from ..models.encoder import Encoder

RELEVANCE = "relevance"
NO_MATCH = "nomatch"
DEFAULT_MIN_RELEVANCE = 0.5
Statistic = Literal["score", "probability"]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CalibrationError(f"calibration file not found: {path}") from exc
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"cannot read calibration file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CalibrationError(f"{path} is not a calibration file")
    return data


def _write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    path = Path(path)
    try:
        with replacing(path) as tmp:
            tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise CalibrationError(f"cannot write the calibration file {path}: {exc.strerror or exc}") from exc
    return path


def _check(data: dict[str, Any], kind: str, path: Any, expect_fingerprint: str | None) -> None:
    if data.get("kind") != kind:
        raise CalibrationError(f"{path} is a {data.get('kind')!r} calibration, not {kind!r}")
    if expect_fingerprint is not None and data.get("fingerprint") != expect_fingerprint:
        raise CalibrationError(
            f"{path} was fitted for the model {data.get('fingerprint')!r}, not {expect_fingerprint!r}"
        )


@dataclass(frozen=True)
class RelevanceCalibration:
    """``P(relevant | cosine) = sigmoid(slope * cosine + intercept)`` for one encoder and query modality."""

    fingerprint: str
    slope: float
    intercept: float
    modality: str = "text-image"
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def probability(self, scores: np.ndarray | float) -> np.ndarray:
        s = np.asarray(scores, dtype=np.float64)
        return _sigmoid(self.slope * s + self.intercept).astype(np.float32)

    def score_for(self, probability: float) -> float:
        """The cosine at which the relevance equals ``probability`` (for thresholds in index space)."""
        if not 0.0 < probability < 1.0:
            raise CalibrationError("probability must be strictly between 0 and 1")
        return float((np.log(probability / (1 - probability)) - self.intercept) / self.slope)

    def save(self, path: str | os.PathLike[str]) -> Path:
        return _write_json(path, {"kind": RELEVANCE, **asdict(self)})

    @classmethod
    def load(cls, path: str | os.PathLike[str], expect_fingerprint: str | None = None) -> RelevanceCalibration:
        data = _read_json(path)
        _check(data, RELEVANCE, path, expect_fingerprint)
        try:
            return cls(
                fingerprint=str(data["fingerprint"]),
                slope=float(data["slope"]),
                intercept=float(data["intercept"]),
                modality=str(data.get("modality", "text-image")),
                fitted_on=dict(data.get("fitted_on", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"{path}: malformed relevance calibration ({exc})") from exc


@dataclass(frozen=True)
class NoMatchCalibration:
    """Zero-shot "none of these": accept the best label only when its ``statistic`` >= ``threshold``.

    ``statistic`` is ``score`` (the best raw cosine) or ``probability`` (the best softmax
    probability, which depends on the size of the label set).
    """

    fingerprint: str
    threshold: float
    statistic: Statistic = "score"
    target_precision: float | None = None
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def statistic_of(self, scores: np.ndarray, probs: np.ndarray) -> np.ndarray:
        return (probs if self.statistic == "probability" else scores).max(axis=1)

    def accepts(self, scores: np.ndarray, probs: np.ndarray) -> np.ndarray:
        return self.statistic_of(np.atleast_2d(scores), np.atleast_2d(probs)) >= self.threshold

    def save(self, path: str | os.PathLike[str]) -> Path:
        return _write_json(path, {"kind": NO_MATCH, **asdict(self)})

    @classmethod
    def load(cls, path: str | os.PathLike[str], expect_fingerprint: str | None = None) -> NoMatchCalibration:
        data = _read_json(path)
        _check(data, NO_MATCH, path, expect_fingerprint)
        statistic = data.get("statistic", "score")
        if statistic not in ("score", "probability"):
            raise CalibrationError(f"{path}: unknown statistic {statistic!r}")
        try:
            return cls(
                fingerprint=str(data["fingerprint"]),
                threshold=float(data["threshold"]),
                statistic=statistic,
                target_precision=None if data.get("target_precision") is None else float(data["target_precision"]),
                fitted_on=dict(data.get("fitted_on", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"{path}: malformed no-match calibration ({exc})") from exc


# -- fitting -----------------------------------------------------------------------------


def fit_logistic(
    scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None, l2: float = 1e-4, iters: int = 100
) -> tuple[float, float]:
    """Weighted 1-D logistic regression by Newton's method: returns ``(slope, intercept)``."""
    x = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels, np.float64).ravel()
    w = np.ones_like(x) if weights is None else np.asarray(weights, np.float64).ravel()
    if x.size == 0 or not (0 < y.sum() < y.size):
        raise CalibrationError("relevance fit needs both relevant and non-relevant pairs")
    X = np.stack([x, np.ones_like(x)], axis=1)
    beta = np.zeros(2)
    for _ in range(iters):
        p = _sigmoid(X @ beta)
        grad = X.T @ (w * (p - y)) + l2 * np.array([beta[0], 0.0])
        hess = (X * (w * p * (1 - p))[:, None]).T @ X + l2 * np.diag([1.0, 0.0]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-10:
            break
    if not np.all(np.isfinite(beta)) or beta[0] <= 0:
        raise CalibrationError("relevance fit failed: scores do not separate relevant from non-relevant pairs")
    return float(beta[0]), float(beta[1])


@dataclass(frozen=True)
class ThresholdFit:
    threshold: float
    precision: float
    coverage: float
    accepted: int
    total: int


def fit_threshold(statistic: np.ndarray, correct: np.ndarray, target_precision: float) -> ThresholdFit:
    """The lowest threshold whose accepted set reaches ``target_precision`` (maximum coverage).

    ``correct[i]`` says whether image ``i``'s top label is right; images whose true class is
    outside the label set are never correct.
    """
    if not 0.0 < target_precision <= 1.0:
        raise CalibrationError("target precision must be in (0, 1]")
    stat = np.asarray(statistic, np.float64).ravel()
    ok = np.asarray(correct, bool).ravel()
    if stat.size == 0:
        raise CalibrationError("no images to calibrate on")
    order = np.argsort(-stat, kind="stable")
    s, hits = stat[order], np.cumsum(ok[order])
    # Only cut between distinct values: everything tied with an accepted value is accepted too.
    last_of_run = np.r_[s[1:] != s[:-1], True]
    n = np.arange(1, s.size + 1)
    good = np.flatnonzero(last_of_run & (hits / n >= target_precision))
    if good.size == 0:
        raise CalibrationError(
            f"no threshold reaches precision {target_precision:.2f} on these images "
            f"(top-1 precision with every image accepted: {ok.mean():.2f})"
        )
    i = int(good.max())
    return ThresholdFit(float(s[i]), float(hits[i] / (i + 1)), float((i + 1) / s.size), i + 1, int(s.size))


# -- where calibration files live -------------------------------------------------------------


def _safe(fingerprint: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", fingerprint)


def calibration_paths(encoder: Encoder, kind: str) -> list[Path]:
    """Where a ``kind`` calibration for this encoder is looked for, first match wins."""
    paths = []
    weights = resolve_weights(encoder.spec)
    if isinstance(weights, Path) and weights.is_file():
        stem = weights.name.split(".")[0]
        paths.append(weights.with_name(f"{stem}.{kind}.json"))
    paths.append(default_cache_dir() / "calibration" / f"{_safe(encoder.fingerprint)}.{kind}.json")
    return paths


def default_calibration_path(encoder: Encoder, kind: str) -> Path:
    """Where ``calibrate`` writes by default: next to the weights when writable, else the cache dir."""
    paths = calibration_paths(encoder, kind)
    first = paths[0]
    if len(paths) > 1 and os.access(first.parent, os.W_OK):
        return first
    return paths[-1]


def _find(encoder: Encoder, kind: str, cls: Any) -> Any:
    for path in calibration_paths(encoder, kind):
        if path.is_file():
            try:
                return cls.load(path, expect_fingerprint=encoder.fingerprint)
            except CalibrationError:
                continue  # fitted for other weights (or damaged): ignore, never misapply
    return None


def load_relevance(encoder: Encoder) -> RelevanceCalibration | None:
    """The text->image relevance calibration for this encoder's weights, or None."""
    return _find(encoder, RELEVANCE, RelevanceCalibration)


def load_no_match(encoder: Encoder) -> NoMatchCalibration | None:
    """The zero-shot "none of these" calibration for this encoder's weights, or None."""
    return _find(encoder, NO_MATCH, NoMatchCalibration)
