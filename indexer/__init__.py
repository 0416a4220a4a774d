"""Build and maintain photo indexes: scan -> decode -> embed -> write, incrementally.

``build``, ``update``, ``remove`` and ``stats`` are the library entry points; the command
line (``python -m indexer``) is a thin layer over them.
"""

from .api import build, remove, stats, update
from .config import BadFile, BuildConfig, BuildReport, IndexStats, ProgressCallback, StageTimes
from .samples import write_samples

__all__ = [
    "BadFile",
    "BuildConfig",
    "BuildReport",
    "IndexStats",
    "ProgressCallback",
    "StageTimes",
    "build",
    "remove",
    "stats",
    "update",
    "write_samples",
]
