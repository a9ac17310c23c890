"""Training fixes in the data layer: repeated balanced draws get their own augmentation, data.part_weights
with sampler=balanced honours both, a crop-only segmentation set is seeded, and the classifier search
does not correct the class imbalance twice."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from datamodules.base import CachedSample
from datamodules.classification import Crop, CropDataset
from datamodules.sampling import EpochSampler, balanced_weights, epoch_order
from datamodules.segmentation import SegmentationDataModule, SegmentationDataset
from tests.helpers_data import RGB_ENCODING, make_csv_dataset

ROOT = Path(__file__).resolve().parents[1]


def _crops_dataset() -> tuple[CropDataset, list[int]]:
    rng = np.random.default_rng(0)
    labels = [0] * 40 + [1] * 8  # 5:1, so the rare class is drawn about three times per epoch
    crops = [Crop((rng.random((32, 32, 3)) * 255).astype(np.uint8), lab, f"s{i}", None, 1) for i, lab in enumerate(labels)]
    transforms = [instantiate(v) for v in OmegaConf.load(ROOT / "conf" / "augment" / "crops.yaml").values()]
    transforms[-1].p = 1.0  # colour jitter on every draw: two draws' seeds then always give two images
    return CropDataset(crops, transforms, 32, seed=42), labels


def _epoch_views(ds: CropDataset, sampler: EpochSampler, epoch: int) -> dict[int, list[torch.Tensor]]:
    sampler.set_epoch(epoch)
    views: dict[int, list[torch.Tensor]] = defaultdict(list)
    for idx in sampler:
        item = ds[idx]
        views[item["index"]].append(item["image"])
    return views


def test_an_item_drawn_twice_in_an_epoch_gets_two_augmentations_and_a_rerun_the_same() -> None:
    ds, labels = _crops_dataset()
    sampler = EpochSampler(len(ds), seed=42, weights=balanced_weights(labels))
    for epoch in (0, 1):
        views = _epoch_views(ds, sampler, epoch)
        repeated = {i: v for i, v in views.items() if len(v) > 1}
        assert repeated
        # every copy of a repeated item differs from the others (they were pixel-identical)
        assert all(not torch.equal(a, b) for v in repeated.values() for k, a in enumerate(v) for b in v[k + 1:])
    # a fresh sampler at the same epoch (a resumed run) draws and augments exactly the same
    again = _epoch_views(ds, EpochSampler(len(ds), seed=42, weights=balanced_weights(labels)), 1)
    assert views.keys() == again.keys()
    assert all(torch.equal(a, b) for i in views for a, b in zip(views[i], again[i], strict=True))


def test_draw_indices_round_trip_and_first_draws_keep_their_old_index() -> None:
    from datamodules.sampling import draw_index, split_index

    n = 7
    for epoch in (0, 3):
        for item in range(n):
            assert draw_index(n, epoch, item) == epoch * n + item  # unweighted epochs and older runs unchanged
            for repeat in range(n):
                idx = draw_index(n, epoch, item, repeat)
                assert split_index(idx, n) == (epoch, item, repeat) and idx % n == item
    w = balanced_weights([0] * 6 + [1])
    order = epoch_order(n, 0, 2, torch.as_tensor(w))
    assert len(set(order)) == n  # each draw its own index, repeats included
    with pytest.raises(ValueError, match="at most 6 times"):
        draw_index(n, 0, 0, n)


def test_balanced_sampler_with_part_weights_balances_classes_inside_each_part() -> None:
    # part A: 100 crops all class 0; part B: 50 class 0 + 50 class 1 (the review's case)
    labels = np.array([0] * 100 + [0] * 50 + [1] * 50)
    parts = ["A"] * 100 + ["B"] * 100
    for asked in ({"A": 1.0, "B": 1.0}, {"A": 3.0, "B": 1.0}):
        p = balanced_weights(labels, parts, asked)
        p = p / p.sum()
        assert p[:100].sum() == pytest.approx(asked["A"] / sum(asked.values()))
        assert p[100:150].sum() == pytest.approx(p[150:].sum())  # B's two classes evenly
    unnamed = balanced_weights(labels, parts, {"A": 2.0})  # a part not named weighs 1
    assert unnamed[:100].sum() == pytest.approx(2 * unnamed[100:].sum())


def test_datamodule_with_part_weights_and_balanced_sampler_draws_the_asked_shares(tmp_path: Path) -> None:
    grey = make_csv_dataset(tmp_path / "grey", {"a": 12, "b": 4})
    rgb = make_csv_dataset(tmp_path / "rgb", {"b": 6, "c": 6}, mask_mode="rgb")
    parts = {
        "lab1": {"root": str(grey), "name": "lab1", "classes": ["a", "b"], "splits": {"dir": str(tmp_path / "s"), "k": 2}},
        "lab2": {"root": str(rgb), "name": "lab2", "classes": ["b", "c"], "mask_encoding": RGB_ENCODING, "splits": {"dir": str(tmp_path / "s"), "k": 2}},
    }
    dm = SegmentationDataModule(root="unused", name="combined", image_size=32, parts=parts, sampler="balanced",
                                part_weights={"lab1": 3.0, "lab2": 1.0})
    dm.setup()
    w = dm.train_dataloader().sampler.weights.numpy()
    w = w / w.sum()
    ids, labels = dm.item_ids("train"), np.asarray(dm.dataset_labels("train"))
    lab1 = np.array([i.startswith("lab1/") for i in ids])
    assert w[lab1].sum() == pytest.approx(0.75)
    for part, share in ((lab1, 0.75), (~lab1, 0.25)):
        classes = np.unique(labels[part])
        assert len(classes) == 2
        assert all(w[part & (labels == c)].sum() == pytest.approx(share / 2) for c in classes)


def test_a_crop_without_other_augmentation_is_seeded() -> None:
    rng = np.random.default_rng(0)
    items = [CachedSample(None, 0, (rng.random((64, 64, 3)) * 255).astype(np.uint8), (rng.random((64, 64)) * 3).astype(np.uint8))
             for _ in range(8)]
    for transforms in ([], None):
        ds = SegmentationDataset(items, transforms, 64, seed=42, crop=32)
        assert ds.augment
        assert torch.equal(ds[3]["image"], ds[3]["image"])  # the same (epoch, item): the same patch
        assert not all(torch.equal(ds[3]["image"], ds[3 + e * 8]["image"]) for e in range(1, 4))  # other epochs: others


def test_classifier_search_corrects_the_class_imbalance_once() -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from hydra import compose, initialize_config_dir

    from tests.helpers_models import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train.yaml", overrides=["experiment=classify", "hparams_search=cls_optuna"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert cfg.data.sampler == "balanced"
    assert "weighted_ce" not in params["model.loss.name"]
    assert cfg.model.loss.class_weights is None  # focal without inverse-frequency weights on top of the sampler

