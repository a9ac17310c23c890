"""Image files: what the readers accept exactly (8/16-bit, grey, palette, TIFF, BMP) and one clear
error naming the file for everything they cannot read."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.helpers_data import (
    cell,
    grey_mask,
    make_csv_dataset,
    truncate,
    write_image,
)
from wbc.data import imageio
from wbc.data.imageio import ImageReadError, read_mask, read_rgb
from wbc.data.manifest import (
    ManifestError,
    MaskEncoding,
    Sample,
    load_sample,
)

GREY = MaskEncoding()  # background 0, cytoplasm 128, nucleus 255


def _sample(root: Path, stem: str = "a_000", class_name: str = "a") -> Sample:
    return Sample(
        id=stem, image=root / "images" / f"{stem}.png", mask=root / "masks" / f"{stem}.png", class_name=class_name
    )


# --------------------------------------------------------------------------- unreadable image files


def _bad_truncated(path: Path) -> None:
    write_image(path, cell(48)[0])
    truncate(path)


def _bad_zero(path: Path) -> None:
    path.write_bytes(b"")


def _bad_text(path: Path) -> None:
    path.write_text("image_id,class\n1,neutrophil\n")


def _bad_folder(path: Path) -> None:
    path.mkdir()


@pytest.mark.parametrize(
    ("make_bad", "expected"),
    [
        (_bad_truncated, "truncated"),
        (_bad_zero, "empty (0 bytes)"),
        (_bad_text, "not an image"),
        (_bad_folder, "not a regular file"),
    ],
    ids=["truncated", "zero-byte", "text-with-png-extension", "folder"],
)
@pytest.mark.parametrize("reader", [read_rgb, read_mask], ids=["read_rgb", "read_mask"])
def test_bad_image_file_raises_image_read_error_naming_file(tmp_path, make_bad, expected, reader):
    path = tmp_path / "bad.png"
    make_bad(path)
    with pytest.raises(ImageReadError) as info:
        reader(path)
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_missing_image_file_raises_naming_file(tmp_path):
    with pytest.raises(ImageReadError, match=r"nothere\.png: file not found"):
        read_rgb(tmp_path / "nothere.png")


def test_permission_denied_is_reported_as_unreadable(tmp_path, monkeypatch):
    path = write_image(tmp_path / "locked.png", cell(16)[0])

    def denied(fp, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(fp))

    monkeypatch.setattr(imageio.Image, "open", denied)
    with pytest.raises(ImageReadError, match=r"locked\.png: cannot be read \(Permission denied\)"):
        read_rgb(path)


@pytest.mark.parametrize("which", ["image", "mask"])
def test_load_sample_turns_bad_file_into_manifest_error(tmp_path, which):
    root = make_csv_dataset(tmp_path / "ds", {"a": 1})
    sample = _sample(root)
    truncate(getattr(sample, which))
    with pytest.raises(ManifestError) as info:
        load_sample(sample, GREY)
    assert str(getattr(sample, which)) in str(info.value)
    assert "truncated" in str(info.value)




# --------------------------------------------------------------------------- accepted inputs


def _cell_rgb(h: int = 24, w: int = 20) -> np.ndarray:
    return cell((h, w), seed=3)[0]


def test_reads_8bit_rgb_png_exactly(tmp_path):
    img = _cell_rgb()
    out = read_rgb(write_image(tmp_path / "x.png", img))
    assert out.dtype == np.uint8 and out.shape == (24, 20, 3)
    np.testing.assert_array_equal(out, img)


def test_reads_grey_png_as_three_equal_channels(tmp_path):
    grey = _cell_rgb()[..., 0]
    out = read_rgb(write_image(tmp_path / "g.png", grey))
    assert out.shape == (24, 20, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_reads_rgba_png_dropping_alpha(tmp_path):
    img = _cell_rgb()
    rgba = np.dstack([img, np.full(img.shape[:2], 9, np.uint8)])
    out = read_rgb(write_image(tmp_path / "a.png", rgba))
    np.testing.assert_array_equal(out, img)


def test_reads_palette_png(tmp_path):
    img = _cell_rgb()
    Image.fromarray(img).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(tmp_path / "p.png")
    out = read_rgb(tmp_path / "p.png")
    assert out.shape == (24, 20, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - img).mean() < 20


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 1000, 32896], [40000, 60000, 65535, 12850]], np.uint16)
    out = read_rgb(write_image(tmp_path / "g16.png", values))
    assert out.dtype == np.uint8 and out.shape == (2, 4, 3)
    np.testing.assert_array_equal(out[..., 0], np.round(values / 257.0).astype(np.uint8))
    assert len(np.unique(out)) == 8  # clipping to 255 would merge the bright values


def test_16bit_rgb_png_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    img16 = np.dstack([ramp, ramp // 2, 65535 - ramp])
    out = read_rgb(write_image(tmp_path / "c16.png", img16))
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    expected = img16 / 257.0
    assert np.abs(out - expected).max() <= 1.0
    assert out[..., 0].min() == 0 and out[..., 0].max() == 255 and len(np.unique(out[..., 0])) > 50


def test_reads_tiff_rgb_and_16bit(tmp_path):
    img = _cell_rgb()
    tifffile.imwrite(tmp_path / "x.tif", img)
    np.testing.assert_array_equal(read_rgb(tmp_path / "x.tif"), img)
    ramp = np.linspace(0, 65535, 24 * 20).astype(np.uint16).reshape(24, 20)
    tifffile.imwrite(tmp_path / "x16.tiff", ramp)
    out = read_rgb(tmp_path / "x16.tiff")
    assert out.shape == (24, 20, 3) and out.max() == 255 and np.abs(out[..., 1] - ramp / 257.0).max() <= 1.0


def test_reads_bmp(tmp_path):
    img = _cell_rgb()
    np.testing.assert_array_equal(read_rgb(write_image(tmp_path / "x.bmp", img)), img)


def test_mask_keeps_raw_values_and_collapses_grey_rgb(tmp_path):
    mask = grey_mask(cell(16)[1])
    stored_as_rgb = write_image(tmp_path / "m.png", np.repeat(mask[..., None], 3, axis=2))
    out = read_mask(stored_as_rgb)
    assert out.shape == (16, 16)
    np.testing.assert_array_equal(out, mask)


# --------------------------------------------------------------------------- bit depth (10/12/14-bit cameras)

# effective bits -> the factor an 8-bit picture's values are stored with in a 16-bit file
STORED = {8: 1, 10: 4, 12: 16, 14: 64, 16: 257}


def _write16(path: Path, arr: np.ndarray) -> Path:
    if path.suffix == ".tif":
        tifffile.imwrite(path, arr, photometric="rgb" if arr.ndim == 3 else "minisblack")
        return path
    return write_image(path, arr)


def _decoded(path: Path, via: str) -> np.ndarray:
    if via == "bytes":  # the web upload: decode_bytes, then as_rgb (wbc.web.engine)
        return imageio.as_rgb(imageio.decode_bytes(path.read_bytes(), path.name), path.name)
    return read_rgb(path)


@pytest.mark.parametrize("via", ["file", "bytes"])
@pytest.mark.parametrize("kind", ["rgb.png", "grey.png", "rgb.tif", "grey.tif"])
@pytest.mark.parametrize("bits", sorted(STORED))
def test_16bit_files_are_scaled_by_their_effective_bit_depth(tmp_path, bits, kind, via):
    """A 10/12/14-bit camera frame in a 16-bit file reads as the 8-bit picture it holds (dividing by
    65535 made it nearly black), 8-bit values in 16 bits stay as they are (16-bit RGB read as its
    high byte was black), full-range 16-bit as before; grey and RGB, PNG and TIFF alike."""
    img = _cell_rgb()
    assert img.max() >= 128  # a bright background, as in every smear: max reveals the depth
    picture = img if kind.startswith("rgb") else img[..., 0]
    path = _write16(tmp_path / f"x{bits}{kind}", picture.astype(np.uint16) * STORED[bits])
    out = _decoded(path, via)
    expected = picture if picture.ndim == 3 else np.repeat(picture[..., None], 3, axis=2)
    assert out.dtype == np.uint8 and out.shape == expected.shape
    assert np.abs(out.astype(int) - expected).max() <= 1


@pytest.mark.parametrize(("top", "bits"), [(255, 8), (256, 10), (1023, 10), (4095, 12), (4096, 14), (16383, 14), (65535, 16)])
def test_to_uint8_divides_by_the_smallest_depth_holding_the_max(top, bits):
    arr = np.array([[0, top // 2, top]], np.uint16)
    out = imageio.to_uint8(arr)
    np.testing.assert_array_equal(out, np.round(arr / (2**bits - 1) * 255).astype(np.uint8))
    assert out.max() == round(top / (2**bits - 1) * 255)
    np.testing.assert_array_equal(imageio.to_uint8(np.dstack([arr] * 3))[..., 1], out)  # colour as grey


def test_16bit_rgb_pixel_limit_is_checked_before_decoding(tmp_path, monkeypatch):
    import cv2

    path = write_image(tmp_path / "big16.png", np.full((40, 50, 3), 4000, np.uint16))
    monkeypatch.setattr(cv2, "imdecode", lambda *a, **k: pytest.fail("decoded before the pixel check"))
    with pytest.raises(ImageReadError, match=rf"{re.escape(str(path))}: 50x40 = 2000 pixels exceeds the limit max_pixels=1000"):
        read_rgb(path, max_pixels=1000)


@pytest.mark.parametrize("name", ["t16.png", "t16.tif"])
def test_truncated_16bit_rgb_is_an_error_naming_the_file(tmp_path, name):
    path = truncate(_write16(tmp_path / name, np.tile(np.arange(64, dtype=np.uint16)[:, None, None] * 60, (1, 48, 3))))
    with pytest.raises(ImageReadError, match=re.escape(str(path))):
        read_rgb(path)


def test_bigtiff_is_read_by_predict_and_accepted_by_the_web_upload(tmp_path):
    from wbc.predict_io import read_image
    from wbc.web.engine import MAGIC

    img = _cell_rgb()
    tifffile.imwrite(tmp_path / "big.tif", img, bigtiff=True, photometric="rgb")
    assert (tmp_path / "big.tif").read_bytes()[:4] == b"II+\x00"
    np.testing.assert_array_equal(read_image(tmp_path / "big.tif", 50, None), img)
    tifffile.imwrite(tmp_path / "big12.tif", img.astype(np.uint16) * 16, bigtiff=True, photometric="rgb", byteorder=">")
    data = (tmp_path / "big12.tif").read_bytes()
    assert data.startswith(b"MM\x00+") and data.startswith(MAGIC)
    assert np.abs(read_image(tmp_path / "big12.tif", 50, None).astype(int) - img).max() <= 1


def test_16bit_instance_labels_keep_their_ids(tmp_path):
    """Label maps are read as stored (never rescaled like images): predict's labels PNG and a
    dataset's instance map."""
    from wbc.cell_outputs import label_png
    from wbc.data.manifest import load_instances

    labels = np.zeros((20, 30), np.int32)
    labels[2:6, 3:9], labels[10:15, 20:28], labels[16:19, 1:4] = 1, 2, 300
    (tmp_path / "labels.png").write_bytes(label_png(labels))
    np.testing.assert_array_equal(imageio.decode_raw(tmp_path / "labels.png"), labels)
    sample = Sample(id="a", image=tmp_path / "labels.png", mask=None, class_name="a", instances=tmp_path / "labels.png")
    np.testing.assert_array_equal(load_instances(sample), labels)
