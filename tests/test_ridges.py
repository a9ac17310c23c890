"""wbc.postprocess._ridges: the h-dome plateaus computed per component (in its bounding box) are the
whole image's, numbered alike, so split_touching's labels do not change with the speed-up."""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi

from wbc.postprocess import _EIGHT, _components, _relabel_sequential, _ridges, h_domes


def _random_mask(rng: np.random.Generator) -> np.ndarray:
    h, w = int(rng.integers(40, 200)), int(rng.integers(40, 200))
    m = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 10))):
        x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(2, 35))
        cv2.ellipse(m, (x, y), (r, max(1, r // int(rng.integers(1, 4)))), float(rng.integers(0, 180)), 0, 360, 1, -1)
    if rng.random() < 0.3:
        m[rng.random(m.shape) < 0.02] ^= 1
    return m.astype(bool)


def test_per_component_ridges_equal_the_whole_image_ones() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        mask = _random_mask(rng)
        comps, n = _components(mask)
        if n == 0:
            continue
        dist = ndi.distance_transform_edt(mask)
        chosen = rng.choice(np.arange(1, n + 1), size=int(rng.integers(1, n + 1)), replace=False)
        counts = np.full(len(chosen), 2)
        got = _ridges(dist, comps, (chosen, counts))
        whole, _ = ndi.label(h_domes(dist, 2.0) & mask, structure=_EIGHT)
        want = np.where(np.isin(comps, chosen), whole, 0)
        assert np.array_equal(got, _relabel_sequential(want))  # the same plateaus, in the same order


def test_components_with_one_peak_are_not_computed() -> None:
    mask = np.zeros((50, 50), bool)
    mask[5:25, 5:25] = mask[30:45, 30:45] = True
    comps, _ = _components(mask)
    dist = ndi.distance_transform_edt(mask)
    got = _ridges(dist, comps, (np.array([1, 2]), np.array([1, 2])))
    assert not got[comps == 1].any() and got[comps == 2].any()


def test_relabel_sequential_keeps_the_order_and_the_background() -> None:
    labels = np.array([[0, 7, 7], [3, 0, 12]])
    assert _relabel_sequential(labels).tolist() == [[0, 2, 2], [1, 0, 3]]
    assert _relabel_sequential(labels + 1).tolist() == [[1, 3, 3], [2, 1, 4]]  # no background: ids from 1


def test_the_opencv_distance_transform_is_scipys_bit_for_bit() -> None:
    from wbc.postprocess import _edt

    rng = np.random.default_rng(3)
    for _ in range(100):
        mask = rng.random((int(rng.integers(5, 200)), int(rng.integers(5, 200)))) < rng.uniform(0.3, 0.99)
        if rng.random() < 0.5:
            mask = ndi.binary_opening(mask, iterations=int(rng.integers(1, 4)))
        assert np.array_equal(_edt(mask), ndi.distance_transform_edt(mask))
    blob = np.ones((2100, 2100), bool)
    blob[0, 0] = False  # distances past 1000 px: scipy itself
    assert np.array_equal(_edt(blob), ndi.distance_transform_edt(blob))
