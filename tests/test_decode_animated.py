"""An animated PNG (several frames) is refused naming the file and its frame count, as a multi-page TIFF is:
frame 1 alone was read silently on every path. A one-frame PNG is read as before."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wbc.data.imageio import ImageReadError, decode_bytes, read_rgb


def test_an_animated_png_is_refused_on_every_path(tmp_path: Path) -> None:
    frames = [Image.fromarray(np.full((20, 30, 3), v, np.uint8)) for v in (40, 200)]
    path = tmp_path / "a.png"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageReadError, match=r"a\.png: animated PNG with 2 frames"):
        read_rgb(path)
    with pytest.raises(ImageReadError, match=r"animated PNG with 2 frames"):
        decode_bytes(path.read_bytes(), "a.png")
    one = io.BytesIO()
    frames[0].save(one, format="PNG")
    assert decode_bytes(one.getvalue(), "b.png").shape[:2] == (20, 30)
