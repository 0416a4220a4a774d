"""What an index generation is: its manifest and the schema of its metadata table.

The query layer, the UI and the indexer all agree on these names; change them only with a
new ``SCHEMA_VERSION``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from ..errors import IndexFormatError
from .checksums import check_manifest

SCHEMA_VERSION = 1

METADATA_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
        pa.field("mtime", pa.float64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("file_type", pa.string(), nullable=False),
        pa.field("captured_at", pa.timestamp("us", tz="UTC")),
        pa.field("camera_make", pa.string()),
        pa.field("camera_model", pa.string()),
        pa.field("gps_lat", pa.float64()),
        pa.field("gps_lon", pa.float64()),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("tag_scores", pa.list_(pa.float32())),
        pa.field(
            "fingerprint", pa.int64()
        ),  # retrieval.duplicates.fingerprint; null: none, or indexed before it existed
        pa.field("ocr_text", pa.string()),  # text read in the photo, one line per line; "" none; null: not read
        pa.field("ocr_confidence", pa.float32()),  # the OCR's mean confidence in that text; null: no text
    ]
)
METADATA_COLUMNS = tuple(METADATA_SCHEMA.names)
# Columns added after SCHEMA_VERSION 1 shipped: generations written before them read as nulls.
LATER_COLUMNS = ("fingerprint", "ocr_text", "ocr_confidence")


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Manifest:
    """Identity and shape of one generation. ``index_type`` is the FAISS factory string."""

    model_spec: str
    model_fingerprint: str
    embed_dim: int
    count: int = 0
    index_type: str = ""
    ann_params: dict[str, Any] = field(default_factory=dict)
    build_time: str = ""
    roots: tuple[str, ...] = ()
    bad_count: int = 0
    # How ``indexer tag`` tagged the index (labels, k, floor, templates, reject); builds tag new
    # photos the same way. Empty: not tagged.
    tagging: dict[str, Any] = field(default_factory=dict)
    # How the text in the photos is read (engine, settings; indexer.text); builds and updates read
    # new photos' text the same way. Empty: the index holds no text.
    ocr: dict[str, Any] = field(default_factory=dict)
    # Hashes of the generation's files (retrieval.index.checksums), added when it is published. Empty:
    # written before checksums existed, so nothing can be verified.
    checksums: dict[str, Any] = field(default_factory=dict)
    # Links leading out of the roots are followed (``indexer build --follow-links``); updates keep it.
    follow_links: bool = False
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        data["roots"] = list(self.roots)
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            data = json.loads(text)
        except UnicodeDecodeError as exc:
            raise IndexFormatError(f"manifest.json is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
        except json.JSONDecodeError as exc:
            raise IndexFormatError(f"manifest.json is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise IndexFormatError("manifest.json does not hold an object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise IndexFormatError(
                f"index schema version {version!r} is not supported (this program reads version "
                f"{SCHEMA_VERSION}); rebuild the index with `python -m indexer build ... --rebuild`"
            )
        check_manifest(data)
        known = {f for f in cls.__dataclass_fields__}
        missing = {"model_spec", "model_fingerprint", "embed_dim"} - set(data)
        if missing:
            raise IndexFormatError(f"manifest.json lacks {sorted(missing)}")
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["roots"] = tuple(kwargs.get("roots", ()))
        return cls(**kwargs)

    def with_(self, **changes: Any) -> Manifest:
        return replace(self, **changes)


def empty_metadata() -> pa.Table:
    return METADATA_SCHEMA.empty_table()


def conform_metadata(table: pa.Table) -> pa.Table:
    """Return ``table`` with exactly the schema's columns and types, or raise IndexFormatError."""
    for name in LATER_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(
                METADATA_SCHEMA.field(name), pa.nulls(len(table), METADATA_SCHEMA.field(name).type)
            )
    missing = [name for name in METADATA_COLUMNS if name not in table.column_names]
    if missing:
        raise IndexFormatError(f"metadata table lacks columns {missing}")
    try:
        return table.select(list(METADATA_COLUMNS)).cast(METADATA_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
        raise IndexFormatError(f"metadata table does not match the index schema: {exc}") from exc
