"""16-bit colour masks: read through the dataset's own path (`load_sample` with a `mask_encoding`
from conf/data) they give the 8-bit colour codes the encoding names, or one error naming the file.
Pillow alone read them by their high byte, so 8-bit codes stored in 16 bits (max 255) came out black."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from omegaconf import OmegaConf

from tests.helpers_data import cell, write_image
from wbc.data.imageio import ImageReadError, read_mask
from wbc.data.manifest import ManifestError, MaskEncoding, Sample, load_sample

ROOT = Path(__file__).resolve().parents[1]
# The ALL-IDB2 colour code (white background, blue cytoplasm, cyan nucleus) as the config gives it.
ALL_IDB2 = MaskEncoding.from_config(OmegaConf.to_container(OmegaConf.load(ROOT / "conf/data/all_idb2.yaml").mask_encoding))
# A colour code with mid-range values: a high-byte or rescaling reader would lose them.
ODD = MaskEncoding.from_config({"mode": "rgb", "background": [[0, 0, 0]], "cytoplasm": [[12, 200, 7]], "nucleus": [[128, 64, 250]]})


def _colours(encoding: MaskEncoding) -> np.ndarray:
    return np.array([encoding.background[0], encoding.cytoplasm[0], encoding.nucleus[0]], np.uint16)


def _write(path: Path, arr: np.ndarray) -> Path:
    if path.suffix == ".tif":
        tifffile.imwrite(path, arr, photometric="rgb")
        return path
    return write_image(path, arr)


def _sample(tmp_path: Path, mask: np.ndarray, name: str) -> Sample:
    image = write_image(tmp_path / "image.png", cell(mask.shape[:2])[0])
    return Sample(id="a", image=image, mask=_write(tmp_path / name, mask), class_name="a")


@pytest.mark.parametrize("alpha", [False, True], ids=["rgb", "rgba"])
@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("factor", [1, 257], ids=["8bit-values", "full-range"])
@pytest.mark.parametrize("encoding", [ALL_IDB2, ODD], ids=["all_idb2", "odd-colours"])
def test_16bit_colour_mask_gives_the_encodings_labels(tmp_path, encoding, factor, suffix, alpha):
    labels = cell((20, 24), seed=1)[1]
    mask16 = _colours(encoding)[labels] * factor
    if alpha:  # an alpha channel with any values is dropped, never part of the colour code
        mask16 = np.dstack([mask16, np.full(labels.shape, 1234, np.uint16)])
    _, got = load_sample(_sample(tmp_path, mask16, f"m{suffix}"), encoding)
    np.testing.assert_array_equal(got, labels)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_colour_mask_reads_as_8bit_codes(tmp_path, suffix):
    labels = cell((12, 16), seed=2)[1]
    colours = _colours(ODD)
    for factor in (1, 257):
        out = read_mask(_write(tmp_path / f"m{factor}{suffix}", colours[labels] * factor))
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, colours[labels].astype(np.uint8))


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("values", [(0, 1000, 65535), (0, 255, 65535)], ids=["1000", "mixed-255-and-65535"])
def test_16bit_colour_mask_that_cannot_be_mapped_exactly_is_one_error(tmp_path, suffix, values):
    """Neither 8-bit values as they are nor full-range (v * 257): refused, naming the file and what is
    expected, instead of a silent high byte (1000 -> 3) or a wrong guess."""
    labels = cell((12, 16), seed=2)[1]
    mask16 = np.array([[0, 0, 0], [0, 0, values[1]], [0, values[2], values[2]]], np.uint16)[labels]
    path = _write(tmp_path / f"bad{suffix}", mask16)
    with pytest.raises(ImageReadError, match=re.escape(str(path))) as info:
        read_mask(path)
    assert "16-bit colour mask" in str(info.value) and "multiples of 257" in str(info.value)
    with pytest.raises(ManifestError, match=re.escape(str(path))):
        load_sample(_sample(tmp_path, mask16, f"bad{suffix}"), ALL_IDB2)


def test_16bit_grey_mask_keeps_its_raw_values(tmp_path):
    """Grey masks are matched against the encoding's value ranges as stored (unchanged)."""
    grey = np.array([[0, 300], [4000, 65535]], np.uint16)
    out = read_mask(write_image(tmp_path / "g.png", grey))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, grey)


def test_a_16_bit_label_map_stored_as_grey_rgb_keeps_its_raw_values(tmp_path: Path) -> None:
    """Equal channels are grey: read as a 16-bit grey file is (raw ids), not refused as a colour code."""
    ids = np.array([[0, 5000], [4464, 3]], np.uint16)
    got = read_mask(_write(tmp_path / "labels.png", np.stack([ids] * 3, -1)))
    assert got.dtype == np.uint16 and np.array_equal(got, ids)
    assert np.array_equal(read_mask(_write(tmp_path / "binary.png", np.stack([ids > 0] * 3, -1).astype(np.uint16) * 65535)), (ids > 0) * 255)
