"""What is an image: the one rule every reader applies (training, evaluation, predict, the web app).

A file's type is told by its first bytes, never by its name: a multi-page TIFF or WebP saved as
`x.png` is what its bytes say. PNG, JPEG, TIFF/BigTIFF and BMP are read; other formats Pillow would
decode (WebP, GIF: lossy or 256 colours) are refused with one message naming the file and its format.
"""

from __future__ import annotations

from typing import Any

# The first bytes of a TIFF and a BigTIFF, little- and big-endian.
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# PNG, BMP, TIFF/BigTIFF, JPEG: every reader (training, predict, web) decides the type by these bytes, never by the name.
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"BM", *TIFF_MAGIC, b"\xff\xd8\xff")
# Formats Pillow would decode but the product does not read (lossy / 8-bit palette), named in the refusal.
OTHER_MAGIC = {b"GIF8": "GIF", b"\x00\x00\x00\x0cjP  ": "JPEG 2000", b"\xff\x4f\xff\x51": "JPEG 2000", b"%PDF": "PDF",
               b"\x00\x00\x01\x00": "ICO", b"8BPS": "Photoshop"}
SUPPORTED = "PNG, JPEG, TIFF or BMP"
# Names predict's folder listing warns about when it skips them (an image in a format it does not read).
IMAGE_LIKE_SUFFIXES = (".webp", ".gif", ".jp2", ".j2k", ".jxl", ".heic", ".heif", ".avif", ".ico", ".psd", ".svg", ".tga", ".ppm", ".pgm")


class ImageReadError(ValueError):
    """A file that should be an image cannot be decoded."""


def content_kind(head: bytes) -> str:
    """A name for the format of a file's first bytes, for messages ("WebP", "GIF", "unknown")."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head.startswith(TIFF_MAGIC):
        return "TIFF"
    return next((name for magic, name in OTHER_MAGIC.items() if head.startswith(magic)), "unknown")


def check_magic(head: bytes, label: Any) -> None:
    """The one rule of what is an image (files, uploads, predict inputs): the first bytes, not the name."""
    if not head.startswith(IMAGE_MAGIC):
        raise ImageReadError(
            f"{label}: not an image file that is read here ({content_kind(head)} content); expected {SUPPORTED} content "
            "(the type is read from the file's first bytes, not its name): convert it, e.g. to PNG or TIFF"
        )
