"""What is an image and what kind, decided by the first bytes on every path (a multi-page TIFF named
.png was read as page 1 in training and predict but refused on upload; a planar 16-bit TIFF named .png
was misread and a float one refused; WebP/GIF trained but predict and the web refused them, and
predict's folder listing skipped them silently); palette masks read by their indices for a grey
encoding, and a clear message when they do not decode."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from wbc.data import imageio
from wbc.data.imageio import ImageReadError, header_size
from wbc.data.manifest import ManifestError, MaskEncoding, Sample, load_sample, read_manifest
from wbc.predict_io import list_inputs, read_image

RGB = np.stack([*np.meshgrid(np.arange(48) * 5 % 256, np.arange(32) * 7 % 256), np.full((32, 48), 90)], -1).astype(np.uint8)


def _all_paths(path: Path) -> list:
    """Training, predict and web reads of one file: each an array or the ImageReadError raised."""
    out = []
    for read in (imageio.read_rgb, lambda p: read_image(p, 50, None),
                 lambda p: imageio.as_rgb(imageio.decode_bytes(p.read_bytes(), p.name), p.name)):
        try:
            out.append(read(path))
        except ImageReadError as err:
            out.append(err)
    return out


def test_multi_page_tiff_named_png_is_refused_everywhere(tmp_path):
    path = tmp_path / "stack.png"
    tifffile.imwrite(path, np.stack([RGB[..., 0]] * 5))
    for got in _all_paths(path):
        assert isinstance(got, ImageReadError) and "multi-page TIFF with 5 pages" in str(got)
    with pytest.raises(ImageReadError, match="multi-page TIFF"):
        imageio.read_mask(path)


@pytest.mark.parametrize("kind", ["planar16", "float32"])
def test_tiff_content_under_another_name_is_read_as_a_tiff(tmp_path, kind):
    path = tmp_path / "x.png"
    if kind == "planar16":
        tifffile.imwrite(path, np.moveaxis(RGB.astype(np.uint16) * 257, -1, 0), photometric="rgb", planarconfig="separate")
    else:
        tifffile.imwrite(path, RGB.astype(np.float32) / 255, photometric="rgb")
    for got in _all_paths(path):
        np.testing.assert_array_equal(got, RGB)
    assert header_size(path)[:2] == (48, 32)


def _webp(path: Path) -> Path:
    Image.fromarray(RGB).save(path, format="WEBP", lossless=True)
    return path


@pytest.mark.parametrize("name", ["a.webp", "a.png"])
def test_webp_is_refused_on_every_path(tmp_path, name):
    for got in _all_paths(_webp(tmp_path / name)):
        assert isinstance(got, ImageReadError) and "not an image file" in str(got)
    with pytest.raises(ImageReadError, match=r"WebP content"):
        imageio.read_rgb(tmp_path / name)


def test_training_refuses_what_predict_refuses(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    _webp(tmp_path / "images" / "a.webp")
    Image.fromarray(RGB).quantize(64).save(tmp_path / "images" / "b.gif")
    for n in "ab":
        Image.fromarray(np.zeros((32, 48), np.uint8)).save(tmp_path / "masks" / f"{n}.png")
    (tmp_path / "labels.csv").write_text("image,mask,class_name\nimages/a.webp,masks/a.png,lym\nimages/b.gif,masks/b.png,lym\n")
    for sample, kind in zip(read_manifest(tmp_path).samples, ("WebP", "GIF")):
        with pytest.raises(ManifestError, match=rf"{sample.image.name}: not an image file .*\({kind} content\)"):
            load_sample(sample, MaskEncoding())


def test_list_inputs_warns_naming_the_image_files_it_skips(tmp_path, caplog):
    Image.fromarray(RGB).save(tmp_path / "a.png")
    _webp(tmp_path / "b.webp")
    Image.fromarray(RGB).quantize(64).save(tmp_path / "c.gif")
    (tmp_path / "notes.txt").write_text("x")
    with caplog.at_level(logging.WARNING, logger="wbc"):
        assert [f.name for f in list_inputs(tmp_path)] == ["a.png"]
    assert "skipped 2 image file(s)" in caplog.text and "b.webp" in caplog.text and "c.gif" in caplog.text
    assert "notes.txt" not in caplog.text


def _palette_mask(path: Path, palette: list[int]) -> Path:
    idx = np.zeros((32, 48), np.uint8)
    idx[5:20, 5:20] = 1
    idx[8:14, 8:14] = 2
    im = Image.fromarray(idx, "P")
    im.putpalette(palette + [0] * (768 - len(palette)))
    im.save(path)
    Image.fromarray(RGB).save(path.with_name("img.png"))
    return path


def test_a_colour_palette_mask_gives_its_indices_to_a_grey_encoding(tmp_path):
    mask = _palette_mask(tmp_path / "m.png", [0, 0, 0, 128, 0, 0, 0, 128, 0])  # colours standing for classes 0 / 1 / 2
    enc = MaskEncoding.from_config({"mode": "grey", "background": [[0, 0]], "cytoplasm": [[1, 1]], "nucleus": [[2, 2]]})
    _, labels = load_sample(Sample("a", tmp_path / "img.png", mask, "x"), enc)
    assert (labels == 2).sum() == 36 and (labels == 1).sum() == 225 - 36


def test_a_grey_palette_mask_gives_the_greys_it_shows(tmp_path):
    mask = _palette_mask(tmp_path / "m.png", [0, 0, 0, 128, 128, 128, 255, 255, 255])  # indices 0..2 shown as 0 / 128 / 255
    _, labels = load_sample(Sample("a", tmp_path / "img.png", mask, "x"), MaskEncoding())  # the default 0 / 128 / 255
    assert (labels == 2).sum() == 36 and (labels == 1).sum() == 225 - 36


def test_palette_mask_that_does_not_decode_names_indices_and_colours(tmp_path):
    mask = _palette_mask(tmp_path / "m.png", [0, 0, 0, 128, 0, 0, 0, 128, 0])
    with pytest.raises(ManifestError) as err:  # the default grey encoding 0/128/255 reads the colour palette's indices 0/1/2
        load_sample(Sample("a", tmp_path / "img.png", mask, "x"), MaskEncoding())
    msg = str(err.value)
    assert "palette image: indices 0..2 map to colours {0: [0, 0, 0], 1: [128, 0, 0], 2: [0, 128, 0]}" in msg
    assert "use the rgb encoding with these colours" in msg


def test_palette_mask_with_an_rgb_encoding_reads_its_colours(tmp_path):
    mask = _palette_mask(tmp_path / "m.png", [0, 0, 0, 128, 0, 0, 0, 128, 0])
    enc = MaskEncoding.from_config({"mode": "rgb", "background": [[0, 0, 0]], "cytoplasm": [[128, 0, 0]], "nucleus": [[0, 128, 0]]})
    _, labels = load_sample(Sample("a", tmp_path / "img.png", mask, "x"), enc)
    assert (labels == 2).sum() == 36
