"""Photo facts read from the file header: format, upright size, EXIF capture time, camera, GPS."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from PIL import Image

from retrieval.imageio import HEIF_EXTENSIONS

ORIENTATION = 0x0112
MAKE, MODEL = 0x010F, 0x0110
EXIF_IFD, GPS_IFD = 0x8769, 0x8825
DATETIME_ORIGINAL, OFFSET_TIME_ORIGINAL = 0x9003, 0x9011
DATETIME_DIGITIZED, OFFSET_TIME_DIGITIZED = 0x9004, 0x9012
DATETIME, OFFSET_TIME = 0x0132, 0x9010  # IFD0's: when the file was last written, all some cameras and scans have
FORMAT_NAMES = {
    "jpeg": "jpeg",
    "mpo": "jpeg",
    "png": "png",
    "webp": "webp",
    "bmp": "bmp",
    "dib": "bmp",
    "gif": "gif",
    "tiff": "tiff",
    "heif": "heif",
    "heic": "heif",
    "avif": "avif",
}
_OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})$")


@dataclass(frozen=True)
class PhotoInfo:
    width: int
    height: int
    file_type: str
    captured_at: datetime | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    gps_lat: float | None = None
    gps_lon: float | None = None
    orientation: int = 1  # EXIF orientation (1-8) of the stored pixels; width and height are already upright


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value or None


def parse_exif_datetime(value: Any, offset: Any = None) -> datetime | None:
    """EXIF ``YYYY:MM:DD HH:MM:SS`` (local time, with an optional offset) as an aware UTC datetime."""
    text = _text(value)
    if not text:
        return None
    try:
        moment = datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    tz = timezone.utc
    match = _OFFSET.match(_text(offset) or "")
    if match:
        sign = -1 if match.group(1) == "-" else 1
        tz = timezone(sign * timedelta(hours=int(match.group(2)), minutes=int(match.group(3))))
    return moment.replace(tzinfo=tz).astimezone(timezone.utc)


def _degrees(value: Any, ref: Any) -> float | None:
    try:
        d, m, s = (float(x) for x in value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    out = d + m / 60.0 + s / 3600.0
    if _text(ref) in {"S", "W"}:
        out = -out
    return out if out == out else None  # NaN from 0/0 rationals


def _from_exif(exif: Image.Exif) -> dict[str, Any]:
    sub = exif.get_ifd(EXIF_IFD)
    gps = exif.get_ifd(GPS_IFD)
    lat = _degrees(gps.get(2), gps.get(1)) if gps else None
    lon = _degrees(gps.get(4), gps.get(3)) if gps else None
    if lat is not None and not -90 <= lat <= 90 or lon is not None and not -180 <= lon <= 180:
        lat = lon = None
    return {
        "captured_at": _captured_at(exif, sub),
        "camera_make": _text(exif.get(MAKE)),
        "camera_model": _text(exif.get(MODEL)),
        "gps_lat": lat,
        "gps_lon": lon,
    }


def _captured_at(exif: Image.Exif, sub: Any) -> datetime | None:
    """When the photo was taken, else digitised (a scan), else last written: the first of them present."""
    return (
        parse_exif_datetime(sub.get(DATETIME_ORIGINAL), sub.get(OFFSET_TIME_ORIGINAL))
        or parse_exif_datetime(sub.get(DATETIME_DIGITIZED), sub.get(OFFSET_TIME_DIGITIZED))
        or parse_exif_datetime(exif.get(DATETIME), sub.get(OFFSET_TIME))
    )


def _exif_from_bytes(data: bytes | None) -> Image.Exif:
    exif = Image.Exif()
    if data:
        exif.load(data)
    return exif


def read_photo_info(path: str | os.PathLike[str]) -> PhotoInfo:
    """Header-only read (no pixel decode). Width and height are after EXIF orientation."""
    path = Path(path)
    if path.suffix.lower() in HEIF_EXTENSIONS:
        import pillow_heif

        return photo_info(pillow_heif.open_heif(str(path)), path)  # its header: no pixels decoded
    with Image.open(path) as img:
        return photo_info(img, path)


def photo_info(img: Image.Image, path: str | os.PathLike[str]) -> PhotoInfo:
    """:func:`read_photo_info` from an image whose header is already parsed and whose pixels
    are not yet loaded or transposed (``retrieval.imageio.open_image``): no second read. For a
    HEIF, ``img`` may also be pillow-heif's own file object, which has the same ``size`` and ``info``."""
    if Path(path).suffix.lower() in HEIF_EXTENSIONS:  # pillow-heif: upright size, EXIF bytes in info
        return _photo_info(img.size, _exif_from_bytes(img.info.get("exif")), "heif")
    name = (img.format or "").lower()
    return _photo_info(img.size, img.getexif(), FORMAT_NAMES.get(name, name or "unknown"))


def _photo_info(size: tuple[int, int], exif: Image.Exif, file_type: str) -> PhotoInfo:
    width, height = size
    orientation = exif.get(ORIENTATION)
    if file_type == "heif" or not (isinstance(orientation, int) and 1 <= orientation <= 8):
        orientation = 1  # pillow-heif hands over upright pixels
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    try:
        facts = _from_exif(exif)
    except (ValueError, TypeError, KeyError, OSError, SyntaxError):  # malformed EXIF: keep the photo, drop the facts
        facts = {}
    return PhotoInfo(width=int(width), height=int(height), file_type=file_type, orientation=orientation, **facts)
