"""Post-processing on shapes a lab's fields hold: a peanut / bean-shaped nucleus (two lobes joined by a
shallow waist) stays one cell while two touching nuclei are still split, at any scale; a nucleus cut by
the frame is kept on a single-cell image whose only other object is a speck the area filter drops."""

from __future__ import annotations

import numpy as np
import pytest

from wbc.postprocess import (
    PostprocessParams,
    extract_instances,
    nucleus_mask,
    open_mask,
    rescale_postprocess,
    union_instance,
)


def two_discs(apart: float, r: float = 16.0, scale: float = 1.0) -> np.ndarray:
    """Two overlapping discs of radius r, `apart` px between centres (all lengths times `scale`)."""
    h, w = int(80 * scale), int(120 * scale)
    yy, xx = np.mgrid[:h, :w] + 0.5
    cy, cx, r, d = h / 2, w / 2, r * scale, apart * scale
    return open_mask(((yy - cy) ** 2 + (xx - cx + d / 2) ** 2 <= r * r) | ((yy - cy) ** 2 + (xx - cx - d / 2) ** 2 <= r * r), 5)


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_a_peanut_nucleus_is_one_cell_and_two_touching_nuclei_are_two(scale: float) -> None:
    params = rescale_postprocess(PostprocessParams(), scale)
    assert params.ridge_tolerance == pytest.approx(2.0 * scale)
    # a waist 0.5 px below the lobes' centres: one nucleus (h_maxima's top pixels made it two)
    assert len(extract_instances(two_discs(13.5, scale=scale), params)[1]) == 1
    # two nuclei overlapping by a quarter of a diameter: a waist far deeper than the tolerance
    labels, cells = extract_instances(two_discs(26.0, scale=scale), params)
    assert len(cells) == 2 and abs(cells[0].area - cells[1].area) <= 0.02 * cells[0].area


def test_a_deeper_tolerance_is_read_from_the_params() -> None:
    mask = two_discs(20.0)  # waist ~2.4 px below the lobes: two at the default 2 px, one at 3 px
    assert len(extract_instances(mask, PostprocessParams())[1]) == 2
    assert len(extract_instances(mask, PostprocessParams(ridge_tolerance=3.0))[1]) == 1
    with pytest.raises(ValueError, match="ridge_tolerance"):
        PostprocessParams.from_config({"ridge_tolerance": -1.0})


def test_a_nucleus_cut_by_the_frame_survives_a_speck_the_area_filter_drops() -> None:
    m = np.zeros((100, 100), np.float32)
    yy, xx = np.mgrid[:100, :100]
    m[(yy - 50) ** 2 + xx**2 <= 20**2] = 1.0  # cut by the left edge
    m[80:85, 80:85] = 1.0  # 25 px: survives the opening, under min_area (30)
    params = PostprocessParams(clear_border=True)
    _, cells = extract_instances(m, params)
    assert len(cells) == 1 and cells[0].centroid[1] < 15
    assert len(union_instance(m, params)[1]) == 1
    assert nucleus_mask(m, params)[50, 5]
    m[60:75, 60:75] = 1.0  # a real nucleus inside the frame: the cut one is dropped as before
    _, cells = extract_instances(m, params)
    assert len(cells) == 1 and cells[0].centroid[1] > 60
