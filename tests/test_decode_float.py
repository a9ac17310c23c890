"""Float images follow one rule (wbc.data.bitdepth.float_counts), not a per-image guess: whole numbers
are camera counts read like a 16-bit image at data.bit_depth (12-bit counts became all 255), 0..1 is
scaled by 255 with a small overshoot clipped and warned about (one 1.02 pixel made a field near
black), anything else is one error naming the file, its range and what is expected."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from wbc.data.imageio import ImageReadError, read_rgb

GREY = np.tile((40 + np.arange(48) * 4).astype(np.uint8), (32, 1))  # 40..228


def _save(tmp_path, arr, name="f.tif"):
    path = tmp_path / name
    tifffile.imwrite(path, np.asarray(arr, np.float32))
    return path


@pytest.mark.parametrize("bit_depth", ["auto", 12])
def test_twelve_bit_counts_stored_as_float_follow_the_bit_depth(tmp_path, bit_depth):
    counts = GREY.astype(np.float32) * 16  # 640..3648: whole numbers of a 12-bit camera
    got = read_rgb(_save(tmp_path, counts), bit_depth=bit_depth)[..., 0]
    np.testing.assert_array_equal(got, np.round(counts / 4095 * 255).astype(np.uint8))


def test_whole_number_floats_obey_an_explicit_bit_depth_like_integers(tmp_path):
    path = _save(tmp_path, GREY.astype(np.float32) * 64)  # max 14592 > 4095
    with pytest.raises(ImageReadError, match=r"maximum pixel value 14592 does not fit data.bit_depth=12"):
        read_rgb(path, bit_depth=12)


def test_small_overshoot_above_one_is_clipped_with_a_warning(tmp_path):
    arr = GREY / 255.0
    arr[0, 0] = 1.02
    path = _save(tmp_path, arr)
    with pytest.warns(UserWarning, match=r"f\.tif: float image values .*1\.02 overshoot 0..1"):
        got = read_rgb(path)[..., 0]
    want = GREY.copy()
    want[0, 0] = 255
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("arr, shown", [(GREY / 255.0 * 1.5, r"values 0\.23\d*\.\.1\.34\d*"), (GREY + 0.5, r"values 40\.5\.\.228\.5"),
                                        (-GREY.astype(np.float32), r"values -228\.\.-40"),
                                        (np.where(GREY > 100, np.nan, 0.5), "NaN or infinite values")])
def test_other_float_data_is_refused_naming_file_and_range(tmp_path, arr, shown):
    with pytest.raises(ImageReadError, match=rf"f\.tif: floating-point image with {shown}; expected values within 0\.\.1"):
        read_rgb(_save(tmp_path, arr))


def test_zero_to_one_floats_are_scaled_as_before(tmp_path):
    np.testing.assert_array_equal(read_rgb(_save(tmp_path, GREY / 255.0))[..., 0], GREY)
    binary = (GREY > 100).astype(np.float32)  # only 0 and 1: a 0..1 image, not 1-bit counts
    np.testing.assert_array_equal(read_rgb(_save(tmp_path, binary, "b.tif"))[..., 0], (GREY > 100) * np.uint8(255))
