"""Fine-tuning from a trained model (`init_from`) and label budgets (`data.train_per_class`): what a
lab needs to adapt a model to its own microscope with a few annotated cells."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from datamodules.segmentation import SegmentationDataModule
from tests.helpers_data import make_csv_dataset
from tests.helpers_models import save_checkpoint, tiny_modules
from wbc.fit import init_from


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two untrained module pairs with different weights; the first saved as checkpoints."""
    d = tmp_path_factory.mktemp("finetune")
    (seg0, clf0), (_, clf1) = tiny_modules(d / "a", seed=0), tiny_modules(d / "b", seed=1)
    return {"seg": save_checkpoint(seg0, d / "seg.ckpt"), "cls": save_checkpoint(clf0, d / "cls.ckpt"), "clf0": clf0, "clf1": clf1, "dir": d}


def _cfg(path, ckpt_path=None):
    return OmegaConf.create({"init_from": str(path), "ckpt_path": ckpt_path})


def test_init_from_loads_the_checkpoint_weights(trained) -> None:
    clf0, clf1 = trained["clf0"], trained["clf1"]
    assert any(not torch.equal(a, b) for a, b in zip(clf0.state_dict().values(), clf1.state_dict().values()))
    init_from(_cfg(trained["cls"]), clf1, "classification")
    assert all(torch.equal(a, b) for a, b in zip(clf0.state_dict().values(), clf1.state_dict().values()))


def test_init_from_refuses_another_stage_other_classes_other_network_and_a_resume(trained, tmp_path: Path) -> None:
    _, clf = tiny_modules(tmp_path / "m", seed=2)
    with pytest.raises(ValueError, match=r"init_from=.*seg\.ckpt: is a 'segmentation' checkpoint, expected a 'classification' one"):
        init_from(_cfg(trained["seg"]), clf, "classification")
    with pytest.raises(ValueError, match=r"init_from=.* and ckpt_path=.*: give one"):
        init_from(_cfg(trained["cls"], ckpt_path=str(trained["cls"])), clf, "classification")
    grey = tiny_modules(tmp_path / "g", ["data.preprocess.grayscale=true"])[1]
    with pytest.raises(ValueError, match=r"its weights do not fit this run's network \(other shapes: net\..*\(.*3.*\) -> \(.*1.*\)"):
        init_from(_cfg(trained["cls"]), grey, "classification")
    clf.hparams.data_info["classes"] = list(reversed(clf.hparams.data_info["classes"]))
    with pytest.raises(ValueError, match=r"its classes \[.*\] differ from this run's \[.*\]; fine-tuning keeps the classes"):
        init_from(_cfg(trained["cls"]), clf, "classification")


def test_fine_tuning_run_starts_fresh_from_the_weights(trained, make_cfg, run_training, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="wbc"):
        _, objects = run_training(make_cfg(["experiment=classify", f"init_from={trained['cls']}", "num_overlays=0"]))
    assert f"init_from: fine-tuning from {trained['cls']}" in caplog.text
    assert objects["trainer"].current_epoch == 1  # a new run of trainer.max_epochs=1, not a continued one


def test_train_per_class_keeps_a_fixed_label_budget(tmp_path: Path) -> None:
    root = make_csv_dataset(tmp_path / "ds", {"a": 12, "b": 12}, size=16)

    def dm(**kw) -> SegmentationDataModule:
        return SegmentationDataModule(root=str(root), name="budget", image_size=16, preprocess={"clahe": False}, classes=["a", "b"],
                                      splits={"k": 2, "seed": 0, "test_fraction": 0.3, "dir": str(tmp_path / "splits")}, **kw)

    full, few = dm().split_ids(), dm(train_per_class=2).split_ids()
    assert few["val"] == full["val"] and few["test"] == full["test"]
    assert set(few["train"]) < set(full["train"])
    classes = [dm().load_manifest().by_id()[s].class_name for s in few["train"]]
    assert sorted(classes) == ["a", "a", "b", "b"]
    assert dm(train_per_class=2, sampler_seed=7).split_ids()["train"] == few["train"]  # not the training seed's choice
    with pytest.raises(ValueError, match=r"data.train_per_class must be a positive whole number of images or null, got 0"):
        dm(train_per_class=0)
