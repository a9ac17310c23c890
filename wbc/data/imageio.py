"""Robust image reading: one function that accepts what labs actually have.

8/16-bit, grey, RGB, RGBA, palette, BMP/PNG/TIFF/JPEG are normalised to uint8 RGB. Corrupt,
truncated, empty and non-image files raise `ImageReadError` naming the file, instead of the
None / partial array / deep traceback the underlying decoders give.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

Image.MAX_IMAGE_PIXELS = 20_000 * 20_000  # decompression-bomb guard, far above microscope fields


class ImageReadError(ValueError):
    """A file that should be an image cannot be decoded."""


def decode_raw(path: Path) -> np.ndarray:
    if not path.exists():
        raise ImageReadError(f"{path}: file not found")
    if not path.is_file():
        raise ImageReadError(f"{path}: not a regular file (a folder?); expected an image file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes); expected an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()  # forces a full decode: truncated files raise here
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGB")
                elif im.mode == "LA":
                    im = im.convert("L")
                return np.asarray(im)
    except PermissionError as err:
        raise ImageReadError(f"{path}: cannot be read ({err.strerror or err}); check the file's permissions") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if path.suffix.lower() in {".tif", ".tiff"}:
            try:
                import tifffile

                return np.asarray(tifffile.imread(path))
            except Exception:  # noqa: BLE001 - report the original decoder's message below
                pass
        raise ImageReadError(f"{path}: cannot decode as an image ({err}); truncated or not an image file") from err


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale 16-bit (or wider) data to 8 bits; bool to 0/255; leave uint8 alone."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        info_max = 65535 if arr.max(initial=0) > 255 else 255
        return (arr.astype(np.float32) * (255.0 / info_max)).round().clip(0, 255).astype(np.uint8)
    arr = arr.astype(np.float32)
    scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
    return (arr * scale).round().clip(0, 255).astype(np.uint8)


def read_rgb(path: str | Path) -> np.ndarray:
    """Read any supported image as HxWx3 uint8 RGB (grey is replicated, alpha dropped)."""
    path = Path(path)
    arr = decode_raw(path)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    elif arr.ndim == 3 and arr.shape[2] == 2:
        arr = np.repeat(arr[..., :1], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageReadError(f"{path}: unsupported image shape {arr.shape}; expected HxW, HxWx3 or HxWx4")
    if min(arr.shape[:2]) < 1:
        raise ImageReadError(f"{path}: image has no pixels")
    return np.ascontiguousarray(to_uint8(arr))


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask with its raw values: HxW (grey) or HxWx3 (colour-coded); alpha dropped."""
    path = Path(path)
    arr = decode_raw(path)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.ndim == 3 and arr.shape[2] == 3 and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise ImageReadError(f"{path}: unsupported mask shape {arr.shape}; expected HxW or HxWx3")
    return np.ascontiguousarray(arr)
