"""Mask values as a mask encoding names them: 8-bit colour codes from 16-bit colour masks
(`mask_codes`), and what a palette mask holds when its values do not decode (`palette_note`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wbc.data.formats import ImageReadError


def mask_codes(arr: np.ndarray, label: Any) -> np.ndarray:
    """A colour mask wider than 8 bits as the 8-bit colour codes a mask encoding names (its RGB
    colours are 8-bit): values 0..255 stored in 16 bits stay as they are, full-range values (all
    multiples of 257 for 16 bits, 255 * 257 = 65535) are divided. Anything else (1000; 255 beside
    65535) has no exact 8-bit code, and a guess would mislabel pixels silently: refused."""
    if arr.dtype == np.uint8 or not np.issubdtype(arr.dtype, np.integer):
        return arr
    if int(arr.min(initial=0)) >= 0 and int(arr.max(initial=0)) <= 255:
        return arr.astype(np.uint8)
    bits = 8 * arr.dtype.itemsize
    step = (2**bits - 1) // 255 if np.issubdtype(arr.dtype, np.unsignedinteger) else None
    if step is not None and not (arr % step).any():
        return (arr // step).astype(np.uint8)
    full = f" nor all multiples of {step} (full-range {bits} bits)" if step else ""
    raise ImageReadError(
        f"{label}: {bits}-bit colour mask whose values {np.unique(arr)[:6].tolist()} are neither all 0..255 "
        f"(8-bit codes stored in {bits} bits){full}; expected data.mask_encoding's 8-bit colour codes "
        "stored one of these ways: save the mask as 8-bit RGB"
    )


def palette_note(path: Path) -> str | None:
    """For a palette (P-mode) mask that did not decode: which indices it uses and their colours, since a
    grey encoding reads a colour palette's indices (a grey palette's greys) and an rgb encoding the colours; None for
    any other image."""
    try:
        with Image.open(path) as im:
            if im.mode != "P":
                return None
            used = np.unique(np.asarray(im)).tolist()
            rgb = im.getpalette("RGB") or []
    except Exception:  # noqa: BLE001 - only a hint for an error already being raised
        return None
    colours = {i: rgb[3 * i : 3 * i + 3] for i in used[:8]}
    more = f" and {len(used) - 8} more" if len(used) > 8 else ""
    return (f"palette image: indices {used[0]}..{used[-1]} map to colours {colours}{more}; a grey mask_encoding reads a "
            "colour palette's indices (a grey palette's greys), an rgb one the colours: list those values, save the mask as grey, or use the rgb encoding with these colours")

