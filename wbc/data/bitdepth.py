"""Camera bit depth: how integer images wider than 8 bits become the 8-bit RGB every model sees.

Scientific cameras store 10/12/14-bit data in 16-bit files; dividing those by 65535 makes them nearly
black. `auto` (the default) guesses each image's depth from its own maximum, which a bright-field
smear's bright background makes reliable. It fails on dark frames (a 12-bit frame with max 900 reads
as 10-bit, ~4x too bright) and between frames of one camera (max 1023 is divided by 1023, max 1024 by
16383): an explicit depth (`data.bit_depth` for training/evaluation, recorded in the checkpoint's
data_info.bit_depth for predict/serve/ONNX, which may override it with `bit_depth=`) divides every
16-bit image by 2**b - 1 and refuses a file whose maximum does not fit, naming it. 8-bit files are
never rescaled, whatever the setting. Float images follow one rule (`float_counts`): whole numbers
are counts (like a 16-bit image), 0..1 is scaled by 255, anything else is refused.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

AUTO = "auto"
# The camera bit depths an explicit setting may name, and an image's maximum is matched against (auto).
BIT_DEPTHS = (8, 10, 12, 14, 16)
ALLOWED = ", ".join([AUTO, *map(str, BIT_DEPTHS)])
# data settings / data_info keys added after runs were made, and what a run made before them used
# (absent = this value): resume compares configs with it (wbc.resume), ensembles data_info (wbc.ensemble)
ABSENT_MEANS = {"bit_depth": AUTO}
# How far a float image in 0..1 may overshoot (resampling, deconvolution ringing) before it is refused.
FLOAT_SLACK = 0.05


class BitDepthError(ValueError):
    """A file whose pixel values do not fit the bit depth it is read with; the readers (wbc.data.imageio)
    raise it as the cause of their ImageReadError, so every caller that reports bad files reports it."""


def check_bit_depth(value: Any, setting: str = "data.bit_depth") -> int | str:
    """The setting as `"auto"` or an int of BIT_DEPTHS ("12" and 12.0 too: CLI/JSON spellings);
    anything else is one error naming `setting` and the allowed values."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    number: Any = value.strip() if isinstance(value, str) else value
    if isinstance(number, str) and number.isdigit():
        number = int(number)
    if isinstance(number, numbers.Real) and not isinstance(number, bool) and float(number).is_integer() and int(number) in BIT_DEPTHS:
        return int(number)
    raise ValueError(f"{setting}={value!r}: expected one of {ALLOWED} (the camera's bits per pixel; auto = guessed from each image's maximum)")


def info_bit_depth(info: Mapping | None, where: str) -> int | str:
    """The depth a checkpoint's data_info (or export.json's) records; a checkpoint before the field is `auto`."""
    return check_bit_depth((info or {}).get("bit_depth", AUTO), f"{where} data_info.bit_depth")


def effective_bits(arr: np.ndarray) -> int:
    """The smallest camera bit depth b in BIT_DEPTHS with max < 2**b (wider data: its type's width)."""
    top = int(arr.max(initial=0))
    return next((b for b in BIT_DEPTHS if top < 2**b), 8 * arr.dtype.itemsize)


def depth_of(arr: np.ndarray, bit_depth: int | str, label: Any, setting: str) -> int:
    """The bits an integer image wider than 8 bits is divided by: the guess (auto) or the setting, which
    its maximum must fit (else BitDepthError naming the file, its maximum and the setting)."""
    bits = check_bit_depth(bit_depth, setting)
    if bits == AUTO:
        return effective_bits(arr)
    top = int(arr.max(initial=0))
    if top > 2**bits - 1:
        raise BitDepthError(
            f"{label}: maximum pixel value {top} does not fit {setting}={bits} (values 0..{2**bits - 1}); set {setting} "
            f"to the camera's bit depth ({', '.join(map(str, BIT_DEPTHS))}) or {AUTO}"
        )
    return int(bits)


def to_uint8(arr: np.ndarray, bit_depth: int | str = AUTO, label: Any = "image", setting: str = "data.bit_depth") -> np.ndarray:
    """Integer data wider than 8 bits (grey and colour alike) to 8 bits: divided by 2**b - 1, b the
    setting or, for auto, `effective_bits` (8-bit values stored in 16 bits stay as they are, a 12-bit
    camera's 4095 becomes 255, full-range 16-bit is divided by 65535). Bool -> 0/255; uint8 unchanged
    whatever the setting; float data: `float_counts` (whole numbers: counts, as 16-bit) or x 255 (0..1)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        counts = float_counts(arr, label, setting)
        if counts is None:  # 0..1, a small overshoot clipped
            return (arr.astype(np.float32).clip(0, 1) * 255.0).round().astype(np.uint8)
        arr = counts
    if np.issubdtype(arr.dtype, np.integer):
        scale = 255.0 / (2 ** depth_of(arr, bit_depth, label, setting) - 1)
        return (arr.astype(np.float32) * scale).round().clip(0, 255).astype(np.uint8)
    raise BitDepthError(f"{label}: pixel type {arr.dtype} is not an image's; expected integers or floats")


def float_counts(arr: np.ndarray, label: Any, setting: str = "data.bit_depth") -> np.ndarray | None:
    """How a float image is read, one rule for every file (a per-image guess made one 1.02 pixel turn a
    field black, and 12-bit counts all white): whole numbers 0..65535 (beyond 0/1 alone) are camera counts,
    returned as uint16 to be scaled like a 16-bit image (`setting` applies); values within 0..1 (an
    overshoot up to FLOAT_SLACK clipped, with a warning naming the file) give None: scaled by 255.
    Anything else (NaN, 0..255 with fractions, negative counts) is one BitDepthError naming the file."""
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    finite = bool(np.isfinite(arr).all())
    if finite and lo >= 0 and hi <= 65535 and hi > 1 and bool((arr == np.floor(arr)).all()):
        return arr.astype(np.uint16)
    if finite and lo >= -FLOAT_SLACK and hi <= 1 + FLOAT_SLACK:
        if lo < 0 or hi > 1:
            warnings.warn(f"{label}: float image values {lo:g}..{hi:g} overshoot 0..1 slightly; clipped to 0..1", stacklevel=4)
        return None
    shown = "NaN or infinite values" if not finite else f"values {lo:g}..{hi:g}"
    raise BitDepthError(
        f"{label}: floating-point image with {shown}; expected values within 0..1 (scaled by 255) or whole-number "
        f"counts 0..65535 (read like a 16-bit image at {setting}): save it as 8/16-bit integers or scale it to 0..1"
    )
