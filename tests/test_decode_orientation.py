"""One decode for files and uploads, and the Orientation rule: every image and mask is read turned by
its EXIF / TIFF Orientation tag (as viewers show it), whichever decoder (Pillow, OpenCV, tifffile) and
whichever path (a file: training/predict; bytes: the web app) reads it. A grey uncompressed TIFF read
from a path used to be scrambled (Pillow memory-mapped it, skipping its turn), JPEG/PNG EXIF was
ignored, and a mask drawn on the image as shown trained off its cells."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from wbc.data import imageio
from wbc.data.manifest import ManifestError, MaskEncoding, Sample, load_sample
from wbc.data.orientation import orient
from wbc.predict_io import read_image

TAG = [(274, "H", 1, 6, True)]


def _grey(h: int = 40, w: int = 60) -> np.ndarray:
    """An asymmetric picture: any turn or flip changes it."""
    return (np.arange(h * w).reshape(h, w) % 251).astype(np.uint8)


def _readers(path: Path) -> dict[str, np.ndarray]:
    """The three paths a file is read by: training (read_rgb), predict (read_image), web (decode_bytes)."""
    return {
        "train": imageio.read_rgb(path),
        "predict": read_image(path, 50, None),
        "web": imageio.as_rgb(imageio.decode_bytes(path.read_bytes(), path.name), path.name),
    }


def _exif(o: int) -> bytes:
    ex = Image.Exif()
    ex[0x0112] = o
    return ex.tobytes()


@pytest.mark.parametrize("o", range(1, 9))
def test_orient_matches_pillows_exif_transpose(o):
    raw = _grey(3, 5)
    buf = io.BytesIO()
    Image.fromarray(raw).save(buf, "PNG", exif=_exif(o))
    with Image.open(buf) as im:
        shown = np.asarray(ImageOps.exif_transpose(im))
    np.testing.assert_array_equal(orient(raw, o), shown)


@pytest.mark.parametrize("o", [3, 5, 6, 7, 8])
@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_grey_uncompressed_tiff_with_orientation_is_read_upright_from_a_path(tmp_path, o, dtype):
    raw = _grey().astype(dtype) * (257 if dtype == "uint16" else 1)
    path = tmp_path / "g.tif"
    tifffile.imwrite(path, raw, extratags=[(274, "H", 1, o, True)])
    want = np.repeat(orient(_grey(), o)[..., None], 3, axis=2)
    for name, got in _readers(path).items():
        np.testing.assert_array_equal(got, want, err_msg=name)
    np.testing.assert_array_equal(imageio.read_mask(path), orient(raw, o))


@pytest.mark.parametrize(
    "name, save",
    [
        ("exif.jpg", lambda p, a: Image.fromarray(a).save(p, quality=100, subsampling=0, exif=_exif(6))),
        ("exif.png", lambda p, a: Image.fromarray(a).save(p, exif=_exif(6))),
        ("tag.tif", lambda p, a: tifffile.imwrite(p, a, photometric="rgb", extratags=TAG)),
        ("tag16.tif", lambda p, a: tifffile.imwrite(p, a.astype(np.uint16) * 257, photometric="rgb", extratags=TAG)),
        ("planar16.tif", lambda p, a: tifffile.imwrite(p, np.moveaxis(a.astype(np.uint16) * 257, -1, 0), photometric="rgb",
                                                      planarconfig="separate", extratags=TAG)),
        ("float.tif", lambda p, a: tifffile.imwrite(p, a.astype(np.float32) / 255, photometric="rgb", extratags=TAG)),
    ],
)
def test_every_format_and_decoder_applies_the_orientation(tmp_path, name, save):
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, :30] = (200, 40, 40)
    rgb[:8, :10] = (40, 200, 40)
    path = tmp_path / name
    save(path, rgb)
    for reader, got in _readers(path).items():
        assert got.shape == (60, 40, 3), (reader, got.shape)
        tol = 3 if name.endswith(".jpg") else 0
        assert np.abs(got.astype(int) - np.rot90(rgb, -1)).max() <= tol, reader


def test_sixteen_bit_png_with_exif_read_through_opencv_is_turned(tmp_path):
    rgb16 = np.zeros((40, 60, 3), np.uint16)
    rgb16[:, :30] = 51400
    ok, buf = cv2.imencode(".png", rgb16[..., ::-1])
    png = buf.tobytes()
    body = _exif(6)[6:] if _exif(6).startswith(b"Exif\x00\x00") else _exif(6)
    import struct
    import zlib

    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body) & 0xFFFFFFFF)
    path = tmp_path / "c16.png"
    path.write_bytes(png[:33] + chunk + png[33:])
    for reader, got in _readers(path).items():
        np.testing.assert_array_equal(got, np.rot90(rgb16 // 257, -1).astype(np.uint8), err_msg=reader)


@pytest.mark.parametrize("h, w", [(40, 60), (48, 48)])
def test_mask_drawn_on_the_image_as_shown_lines_up(tmp_path, h, w):
    """A camera JPEG with Orientation 6 and a mask drawn on it in a viewer (no tag): the square case
    used to train with the mask off its cells, silently."""
    img = np.full((h, w, 3), 220, np.uint8)
    img[5:15, 5:25] = (90, 40, 140)
    Image.fromarray(img).save(tmp_path / "a.jpg", quality=100, exif=_exif(6))
    shown = np.rot90(img, -1)
    Image.fromarray(np.where(shown[..., 0] < 150, 255, 0).astype(np.uint8)).save(tmp_path / "a_mask.png")
    enc = MaskEncoding.from_config({"mode": "grey", "background": [[0, 0]], "nucleus": [[255, 255]]})
    image, labels = load_sample(Sample("a", tmp_path / "a.jpg", tmp_path / "a_mask.png", "x"), enc)
    dark = image[..., 0] < 150
    assert dark.sum() == 200 and (labels[dark] == 2).all()


def test_size_mismatch_names_the_orientation_and_the_swapped_size(tmp_path):
    img = np.full((40, 60, 3), 200, np.uint8)
    Image.fromarray(img).save(tmp_path / "a.jpg", exif=_exif(6))
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(tmp_path / "a_mask.png")  # drawn on the stored pixels
    with pytest.raises(ManifestError) as err:
        load_sample(Sample("a", tmp_path / "a.jpg", tmp_path / "a_mask.png", "x"), MaskEncoding())
    msg = str(err.value)
    assert "mask size 60x40 differs from image a.jpg size 40x60" in msg
    assert "a.jpg has Orientation 6 (rotated 90° clockwise)" in msg and "swapped size 40x60 would match" in msg
