"""TIFF layouts: planar (channels-first) colour is read like interleaved colour, and a multi-page
stack is one error naming the file and its pages, whichever decoder (Pillow, OpenCV, tifffile) opens
it; Pillow used to read page 1 of a stack silently, tifffile's whole stack failed as "unsupported
image shape"."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.helpers_data import cell
from wbc.data import imageio
from wbc.data.imageio import ImageReadError, read_mask, read_rgb


def _picture(h: int = 14, w: int = 18) -> np.ndarray:
    img = cell((h, w), seed=5)[0]
    assert img.max() >= 128  # a bright background: the bit-depth rule reads 8-bit values as they are
    return img


def _upload(path: Path) -> np.ndarray:
    """The web upload's path: decode_bytes, then as_rgb (wbc.web.engine)."""
    return imageio.as_rgb(imageio.decode_bytes(path.read_bytes(), path.name), path.name)


READERS = [read_rgb, _upload]

# dtype -> (how the 8-bit picture is stored, whether Pillow opens the planar file at all)
PLANAR = {
    "uint8": lambda a: a,  # Pillow opens it
    "uint16-lzma": lambda a: a.astype(np.uint16) * 257,  # Pillow opens it, OpenCV cannot decode LZMA: tifffile
    "int16": lambda a: a.astype(np.int16),  # only tifffile
    "uint32": lambda a: a.astype(np.uint32) * 257,  # only tifffile
    "float32": lambda a: a.astype(np.float32) / 255,  # only tifffile
}


@pytest.mark.parametrize("reader", READERS, ids=["read_rgb", "upload"])
@pytest.mark.parametrize("alpha", [False, True], ids=["rgb", "rgba"])
@pytest.mark.parametrize("stored", sorted(PLANAR))
def test_planar_colour_tiff_reads_as_the_picture(tmp_path, stored, alpha, reader):
    img = _picture()
    data = PLANAR[stored](img.transpose(2, 0, 1))  # (3, H, W): one plane per channel
    extra = {}
    if alpha:
        data = np.concatenate([data, data[:1]])
        extra["extrasamples"] = ["unassalpha"]
    path = tmp_path / f"planar_{stored}.tif"
    tifffile.imwrite(path, data, photometric="rgb", planarconfig="separate", compression="lzma" if "lzma" in stored else None, **extra)
    out = reader(path)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - img).max() <= 1


@pytest.mark.parametrize("stored", ["uint8", "int16", "float32"])
def test_planar_colour_tiff_mask_is_height_width_colour(tmp_path, stored):
    code = np.array([[255, 255, 255], [0, 0, 255], [0, 255, 255]], np.uint8)
    labels = cell((10, 12), seed=1)[1]
    mask = code[labels]
    path = tmp_path / "mask.tif"
    tifffile.imwrite(path, PLANAR[stored](mask.transpose(2, 0, 1)) * (255 if stored == "float32" else 1), photometric="rgb", planarconfig="separate")
    out = read_mask(path)
    assert out.shape == mask.shape
    np.testing.assert_array_equal(out, mask)


def _stack(pages: int, dtype: str, colour: bool) -> np.ndarray:
    img = _picture()
    page = img if colour else img[..., 0]
    return np.stack([page] * pages).astype(dtype)


STACKS = {  # name -> (pages, dtype, colour, compression)
    "grey8": (5, "uint8", False, None),  # Pillow opens it (page 1)
    "grey16": (5, "uint16", False, None),  # Pillow opens it (page 1)
    "grey8-3-pages": (3, "uint8", False, None),  # shape (3, H, W) but pages, not planar colour
    "rgb16": (4, "uint16", True, None),  # Pillow opens it, OpenCV decodes page 1
    "rgb16-lzma": (2, "uint16", True, "lzma"),  # Pillow opens it, OpenCV cannot: tifffile
    "float64": (5, "float64", False, None),  # only tifffile
}


@pytest.mark.parametrize("reader", [*READERS, read_mask], ids=["read_rgb", "upload", "read_mask"])
@pytest.mark.parametrize("name", sorted(STACKS))
def test_multi_page_tiff_is_one_error_naming_the_file(tmp_path, name, reader):
    pages, dtype, colour, compression = STACKS[name]
    path = tmp_path / f"stack_{name}.tif"
    tifffile.imwrite(path, _stack(pages, dtype, colour), photometric="rgb" if colour else "minisblack", compression=compression)
    label = path.name if reader is _upload else str(path)
    with pytest.raises(ImageReadError, match=re.escape(label)) as info:
        reader(path)
    message = str(info.value)
    assert f"multi-page TIFF with {pages} pages" in message and "save one field per file" in message
    assert "expected one 2-D image, grey or RGB" in message


def test_tiff_with_a_thumbnail_reads_its_first_image(tmp_path):
    """A second image of another size (a thumbnail, a preview) is not a stack: the first is read."""
    img = _picture()
    path = tmp_path / "with_thumb.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(img, photometric="rgb")
        tif.write(img[::2, ::2], photometric="rgb")
    np.testing.assert_array_equal(read_rgb(path), img)
    np.testing.assert_array_equal(_upload(path), img)


@pytest.mark.parametrize("compression", [None, "zlib", "lzma"])
def test_a_16_bit_planar_tiff_reads_as_its_interleaved_twin(tmp_path: Path, compression: str | None) -> None:
    """Uncompressed and zlib 16-bit planar files were decoded to wrong pixels silently (PIL's 8-bit
    reading of the first plane's bytes; OpenCV's plane order): tifffile reads them now."""
    rgb16 = np.random.default_rng(0).integers(0, 4096, (20, 30, 3)).astype(np.uint16)
    rgb16[0, 0] = 4095  # a 12-bit camera frame
    want = np.round(rgb16.astype(np.float32) * 255 / 4095).astype(np.uint8)
    path = tmp_path / "planar16.tif"
    tifffile.imwrite(path, rgb16.transpose(2, 0, 1), photometric="rgb", planarconfig="separate", compression=compression)
    assert np.array_equal(read_rgb(path), want)
    assert np.array_equal(imageio.as_rgb(imageio.decode_bytes(path.read_bytes(), path.name), path.name), want)
    mask = np.zeros((20, 30, 3), np.uint16)
    mask[5:10, 5:10], mask[12:15] = [65535, 0, 0], [0, 65535, 0]
    tifffile.imwrite(tmp_path / "mask.tif", mask.transpose(2, 0, 1), photometric="rgb", planarconfig="separate", compression=compression)
    assert np.array_equal(read_mask(tmp_path / "mask.tif"), (mask // 257).astype(np.uint8))
