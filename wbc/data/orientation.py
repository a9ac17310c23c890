"""EXIF / TIFF orientation: every image and mask is read the way image viewers and browsers show it.

Cameras and phones store a frame as the sensor read it and record the turn to show it in the
Orientation tag (EXIF in JPEG/PNG/WebP, tag 274 in a TIFF). Annotators draw masks on the image as
their viewer shows it, so every decoder's output is turned by the tag: Pillow does it itself for the
TIFFs it decodes, OpenCV for TIFFs, tifffile and Pillow's JPEG/PNG/WebP never do; wbc.data.imageio
applies `orient` where the decoder has not. Masks are read by the same rule.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ORIENTATION_TAG = 0x0112  # EXIF Orientation; also TIFF tag 274
# Orientation 1..8 -> the array operation that shows it upright (Pillow's ImageOps.exif_transpose, on HxW[xC]).
_TURNS: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}
NAMES = {2: "mirrored", 3: "rotated 180°", 4: "flipped upside down", 5: "mirrored and rotated 90° counter-clockwise",
         6: "rotated 90° clockwise", 7: "mirrored and rotated 90° clockwise", 8: "rotated 90° counter-clockwise"}


def orient(arr: np.ndarray, orientation: object) -> np.ndarray:
    """`arr` (stored order, HxW or HxWxC) as shown upright; 1, absent or an invalid value: unchanged."""
    turn = _TURNS.get(orientation) if isinstance(orientation, int) else None
    return np.ascontiguousarray(turn(arr)) if turn else arr


def swaps_axes(orientation: int) -> bool:
    """Whether the orientation turns the image by 90° (its shown width is its stored height)."""
    return orientation in (5, 6, 7, 8)


def orientation_of(path: Path) -> int:
    """A file's Orientation tag from its header (1 when absent or unreadable): errors name it."""
    try:
        with Image.open(path) as im:
            value = im.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - Pillow cannot open it: try tifffile's header below
        value = 1
        try:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                tag = tif.pages[0].tags.get(274)
                value = tag.value if tag is not None else 1
        except Exception:  # noqa: BLE001 - no readable tag: as stored
            pass
    return int(value) if isinstance(value, int) and value in range(1, 9) else 1


def describe(orientation: int) -> str:
    """'Orientation 6 (rotated 90° clockwise)' for a message."""
    return f"Orientation {orientation} ({NAMES.get(orientation, 'as stored')})"
