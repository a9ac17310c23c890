"""Tests for wbc.postprocess (mask -> instances: opening + conservative watershed) and wbc.cells (edge-safe crops)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from wbc.cells import crop, crop_box, instance_crops, match_instances
from wbc.postprocess import (
    Instance,
    PostprocessParams,
    binarize,
    extract_instances,
    nucleus_mask,
    open_mask,
    split_touching,
    union_instance,
)


def disc(shape: tuple[int, int], center: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def bar(shape: tuple[int, int], p0: tuple[int, int], p1: tuple[int, int], width: int) -> np.ndarray:
    """Straight bridge of the given pixel width between two (y, x) points."""
    img = np.zeros(shape, np.uint8)
    cv2.line(img, (p0[1], p0[0]), (p1[1], p1[0]), 1, thickness=width)
    return img.astype(bool)


# ---------------------------------------------------------------- crops at borders / corners

H, W, SIZE, R = 100, 120, 48, 10
EDGE_CENTERS = {
    "top": (R, 60),
    "bottom": (H - 1 - R, 60),
    "left": (50, R),
    "right": (50, W - 1 - R),
    "top_left": (R, R),
    "top_right": (R, W - 1 - R),
    "bottom_left": (H - 1 - R, R),
    "bottom_right": (H - 1 - R, W - 1 - R),
}


@pytest.mark.parametrize("where", sorted(EDGE_CENTERS))
@pytest.mark.parametrize("center", ["bbox", "centroid"])
def test_crop_at_border_is_inside_full_size_and_holds_nucleus(where: str, center: str) -> None:
    mask = disc((H, W), EDGE_CENTERS[where], R)
    labels, insts = extract_instances(mask)
    assert len(insts) == 1
    inst = insts[0]
    c = (
        inst.centroid
        if center == "centroid"
        else ((inst.bbox[0] + inst.bbox[2] - 1) / 2, (inst.bbox[1] + inst.bbox[3] - 1) / 2)
    )
    y0, x0, y1, x1 = crop_box(c, SIZE, (H, W))
    assert 0 <= y0 < y1 <= H and 0 <= x0 < x1 <= W
    assert (y1 - y0, x1 - x0) == (SIZE, SIZE)
    ys, xs = np.nonzero(labels == inst.label)
    assert ys.min() >= y0 and ys.max() < y1 and xs.min() >= x0 and xs.max() < x1

    image = np.random.default_rng(0).integers(1, 255, (H, W, 3), dtype=np.uint8)
    (patch,) = instance_crops(image, labels, insts, SIZE, center=center)
    assert patch.shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(patch, image[y0:y1, x0:x1])  # no padding needed: pure shift
    (mpatch,) = instance_crops(image[..., 0], labels, insts, SIZE, masked=True, center=center)
    assert mpatch.shape == (SIZE, SIZE)
    assert np.count_nonzero(mpatch) == inst.area  # whole nucleus inside the crop


def test_crop_box_centred_in_interior() -> None:
    assert crop_box((50.0, 60.0), 48, (100, 120)) == (27, 37, 75, 85)  # even size: centre rounds up
    assert crop_box((50.0, 60.0), 49, (100, 120)) == (26, 36, 75, 85)  # odd size: pixel exactly central


def test_image_smaller_than_crop_is_padded_and_complete() -> None:
    image = np.arange(30 * 40, dtype=np.float32).reshape(30, 40) + 1
    box = crop_box((5.0, 35.0), 48, image.shape)
    assert box == (0, 0, 30, 40)
    patch = crop(image, box, 48, pad_value=-1)
    assert patch.shape == (48, 48)
    assert np.count_nonzero(patch == -1) == 48 * 48 - 30 * 40
    np.testing.assert_array_equal(patch[9:39, 4:44], image)  # centred padding
    rgb = np.dstack([image] * 3)
    assert crop(rgb, box, 48).shape == (48, 48, 3)


def test_partial_padding_one_axis_only() -> None:
    image = np.ones((30, 200), np.uint8)
    box = crop_box((15.0, 199.0), 48, image.shape)
    assert box == (0, 152, 30, 200)
    patch = crop(image, box, 48)
    assert patch.shape == (48, 48) and patch.sum() == 30 * 48


# ---------------------------------------------------------------- splitting / not splitting


def two_touching_discs() -> np.ndarray:
    shape = (100, 120)
    return disc(shape, (50, 42), 20) | disc(shape, (50, 78), 20)


def test_watershed_splits_touching_fat_nuclei() -> None:
    mask = two_touching_discs()
    _, whole = extract_instances(mask, PostprocessParams(watershed=False))
    assert len(whole) == 1
    labels, insts = extract_instances(mask)
    assert len(insts) == 2
    assert [i.label for i in insts] == [1, 2]
    assert insts[0].centroid[1] < 60 < insts[1].centroid[1]  # ordered by (y, x): left disc first
    assert sum(i.area for i in insts) == np.count_nonzero(open_mask(mask))  # no pixel lost at the seam
    for inst, cx in zip(insts, (42, 78)):
        assert abs(inst.centroid[1] - cx) < 3
        assert abs(inst.area - np.pi * 20**2) < 0.15 * np.pi * 20**2


def test_split_touching_returns_int32_and_keeps_separate_components() -> None:
    mask = two_touching_discs() | disc((100, 120), (90, 110), 6)
    labels = split_touching(mask)
    assert labels.dtype == np.int32
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    assert np.array_equal(labels > 0, mask)


def test_neutrophil_lobes_stay_one_instance() -> None:
    shape = (80, 140)
    centers = [(40, 25), (40, 55), (40, 85), (40, 115)]
    mask = np.zeros(shape, bool)
    for c in centers:
        mask |= disc(shape, c, 9)
    for a, b in zip(centers, centers[1:]):
        mask |= bar(shape, a, b, 7)
    labels, insts = extract_instances(mask)
    assert len(insts) == 1
    assert np.count_nonzero(labels) > 0.9 * np.count_nonzero(mask)


def test_elongated_fat_nucleus_is_not_sliced() -> None:
    shape = (100, 160)
    mask = bar(shape, (50, 40), (50, 120), 1) | disc(shape, (50, 40), 18) | disc(shape, (50, 120), 18)
    mask |= np.pad(np.ones((37, 81), bool), ((32, 31), (40, 39)))  # capsule: flat distance ridge
    _, insts = extract_instances(mask)
    assert len(insts) == 1


# ---------------------------------------------------------------- opening / filtering / inputs


def test_opening_cuts_thin_bridge_and_removes_specks() -> None:
    shape = (80, 120)
    mask = disc(shape, (40, 30), 15) | disc(shape, (40, 90), 15) | bar(shape, (40, 30), (40, 90), 1)
    mask[5, 5] = mask[70, 110] = True  # isolated specks
    mask[70:72, 60:62] = True
    params = PostprocessParams(watershed=False, min_area=0)
    assert len(extract_instances(mask, params)[1]) == 2
    assert len(extract_instances(mask, PostprocessParams(opening_kernel=0, watershed=False, min_area=0))[1]) == 4
    opened = open_mask(mask)
    assert not opened[5, 5] and not opened[70, 110] and not opened[40, 60]


def test_min_area_drops_tiny_blobs() -> None:
    shape = (80, 80)
    mask = disc(shape, (40, 40), 12) | disc(shape, (10, 10), 3)  # ~29 px blob survives a 5x5 opening
    assert len(extract_instances(mask, PostprocessParams(min_area=0))[1]) == 2
    labels, insts = extract_instances(mask)  # default min_area=30
    assert len(insts) == 1 and labels[10, 10] == 0 and labels[40, 40] == 1


def test_probability_map_is_thresholded() -> None:
    prob = disc((64, 64), (32, 32), 12) * 0.8 + disc((64, 64), (32, 32), 20) * 0.1  # halo below threshold
    _, insts = extract_instances(prob.astype(np.float32))
    assert len(insts) == 1 and abs(insts[0].area - np.pi * 144) < 40
    assert len(extract_instances(prob, PostprocessParams(threshold=0.95))[1]) == 0
    assert binarize(np.array([[0, 3], [255, 0]], np.uint8)).tolist() == [[False, True], [True, False]]


def test_empty_mask_gives_no_instances() -> None:
    for mask in (np.zeros((64, 64), bool), np.zeros((64, 64), np.float32)):
        labels, insts = extract_instances(mask)
        assert insts == [] and labels.shape == (64, 64) and not labels.any()
        assert instance_crops(np.zeros((64, 64, 3), np.uint8), labels, insts, 32) == []
    labels, insts = union_instance(np.zeros((32, 32), np.uint8))
    assert insts == [] and not labels.any()


def test_masked_crops_are_zero_outside_the_nucleus() -> None:
    mask = two_touching_discs()
    labels, insts = extract_instances(mask)
    image = np.full((100, 120, 3), 200, np.uint8)
    crops = instance_crops(image, labels, insts, 64, masked=True)
    for inst, patch in zip(insts, crops):
        box = crop_box(
            ((inst.bbox[0] + inst.bbox[2] - 1) / 2, (inst.bbox[1] + inst.bbox[3] - 1) / 2), 64, (100, 120)
        )
        own = crop(labels == inst.label, box, 64)
        assert patch.shape == (64, 64, 3)
        assert not patch[~own].any()
        assert (patch[own] == 200).all()
        assert own.sum() == inst.area


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError, match="mask_or_prob"):
        extract_instances(np.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="kernel"):
        open_mask(np.zeros((8, 8), bool), -1)
    open_mask(np.zeros((8, 8), bool), 4)  # even kernels are fine
    with pytest.raises(ValueError, match="size"):
        crop_box((4.0, 4.0), -3, (8, 8))
    with pytest.raises(ValueError, match="min_distance"):
        split_touching(np.zeros((8, 8), bool), min_distance=0)
    with pytest.raises(ValueError, match="min_area"):
        extract_instances(np.zeros((8, 8), bool), PostprocessParams(min_area=-1))
    with pytest.raises(ValueError, match="center"):
        instance_crops(np.zeros((8, 8)), np.zeros((8, 8), np.int32), [], 4, center="middle")
    with pytest.raises(ValueError, match="box"):
        crop(np.zeros((8, 8)), (0, 0, 9, 8), 16)
    with pytest.raises(ValueError, match="iou_threshold"):
        match_instances(np.zeros((4, 4), int), np.zeros((4, 4), int), 1.5)


# ---------------------------------------------------------------- matching / union


def test_match_instances_known_ious_and_one_to_one() -> None:
    true = np.zeros((10, 20), np.int32)
    true[0:4, 0:4] = 1  # 16 px
    true[0:4, 10:14] = 2
    true[6:10, 0:4] = 3  # never predicted
    pred = np.zeros_like(true)
    pred[0:4, 0:4] = 5  # exact -> IoU 1
    pred[0:4, 12:16] = 7  # half-shifted -> 8 / 24
    pred[6:10, 10:14] = 9  # false positive
    m = match_instances(pred, true, 0.3)
    assert [(p, t) for p, t, _ in m] == [(5, 1), (7, 2)]
    assert m[0][2] == pytest.approx(1.0) and m[1][2] == pytest.approx(1 / 3)
    assert match_instances(pred, true, 0.5) == [(5, 1, 1.0)]

    # one prediction covering two truths is matched to at most one of them (the better one)
    true2 = np.zeros((4, 10), np.int32)
    true2[:, 0:4], true2[:, 4:10] = 1, 2
    pred2 = (true2 > 0).astype(np.int32)
    m2 = match_instances(pred2, true2, 0.0)
    assert m2 == [(1, 2, pytest.approx(0.6))]
    assert match_instances(np.zeros((4, 4), int), true2[:, :4], 0.5) == []


def test_union_instance_spans_all_lobes() -> None:
    shape = (90, 90)
    mask = (
        disc(shape, (30, 30), 9) | disc(shape, (30, 60), 9) | disc(shape, (60, 45), 9)
    )  # disconnected lobes
    mask[85, 85] = True  # speck removed by opening
    labels, insts = union_instance(mask)
    assert len(insts) == 1
    inst = insts[0]
    assert isinstance(inst, Instance) and inst.label == 1
    assert set(np.unique(labels)) == {0, 1}
    assert inst.bbox[0] <= 22 and inst.bbox[2] >= 69 and inst.bbox[1] <= 22 and inst.bbox[3] >= 69
    assert inst.area == np.count_nonzero(labels) and labels[85, 85] == 0
    (patch,) = instance_crops(np.ones(shape, np.uint8), labels, insts, 64, masked=True)
    assert patch.sum() == inst.area


def test_clear_border_drops_cut_neighbours_but_never_everything():
    mask = np.zeros((64, 64), np.uint8)
    cv2.circle(mask, (32, 32), 10, 1, -1)  # the centred, annotated cell
    cv2.circle(mask, (2, 60), 8, 1, -1)  # a neighbour cut by the frame
    keep = PostprocessParams(watershed=False)
    drop = PostprocessParams(watershed=False, clear_border=True)
    assert len(extract_instances(mask, keep)[1]) == 2
    labels, inst = extract_instances(mask, drop)
    assert len(inst) == 1 and abs(inst[0].centroid[0] - 32) < 1 and abs(inst[0].centroid[1] - 32) < 1
    # single-cell mode: the union no longer stretches to the border object
    (_, (whole,)), (_, (centred,)) = union_instance(mask, keep), union_instance(mask, drop)
    assert (whole.bbox[1], whole.bbox[2]) == (0, 64)
    assert np.allclose(centred.bbox, (22, 22, 43, 43), atol=1)
    # only border objects: nothing would be left, so the mask is kept as it is
    edge = np.zeros((64, 64), np.uint8)
    cv2.circle(edge, (0, 32), 9, 1, -1)
    assert len(extract_instances(edge, drop)[1]) == 1
    assert nucleus_mask(edge.astype(np.float32), PostprocessParams(clear_border=True)).sum() == nucleus_mask(edge.astype(np.float32)).sum() > 0
    assert not nucleus_mask(mask.astype(np.float32), PostprocessParams(clear_border=True))[55:, :10].any()


def test_cell_unit_crops_follow_the_nucleus_size_not_the_pixels():
    """data.crops.diameters: the ROI is k nucleus diameters, so an image at twice the magnification
    gives a twice larger ROI holding the same part of the cell (same crop after the resize)."""
    import cv2

    from wbc.cells import CropSpec, cell_crops, crop_batch

    img = np.full((96, 96, 3), 230, np.uint8)
    yy, xx = np.mgrid[:96, :96]
    nucleus = (yy - 48) ** 2 + (xx - 40) ** 2 <= 10**2
    img[(yy - 48) ** 2 + (xx - 40) ** 2 <= 18**2] = (200, 150, 200)
    img[nucleus] = (90, 40, 120)
    big = cv2.resize(img, (192, 192), interpolation=cv2.INTER_LINEAR)
    big_nucleus = cv2.resize(nucleus.astype(np.uint8), (192, 192), interpolation=cv2.INTER_NEAREST).astype(bool)
    spec = CropSpec.from_config({"size": 32, "image_size": 32, "diameters": 3.0})
    _, insts, (small_crop,) = cell_crops(img, nucleus, spec)
    _, big_insts, (big_crop,) = cell_crops(big, big_nucleus, spec)
    d = np.sqrt(4 * insts[0].area / np.pi)
    assert small_crop.shape[0] == round(3 * d) and big_crop.shape[0] == pytest.approx(2 * small_crop.shape[0], abs=2)
    a, b = crop_batch([small_crop], 32), crop_batch([big_crop], 32)
    assert float((a - b).abs().mean()) < 0.03  # the same cell content at the classifier's input size
    fixed = CropSpec.from_config({"size": 32, "image_size": 32})
    assert cell_crops(big, big_nucleus, fixed)[2][0].shape[0] == 32  # pixels: a different share of the cell
    with pytest.raises(ValueError, match="data.crops.diameters"):
        CropSpec.from_config({"diameters": 0})


def test_lobe_gap_joins_the_pieces_of_one_nucleus_but_not_a_watershed_split_or_distant_cells() -> None:
    """postprocess.lobe_gap: three lobes 4 px apart become one cell; two touching fat nuclei split by the
    watershed, with a lobe 6 px from one of them, stay as they are; two round nuclei 50 px apart stay two.
    The gap is a length: it scales with the image (rescale_postprocess) and is validated by name."""
    from wbc.postprocess import rescale_postprocess

    m = np.zeros((200, 300), np.uint8)
    for cx in (40, 62, 84):
        cv2.circle(m, (cx, 50), 9, 1, -1)
    cv2.circle(m, (180, 100), 25, 1, -1)
    cv2.circle(m, (225, 100), 25, 1, -1)
    cv2.circle(m, (180, 139), 8, 1, -1)
    cv2.circle(m, (40, 160), 15, 1, -1)
    cv2.circle(m, (120, 160), 15, 1, -1)
    _, apart = extract_instances(m, PostprocessParams(opening_kernel=0))
    labels, joined = extract_instances(m, PostprocessParams(opening_kernel=0, lobe_gap=6))
    assert len(apart) == 8 and len(joined) == 6
    lobed = labels[50, 40]
    assert lobed == labels[50, 62] == labels[50, 84] and sum(i.label == lobed for i in joined) == 1
    assert len({labels[100, 180], labels[100, 225], labels[139, 180]}) == 3 and labels[160, 40] != labels[160, 120]
    assert rescale_postprocess(PostprocessParams(lobe_gap=6), 2.0).lobe_gap == 12
    with pytest.raises(ValueError, match="postprocess.lobe_gap"):
        PostprocessParams.from_config({"lobe_gap": -1})
