"""Preprocessing and augmentation: channel counts, CLAHE, image/mask alignment, study angles, train-only aug."""

from __future__ import annotations

import math

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from datamodules.segmentation import SegmentationDataModule
from tests.helpers_data import disc_pair, make_csv_dataset
from wbc.data.manifest import NUCLEUS
from wbc.data.transforms import Preprocess, build_pipeline, study_rotation, study_zoom, to_tensor

# --------------------------------------------------------------------------- Preprocess


def _low_contrast_rgb(size: int = 64, seed: int = 0) -> np.ndarray:
    """A purple-stained smear squeezed into a narrow brightness band."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    light = 120 + 12 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + rng.normal(0, 2, (size, size))
    rgb = np.stack([light * 1.0, light * 0.55, light * 1.05], axis=-1)
    return rgb.clip(0, 255).astype(np.uint8)


def test_grayscale_gives_one_channel():
    pre = Preprocess(grayscale=True, clahe=False)
    out = pre(_low_contrast_rgb())
    assert out.shape == (64, 64, 1) and out.dtype == np.uint8 and pre.channels == 1
    expected = cv2.cvtColor(_low_contrast_rgb(), cv2.COLOR_RGB2GRAY)
    np.testing.assert_array_equal(out[..., 0], expected)


def test_no_preprocessing_is_identity():
    img = _low_contrast_rgb()
    out = Preprocess(grayscale=False, clahe=False)(img)
    assert Preprocess(grayscale=False, clahe=False).channels == 3
    np.testing.assert_array_equal(out, img)


def test_grey_clahe_raises_contrast():
    img = _low_contrast_rgb()
    plain = Preprocess(grayscale=True, clahe=False)(img)
    eq = Preprocess(grayscale=True, clahe=True, clip_limit=2.0)(img)
    assert eq.shape == (64, 64, 1)
    assert eq.std() > 1.5 * plain.std()


def test_rgb_clahe_raises_contrast_and_keeps_hue():
    img = _low_contrast_rgb()
    eq = Preprocess(grayscale=False, clahe=True)(img)
    assert eq.shape == img.shape and eq.dtype == np.uint8
    lum = lambda a: cv2.cvtColor(a, cv2.COLOR_RGB2GRAY).astype(float)  # noqa: E731
    assert lum(eq).std() > 1.5 * lum(img).std()
    hue_in = cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL)[..., 0].astype(int)
    hue_out = cv2.cvtColor(eq, cv2.COLOR_RGB2HSV_FULL)[..., 0].astype(int)
    diff = np.abs(hue_in - hue_out)
    diff = np.minimum(diff, 256 - diff)  # hue is circular
    assert np.median(diff) <= 6  # of 256, i.e. < 10 degrees


def test_preprocess_from_config_and_errors():
    pre = Preprocess.from_config({"grayscale": True, "clahe": False})
    assert pre == Preprocess(grayscale=True, clahe=False) and pre.to_dict()["grayscale"] is True
    assert Preprocess.from_config(None) == Preprocess()
    with pytest.raises(ValueError, match=r"data\.preprocess: unknown keys \['gamma'\]"):
        Preprocess.from_config({"gamma": 2})
    with pytest.raises(ValueError, match=r"expects HxWx3 uint8 RGB"):
        Preprocess()(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"expects HxWx3 uint8 RGB"):
        Preprocess()(np.zeros((8, 8, 3), np.float32))


def test_a_preprocess_key_a_checkpoint_predates_counts_as_its_default():
    """A segmenter saved before `stain_norm` existed does the same as `stain_norm: null`."""
    old = {"grayscale": False, "clahe": True, "clip_limit": 2.0, "tile_grid": 8, "white_balance": False}
    assert Preprocess.same(old, {**old, "stain_norm": None})
    assert not Preprocess.same(old, {**old, "stain_norm": "reinhard"}) and not Preprocess.same(old, {**old, "clahe": False})


# --------------------------------------------------------------------------- augmentation geometry


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.mark.parametrize(
    "ops",
    [
        [study_rotation(p=1.0)],
        [study_zoom(p=1.0)],
        [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), study_rotation(p=1.0), study_zoom(p=1.0)],
    ],
    ids=["rotation", "zoom", "study"],
)
@pytest.mark.parametrize("size", [None, 64])
def test_mask_stays_aligned_with_image(ops, size):
    img, mask = disc_pair()
    pipe = build_pipeline(ops, size)
    pipe.set_random_seed(0)
    moved = 0
    for _ in range(8):
        out = pipe(image=img, mask=mask)
        bright = out["image"].min(axis=2) > 150
        assert out["mask"].dtype == np.uint8 and set(np.unique(out["mask"]).tolist()) <= {0, 1}
        assert out["image"].shape[:2] == out["mask"].shape == ((size, size) if size else mask.shape)
        assert _iou(bright, out["mask"] > 0) > 0.9
        if size is None:
            moved += _iou(out["mask"] > 0, mask > 0) < 0.9
    if size is None:
        assert moved >= 4  # the transform did move the disc, so the check above means something


def _bar_angle(img: np.ndarray) -> float:
    m = cv2.moments((img[..., 0] > 127).astype(np.uint8), True)
    return math.degrees(0.5 * math.atan2(2 * m["mu11"], m["mu20"] - m["mu02"]))


def test_study_rotation_uses_only_the_study_angles():
    img = np.zeros((128, 128, 3), np.uint8)
    cv2.rectangle(img, (40, 61), (88, 67), (255, 255, 255), -1)
    assert abs(_bar_angle(img)) < 0.5
    pipe = build_pipeline([study_rotation(p=1.0)], None)
    pipe.set_random_seed(1)
    seen = []
    for _ in range(40):
        angle = _bar_angle(pipe(image=img)["image"])
        nearest = min((-60, -45, -30, 30, 45, 60), key=lambda a: abs(a - angle))
        assert abs(angle - nearest) < 1.5, angle
        seen.append(nearest)
    assert set(seen) == {-60, -45, -30, 30, 45, 60}


def test_study_rotation_probability_and_custom_angles():
    img = np.zeros((128, 128, 3), np.uint8)
    cv2.rectangle(img, (40, 61), (88, 67), (255, 255, 255), -1)
    never = build_pipeline([study_rotation(p=0.0)], None)
    np.testing.assert_array_equal(never(image=img)["image"], img)
    only90 = build_pipeline([study_rotation(angles=[90], p=1.0)], None)
    only90.set_random_seed(0)
    for _ in range(4):
        assert abs(abs(_bar_angle(only90(image=img)["image"])) - 90) < 1.5


def test_study_zoom_range():
    img, mask = disc_pair(size=96, centre=(48, 48), radius=16)
    area = mask.sum()
    pipe = build_pipeline([study_zoom(zoom=0.25, p=1.0)], None)
    pipe.set_random_seed(0)
    ratios = []
    for _ in range(20):
        out = pipe(image=img, mask=mask)
        ratios.append(out["mask"].sum() / area)
    ratios = np.array(ratios)
    assert ratios.min() >= 0.75**2 * 0.93 and ratios.max() <= 1.25**2 * 1.07
    assert ratios.max() - ratios.min() > 0.3  # it really zooms, both ways
    assert (ratios < 0.95).any() and (ratios > 1.05).any()


def test_resize_keeps_mask_labels_and_size():
    labels = np.zeros((50, 70), np.uint8)
    labels[10:40, 10:60] = 1
    labels[20:30, 25:45] = 2
    out = build_pipeline(None, (32, 48))(image=np.zeros((50, 70, 3), np.uint8), mask=labels)
    assert out["image"].shape == (32, 48, 3) and out["mask"].shape == (32, 48)
    assert set(np.unique(out["mask"]).tolist()) == {0, 1, 2}  # nearest: no blended labels
    no_resize = build_pipeline([], None)(image=np.zeros((50, 70, 3), np.uint8), mask=labels)
    np.testing.assert_array_equal(no_resize["mask"], labels)


# --------------------------------------------------------------------------- to_tensor


def test_to_tensor_float_chw_unit_range():
    img = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3) * 4
    img[0, 0] = 255
    t = to_tensor(img)
    assert t.dtype == torch.float32 and tuple(t.shape) == (3, 4, 5)
    assert float(t.min()) >= 0.0 and float(t.max()) == 1.0
    assert float(t[1, 2, 3]) == pytest.approx(img[2, 3, 1] / 255.0)
    grey = to_tensor(img[..., 0])
    assert tuple(grey.shape) == (1, 4, 5)
    assert tuple(to_tensor(img[..., :1]).shape) == (1, 4, 5)


# --------------------------------------------------------------------------- augmentation only on train


def _items_equal(a: dict, b: dict) -> bool:
    return torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_datamodule_augments_train_only(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", {"a": 6, "b": 6}, size=40)
    dm = SegmentationDataModule(
        root=str(root),
        name="tiny",
        classes=["a", "b"],
        image_size=32,
        preprocess={"clahe": False},
        train_transforms={"rotate": study_rotation(p=1.0), "zoom": study_zoom(p=1.0), "off": None},
        splits={"k": 2, "seed": 0},
    )
    dm.setup("fit")
    assert all(len(dm.datasets[s]) > 0 for s in ("train", "val", "test"))
    train = dm.datasets["train"]
    n = len(train)
    # the sampler yields epoch * n + i: item 0 is augmented differently in each epoch ...
    draws = [train[epoch * n] for epoch in range(4)]
    assert not all(_items_equal(draws[0], d) for d in draws[1:])
    # ... and identically for the same (seed, epoch, item): reproducible and exactly resumable
    assert _items_equal(train[2 * n], train[2 * n])
    for d in draws:  # the nucleus mask is still the dark blob after augmentation
        dark = d["image"].mean(0) < 0.4
        assert d["mask"].shape == (1, 32, 32) and d["mask"].dtype == torch.float32
        assert _iou(dark.numpy(), d["mask"][0].numpy() > 0.5) > 0.6
    for split in ("val", "test"):
        ds = dm.datasets[split]
        for i in range(len(ds)):
            a, b = ds[i], ds[i]
            assert _items_equal(a, b)
            assert a["image"].shape == (3, 32, 32) and a["image"].dtype == torch.float32
            assert float(a["image"].min()) >= 0.0 and float(a["image"].max()) <= 1.0
    # val/test items are just the resized original: equal to running the resize alone
    item = dm.datasets["val"].items[0]
    expected = build_pipeline(None, 32)(image=item.image, mask=item.labels)
    torch.testing.assert_close(dm.datasets["val"][0]["image"], to_tensor(expected["image"]))


def test_datamodule_grayscale_and_multiclass_target(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", {"a": 4, "b": 4}, size=24)
    dm = SegmentationDataModule(
        root=str(root),
        name="tiny",
        classes=["a", "b"],
        image_size=16,
        preprocess={"grayscale": True, "clahe": True},
        target="multiclass",
        splits={"k": 2, "seed": 0},
    )
    dm.setup("fit")
    item = dm.datasets["test"][0]
    assert item["image"].shape == (1, 16, 16)
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (16, 16)
    assert set(torch.unique(item["mask"]).tolist()) == {0, 1, 2}


def test_train_crop_patches_train_only_and_keeps_mask_aligned(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", {"a": 6, "b": 6}, size=40)
    common = dict(root=str(root), name="tiny", classes=["a", "b"], image_size=32, preprocess={"clahe": False}, splits={"k": 2, "seed": 0})
    dm = SegmentationDataModule(train_crop=16, **common)
    dm.setup("fit")
    train = dm.datasets["train"]
    full = build_pipeline(None, 32)
    for i in range(len(train)):
        d = train[i]
        assert d["image"].shape == (3, 16, 16) and d["mask"].shape == (1, 16, 16)
        # the patch is a window of the resized image, and the mask is the same window
        ref = full(image=train.items[i].image, mask=train.items[i].labels)
        img, patch = to_tensor(ref["image"]), d["image"]
        hits = [(y, x) for y in range(17) for x in range(17) if torch.equal(img[:, y : y + 16, x : x + 16], patch)]
        assert hits, "training patch is not a window of the resized image"
        y, x = hits[0]
        assert torch.equal(torch.from_numpy((ref["mask"][y : y + 16, x : x + 16] == NUCLEUS).astype("float32"))[None], d["mask"])
    assert dm.datasets["val"][0]["image"].shape == (3, 32, 32)  # evaluation sees the whole image
    with pytest.raises(ValueError, match="data.train_crop=64"):
        SegmentationDataModule(train_crop=64, **common)


def test_robust_preset_builds_and_keeps_masks_aligned(make_cfg):
    """conf/augment/robust.yaml (stain, defocus, JPEG, scale jitter) instantiates from the allowlist
    for images and crops, and geometry still moves image and mask together."""
    from hydra.utils import instantiate

    cfg = make_cfg(["augment@data.train_transforms=robust", "augment@data.crops.transforms=robust"])
    for node in (cfg.data.train_transforms, cfg.data.crops.transforms):
        assert {"stain", "defocus", "jpeg", "scale"} <= set(node)
        ops = [instantiate(v) for v in node.values()]
        pipe = build_pipeline(ops, 64)
        pipe.set_random_seed(0)  # the draws are albumentations' own: seeded, so the test cannot flake
        rng = np.random.default_rng(0)
        img = np.full((80, 80, 3), 230, np.uint8)
        mask = np.zeros((80, 80), np.uint8)
        img[8:32, 44:72] = (110, 50, 140)  # off-centre: a flip or rotation of one but not the other misses it
        mask[8:32, 44:72] = 1
        for _ in range(10):
            out = pipe(image=np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8), mask=mask)
            grey = out["image"].mean(-1)
            dark, nucleus = grey < np.median(grey) - 30, out["mask"] == 1
            assert out["image"].shape == (64, 64, 3) and set(np.unique(out["mask"])) <= {0, 1}
            # aligned: IoU 0.69-1.0 over 2000 unseeded draws (blur and scale jitter move the dark edge); a flip or
            # rotation of the image alone leaves the off-centre block ~0
            assert (dark & nucleus).sum() / (dark | nucleus).sum() > 0.5


def test_grey_mix_preset_shows_some_images_without_colour(make_cfg):
    """conf/augment/grey_mix.yaml: the lossless flips plus ToGray on half the images (three equal channels,
    so the network's input shape stays), masks untouched."""
    from hydra.utils import instantiate

    cfg = make_cfg(["augment@data.train_transforms=grey_mix"])
    assert set(cfg.data.train_transforms) == {"hflip", "vflip", "rot90", "grey"}
    ops = [instantiate(v) for v in cfg.data.train_transforms.values()]
    pipe = build_pipeline(ops, 32)
    img = np.zeros((32, 32, 3), np.uint8)
    img[..., 0], img[..., 2] = 200, 60  # red-violet: colour a grey view removes
    mask = np.zeros((32, 32), np.uint8)
    mask[4:12, 4:12] = 1
    outs = [pipe(image=img, mask=mask) for _ in range(40)]
    grey = [o["image"].std(-1).max() == 0 for o in outs]
    assert 5 < sum(grey) < 35 and all(o["image"].shape == (32, 32, 3) for o in outs)
    assert all(o["mask"].sum() == mask.sum() for o in outs)


def test_colour_only_augmentation_on_grey_input_is_one_clear_error(make_cfg):
    from hydra.utils import instantiate

    from datamodules.classification import ClassificationDataModule

    cfg = make_cfg(["experiment=classify", "augment@data.crops.transforms=robust", "data.preprocess.grayscale=true"])
    with pytest.raises(Exception, match=r"data.crops.transforms.stain \(HEStain\) needs RGB.*~data.crops.transforms.stain"):
        instantiate(cfg.data, _convert_="partial")
    cfg = make_cfg(["experiment=classify", "augment@data.crops.transforms=robust", "data.preprocess.grayscale=true", "~data.crops.transforms.stain"])
    assert isinstance(instantiate(cfg.data, _convert_="partial"), ClassificationDataModule)
