"""data.parts: several datasets read as one (each with its own reader, encoding and split), and the
leave-one-dataset-out / cross-dataset holdout."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.segmentation import SegmentationDataModule
from tests.helpers_data import RGB_ENCODING, make_csv_dataset
from tests.helpers_models import compose_cfg


@pytest.fixture(scope="module")
def two_parts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parts")
    grey = make_csv_dataset(tmp / "grey", {"a": 10, "b": 10})
    rgb = make_csv_dataset(tmp / "rgb", {"b": 10, "c": 10}, mask_mode="rgb")
    parts = {
        "lab1": {"root": str(grey), "name": "lab1", "classes": ["a", "b"], "splits": {"dir": str(tmp / "s"), "k": 2}},
        "lab2": {"root": str(rgb), "name": "lab2", "classes": ["b", "c"], "mask_encoding": RGB_ENCODING, "splits": {"dir": str(tmp / "s"), "k": 2}},
    }
    return tmp, parts


def _dm(parts, **kw) -> SegmentationDataModule:
    return SegmentationDataModule(root="unused", name="combined", image_size=32, parts=parts, **kw)


def test_parts_keep_their_reader_encoding_and_split(two_parts):
    tmp, parts = two_parts
    alone = {n: SegmentationDataModule(**p, image_size=32).split_ids() for n, p in parts.items()}
    dm = _dm(parts)
    m = dm.load_manifest()
    assert m.classes == ["a", "b", "c"] and len(m.samples) == 40
    assert all(s.id.split("/", 1)[0] in parts and s.group.startswith(s.id.split("/", 1)[0] + "/") for s in m.samples)
    ids = dm.split_ids()
    # each part's test split is the test it has on its own; fold 0 is the union of the parts' fold 0
    assert sorted(ids["test"]) == sorted(f"{n}/{i}" for n, a in alone.items() for i in a["test"])
    assert sorted(ids["train"]) == sorted(f"{n}/{i}" for n, a in alone.items() for i in a["train"])
    dm.setup()
    items = dm.cached(ids["test"])
    assert all(set(np.unique(it.labels)) <= {0, 1, 2} and (it.labels == 2).any() for it in items)  # grey and RGB masks both decoded
    # what readers outside the DataModule (the full-pipeline score) use: each sample's own part's encoding
    from wbc.data.manifest import load_sample

    assert {dm.encoding_of(it.sample.id).mode for it in items} == {"grey", "rgb"}
    for it in items:
        np.testing.assert_array_equal(load_sample(it.sample, dm.encoding_of(it.sample.id))[1], it.labels)


def test_holdout_part_gives_only_its_test_split(two_parts):
    _, parts = two_parts
    alone = SegmentationDataModule(**parts["lab2"], image_size=32).split_ids()
    ids = _dm(parts, holdout="lab2").split_ids()
    assert sorted(ids["test"]) == sorted(f"lab2/{i}" for i in alone["test"])
    assert not any(i.startswith("lab2/") for i in ids["train"] + ids["val"])
    with pytest.raises(ValueError, match="data.holdout='lab3' is not one of data.parts"):
        _dm(parts, holdout="lab3")
    with pytest.raises(ValueError, match="data.parts is empty"):
        from datamodules.parts import DataParts

        DataParts(SegmentationDataModule, {}, None, 0)


def test_parts_with_different_fold_counts_are_refused(two_parts):
    from wbc.data.splits import SplitError

    tmp, parts = two_parts
    other = {**parts, "lab2": {**parts["lab2"], "splits": {"dir": str(tmp / "s3"), "k": 3}}}
    with pytest.raises(SplitError, match="different fold counts"):
        _dm(other).split_ids()


@pytest.mark.parametrize("name,holdout", [("lodo_seg_d1", "segmentation_wbc_d1"), ("lodo_seg_all_idb2", "all_idb2"), ("cross_cls_d1_to_d2", "segmentation_wbc_d2")])
def test_lodo_and_cross_dataset_configs_compose_each_part_with_its_own_settings(tmp_path, name, holdout):
    cfg = compose_cfg("train.yaml", [f"data={name}"], tmp_path)
    parts = cfg.data.parts
    assert cfg.data.holdout == holdout and holdout in parts
    assert parts.segmentation_wbc_d1.filters.subset == ["dataset1"] and parts.segmentation_wbc_d2.filters.subset == ["dataset2"]
    if "all_idb2" in parts:
        assert parts.all_idb2.mask_encoding.mode == "rgb" and parts.segmentation_wbc_d1.mask_encoding.mode == "grey"
    assert cfg.data.generator is None


def test_hydra_builds_the_parts_and_the_combined_drop_classes_reach_them(tmp_path):
    from hydra.utils import instantiate

    cfg = compose_cfg("train.yaml", ["data=cross_cls_d2_to_d1"], tmp_path)
    dm = instantiate(cfg.data, _convert_="partial")
    children = dm.parts.children
    assert set(children) == {"segmentation_wbc_d1", "segmentation_wbc_d2"} and dm.parts.holdout == "segmentation_wbc_d1"
    assert all("basophil" in c.drop_classes for c in children.values())
    assert children["segmentation_wbc_d1"].filters == {"subset": ["dataset1"]}


@pytest.mark.parametrize("direction,holdout", [("d1_to_d2", "segmentation_wbc_d2"), ("d2_to_d1", "segmentation_wbc_d1")])
def test_cross_pipeline_segmenter_learns_from_every_source_but_the_held_out_one(tmp_path, direction, holdout):
    """The segmenter stage adds all_idb2 (nucleus masks, no shared classes); the classifier stays on one source."""
    from wbc.stages import stage_config

    cfg = compose_cfg("train.yaml", [f"experiment=quality_cross_pipeline_{direction}"], tmp_path)
    stages = {s: stage_config(cfg, s, tmp_path / s) for s in ("segmentation", "classification")}
    seg, cls = (stages[s].data for s in ("segmentation", "classification"))
    assert set(seg.parts) == {"segmentation_wbc_d1", "segmentation_wbc_d2", "all_idb2"} and seg.holdout == holdout
    assert set(cls.parts) == {"segmentation_wbc_d1", "segmentation_wbc_d2"} and cls.holdout == holdout
    assert seg.parts.all_idb2.mask_encoding.mode == "rgb" and not seg.preprocess.grayscale
    # the levers chosen on the dev split: Reinhard colour and AdaBN for the classifier only
    assert cls.preprocess.stain_norm == "reinhard" and not cls.preprocess.get("grayscale") and not seg.preprocess.get("stain_norm")
    assert stages["classification"].callbacks.adapt_bn and stages["segmentation"].callbacks.get("adapt_bn") is None
    assert cfg.pipeline.adapt_bn == "classifier"
    one = compose_cfg("train.yaml", [f"experiment=quality_cross_pipeline_{direction}", "~segmentation.data.parts.all_idb2"], tmp_path)
    assert set(stage_config(one, "segmentation", tmp_path / "s").data.parts) == set(cls.parts)


def test_holdout_dev_split_tests_on_the_held_out_training_images(two_parts):
    _, parts = two_parts
    alone = SegmentationDataModule(**parts["lab2"], image_size=32).split_ids()
    ids = _dm(parts, holdout="lab2", holdout_split="dev").split_ids()
    assert sorted(ids["test"]) == sorted(f"lab2/{i}" for i in alone["train"] + alone["val"])
    assert not set(ids["test"]) & {f"lab2/{i}" for i in alone["test"]}


def test_a_dev_holdout_is_named_as_such_where_evaluate_reports_its_test_split():
    from wbc.evaluation.runs import split_label

    assert split_label("test", {"holdout": "lab2", "holdout_split": "dev"}) == "test (lab2's dev images)"
    assert split_label("test", {"holdout": "lab2", "holdout_split": "test"}) == "test"
    assert split_label("val", {"holdout": "lab2", "holdout_split": "dev"}) == "val"
    assert split_label("test", {"name": "one_set"}) == "test"


def test_white_balance_makes_the_background_neutral_and_keeps_the_stain_contrast():
    from wbc.data.transforms import Preprocess

    rng = np.random.default_rng(0)
    img = np.empty((64, 64, 3), np.uint8)
    img[:] = (235, 215, 160)  # yellowish background
    img[20:40, 20:40] = (120, 60, 150)  # a purple nucleus
    img = np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)
    out = Preprocess(clahe=False, white_balance=True)(img)
    bg = out[:10, :10].reshape(-1, 3).mean(0)
    assert np.ptp(bg) < 4 and 225 < bg.mean() < 245
    nuc = out[25:35, 25:35].reshape(-1, 3).mean(0)
    assert nuc[2] > nuc[1] + 40  # still purple against a neutral background
    assert (Preprocess(clahe=False)(img) == img).all()  # off by default


def test_reinhard_gives_two_labs_colours_the_same_statistics():
    import cv2

    from wbc.data.transforms import REINHARD_TARGET, Preprocess

    rng = np.random.default_rng(1)
    outs = []
    for bg, nucleus in [((235, 215, 160), (120, 60, 150)), ((225, 205, 230), (90, 40, 120))]:  # yellow / lavender lab
        img = np.empty((64, 64, 3), np.uint8)
        img[:] = bg
        img[20:40, 20:40] = nucleus
        img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
        outs.append(Preprocess(clahe=False, stain_norm="reinhard")(img))
        lab = cv2.cvtColor(outs[-1], cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
        assert np.allclose(lab.mean(0), [m for m, _ in REINHARD_TARGET], atol=3)
        assert np.allclose(lab.std(0), [s for _, s in REINHARD_TARGET], rtol=0.3)  # RGB gamut clips some chroma
    a, b = (o[:10, :10].reshape(-1, 3).mean(0) for o in outs)
    assert np.abs(a - b).max() < 15  # the two backgrounds now look alike
    with pytest.raises(ValueError, match="data.preprocess.stain_norm"):
        Preprocess.from_config({"stain_norm": "macenko"})


def test_part_weights_set_each_part_share_of_an_epoch(two_parts):
    from datamodules.sampling import epoch_order

    _, parts = two_parts
    dm = _dm(parts, part_weights={"lab1": 3.0, "lab2": 1.0})
    dm.setup()
    loader = dm.train_dataloader()
    ids = dm.item_ids("train")
    drawn = []
    for epoch in range(20):
        n = len(ids)
        drawn += [ids[i % n] for i in epoch_order(n, 0, epoch, loader.sampler.weights)]
    share = sum(i.startswith("lab1/") for i in drawn) / len(drawn)
    assert 0.68 < share < 0.82  # 3 : 1, whatever the parts' sizes
    with pytest.raises(ValueError, match="data.part_weights"):
        _dm(parts, part_weights={"lab9": 1.0})


def test_evaluating_on_another_data_config_keeps_what_the_checkpoint_saw(caplog):
    """`evaluate.py data=cross_cls_...` on a classifier trained with cell-unit crops
    (data.crops.diameters=2.7, 128 px) used the data config's crops (96 px, fixed side) for the
    ground-truth-crop score: 0.51 macro-F1 instead of 0.76 for a fine-tuned model. Preprocessing,
    input size and the crops' geometry follow the checkpoint (one warning), augmentation stays the
    config's; a key the checkpoint predates (stain_norm) is not reported as a difference."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from wbc.evaluation.runs import data_config

    pre = {"grayscale": False, "clahe": True, "clip_limit": 2.0, "tile_grid": 8, "white_balance": False}
    crops = {"size": 128, "image_size": 128, "mode": "single", "masked": False, "center": "bbox", "diameters": 2.7}
    info = {"image_size": 128, "preprocess": pre, "crops": crops}
    given = {"size": None, "image_size": 96, "mode": "single", "masked": False, "center": "bbox", "diameters": None,
             "transforms": {"p": 0.5}}
    data = OmegaConf.create({"image_size": 128, "preprocess": {**pre, "stain_norm": None}, "crops": given})
    with caplog.at_level("WARNING"):
        out = data_config(data, Path("."), info)
    assert out.preprocess == pre and "data.preprocess" not in caplog.text
    assert {k: out.crops[k] for k in crops} == crops and out.crops.transforms == {"p": 0.5}
    assert "data.crops" in caplog.text and "'diameters': 2.7" in caplog.text
    caplog.clear()
    data = OmegaConf.create({"image_size": 128, "preprocess": {**pre, "clahe": False}, "crops": {**crops}})
    with caplog.at_level("WARNING"):
        assert data_config(data, Path("."), info).preprocess == pre
    assert "data.preprocess=" in caplog.text and "data.crops" not in caplog.text
