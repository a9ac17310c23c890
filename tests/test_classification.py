"""Classification stage: leak-free crops, balanced sampling, metrics, and the full pipeline."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datamodules.classification import ClassificationDataModule
from datamodules.sampling import EpochSampler, balanced_weights
from lightning_modules.classification import cls_metrics, flatten_metrics
from wbc.evaluation.classification import classification_report, confusion

CLASSES = ["lymphoblast", "neutrophil", "promyelocyte"]


@pytest.fixture
def cls_dm(make_cfg) -> ClassificationDataModule:
    from wbc.fit import build_datamodule, postprocess_of

    cfg = make_cfg(["experiment=classify"])
    dm = build_datamodule(cfg.data, postprocess_of(cfg))
    dm.setup()
    return dm


def test_no_crop_from_a_test_image_reaches_training(cls_dm):
    ids = cls_dm.split_ids()
    sources = {split: {c.sample_id for c in cls_dm.datasets[split].crops} for split in ("train", "val", "test")}
    assert sources["test"] and sources["train"]
    assert not sources["test"] & (sources["train"] | sources["val"])
    assert not sources["train"] & sources["val"]
    # a crop inherits its image's split and label
    assert sources["test"] <= set(ids["test"]) and sources["train"] <= set(ids["train"])
    by_id = {s.id: s.class_name for s in cls_dm.manifest.samples}
    for c in cls_dm.datasets["train"].crops:
        assert CLASSES[c.label] == by_id[c.sample_id]


def test_crops_have_the_configured_size_and_augmentation_is_train_only(cls_dm):
    size = cls_dm.crop_spec.image_size
    train, test = cls_dm.datasets["train"], cls_dm.datasets["test"]
    assert train[0]["image"].shape == (3, size, size)
    assert torch.equal(test[0]["image"], test[0]["image"])
    n = len(train)
    assert not all(torch.equal(train[0]["image"], train[e * n]["image"]) for e in range(1, 5))


def test_balanced_sampler_draws_classes_about_uniformly():
    labels = [0] * 700 + [1] * 250 + [2] * 50  # 14:5:1 imbalance
    sampler = EpochSampler(len(labels), seed=0, weights=balanced_weights(labels))
    drawn = Counter()
    for _ in range(5):
        drawn.update(labels[i % len(labels)] for i in sampler)
    shares = np.array([drawn[c] for c in range(3)]) / sum(drawn.values())
    assert np.allclose(shares, 1 / 3, atol=0.03), shares


def test_epoch_sampler_is_reproducible_and_changes_per_epoch():
    a, b = EpochSampler(50, seed=3), EpochSampler(50, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert [i % 50 for i in a] != [i % 50 for i in b]
    assert sorted(i % 50 for i in a) == list(range(50))  # a permutation when not balanced


def test_balanced_sampler_in_the_datamodule_loader(cls_dm):
    cls_dm.sampler = "balanced"
    loader = cls_dm.train_dataloader()
    assert isinstance(loader, DataLoader) and isinstance(loader.sampler, EpochSampler)
    assert loader.sampler.weights is not None


def test_classification_metrics_equal_hand_computed_values():
    # known confusion: rows = truth, cols = prediction
    #   truth 0: 3 right, 1 -> class 1 ; truth 1: 2 right ; truth 2: 1 right, 1 -> class 0
    truth = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 0, 0, 1, 1, 1, 2, 0])
    probs = torch.nn.functional.one_hot(pred, 3).float() * 0.8 + 0.2 / 3
    m = cls_metrics(3)
    m.update(probs, truth)
    values = flatten_metrics(m.compute(), CLASSES, "test")
    recall = [3 / 4, 2 / 2, 1 / 2]
    precision = [3 / 4, 2 / 3, 1 / 1]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall)]
    assert values["test/accuracy"].item() == pytest.approx(6 / 8)
    assert values["test/balanced_accuracy"].item() == pytest.approx(np.mean(recall))
    assert values["test/macro_f1"].item() == pytest.approx(np.mean(f1))
    for c, r, p in zip(CLASSES, recall, precision):
        assert values[f"test/recall/{c}"].item() == pytest.approx(r)
        assert values[f"test/precision/{c}"].item() == pytest.approx(p)
    report = classification_report(probs.numpy(), truth.numpy(), CLASSES, "pipeline")
    assert report["pipeline/macro_f1"] == pytest.approx(np.mean(f1))
    assert confusion(probs.numpy(), truth.numpy(), 3).tolist() == [[3, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_classify_fast_dev_run_writes_confusion(make_cfg, run_training):
    cfg = make_cfg(["experiment=classify", "debug=fdr"])
    metrics, objects = run_training(cfg)
    out = Path(cfg.paths.output_dir)
    assert "test/macro_f1" in metrics
    assert (out / "test_confusion.csv").read_text().startswith("true\\pred,lymphoblast,neutrophil,promyelocyte")
    assert (out / "test_confusion.png").is_file()


def test_classify_trains_with_mixup_cutmix_and_warmup(make_cfg, run_training):
    cfg = make_cfg(["experiment=classify", "debug=fdr", "model.mixing.mixup_alpha=0.2", "model.mixing.cutmix_alpha=1.0",
                    "model.scheduler._target_=lightning_modules.schedules.warmup_cosine", "+model.scheduler.warmup_epochs=1",
                    "trainer.max_epochs=3"])
    metrics, objects = run_training(cfg)
    assert objects["model"].mixing.active and np.isfinite(metrics["test/macro_f1"])
    assert type(objects["trainer"].lr_scheduler_configs[0].scheduler).__name__ == "LambdaLR"


def test_pipeline_runs_end_to_end_and_predicts(make_cfg, run_training, make_eval_cfg, tmp_path):
    cfg = make_cfg(["experiment=pipeline", "trainer.max_epochs=2", "pipeline.predict_images=2", "pipeline.adapt_bn=classifier",
                    "classification.trainer.max_epochs=3", "classification.model.optimizer.lr=3e-4"])
    metrics, _ = run_training(cfg)
    out = Path(cfg.paths.output_dir)
    # each stage's dir holds the full config it ran with, the CLI's stage overrides included
    from omegaconf import OmegaConf

    cls_cfg, seg_cfg = (OmegaConf.load(out / s / ".hydra" / "config.yaml") for s in ("classification", "segmentation"))
    assert cls_cfg.trainer.max_epochs == 3 and cls_cfg.model.optimizer.lr == pytest.approx(3e-4) and cls_cfg.stage == "classification"
    assert seg_cfg.trainer.max_epochs == 2 and seg_cfg.stage == "segmentation" and seg_cfg.paths.output_dir == str(out / "segmentation")
    for key in ("pipeline/detection_precision", "pipeline/detection_recall", "pipeline/cell_macro_f1", "test/dice_post", "test/macro_f1"):
        assert key in metrics
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["pipeline/detection_recall"] == pytest.approx(metrics["pipeline/detection_recall"])
    # pipeline.adapt_bn=classifier: the pipeline score's classifier took the test images' statistics
    summary = json.loads((out / "pipeline_summary.json").read_text())
    assert summary["adapt_bn_models"] == ["classifier"] and summary["adapt_bn_images"] > 0
    # the classifier's colour profile (wbc.appearance) checked each test image with nuclei: the share flagged is reported
    checked = [p["unlike_training"] for p in summary["per_image"] if p["unlike_training"] is not None]
    assert checked and metrics["pipeline/unlike_training_share"] == pytest.approx(sum(checked) / len(checked))
    rows = (out / "predict" / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("image,cell,bbox_y0")
    # predict.py on a folder with one corrupt image: the others are processed, the bad one is named
    from wbc.cli import predict as predict_mod

    folder = tmp_path / "in"
    folder.mkdir()
    img = cv2.imread(str(Path(cfg.paths.data_dir) / "synthetic_tiny" / "images" / "img_0000.png"))
    cv2.imwrite(str(folder / "good.png"), img)
    cv2.imwrite(str(folder / "good2.png"), cv2.imread(str(Path(cfg.paths.data_dir) / "synthetic_tiny" / "images" / "img_0001.png")))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    from tests.conftest import compose_config

    pcfg = compose_config("predict.yaml", [f"input={folder}", f"run={out}"], tmp_path / "pred", Path(cfg.paths.data_dir))
    result, _ = predict_mod.predict(pcfg)
    assert result["failed"] == 1
    report = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert [Path(f["image"]).name for f in report["failed"]] == ["broken.png"]
    assert (tmp_path / "pred" / "overlays" / "good.png").is_file()
    assert report["adapt_bn_images"] == 0 and 0.0 <= metrics["pipeline/nucleus_dice"] <= 1.0
    # adapt_bn=true: statistics from the one readable image first; the broken one is still reported
    acfg = compose_config("predict.yaml", [f"input={folder}", f"run={out}", "adapt_bn=true"], tmp_path / "pred_bn", Path(cfg.paths.data_dir))
    result, objects = predict_mod.predict(acfg)
    report = json.loads((tmp_path / "pred_bn" / "predictions.json").read_text())
    assert result["failed"] == 1 and report["adapt_bn_images"] == 2 and report["adapt_bn_models"] == ["segmenter", "classifier"]
    # evaluate.py data=<another data config> on a pipeline run: each stage keeps its own DataModule
    # kind (images / cell crops); adapt_bn=classifier adapts that stage and the pipeline's classifier only
    from wbc.cli import evaluate

    emetrics, objects = evaluate.evaluate(make_eval_cfg(out, "data=synthetic_tiny", "adapt_bn=classifier"))
    assert type(objects["classification"]["datamodule"]).__name__ == "ClassificationDataModule"
    assert type(objects["segmentation"]["datamodule"]).__name__ == "SegmentationDataModule"
    summary = json.loads((tmp_path / "eval" / "pipeline_summary.json").read_text())
    assert summary["adapt_bn_models"] == ["classifier"] and "pipeline/cell_macro_f1" in emetrics
    assert json.loads((tmp_path / "eval" / "classification" / "metrics.json").read_text())["adapt_bn"] is True
    assert json.loads((tmp_path / "eval" / "segmentation" / "metrics.json").read_text())["adapt_bn"] is False
    # data whose classes are the model's in another order: refused (each label was scored against another class's column)
    order = list(objects["classification"]["datamodule"].classes)[::-1]
    with pytest.raises(ValueError, match=r"not the model's .* in its order; pass data\.classes="):
        evaluate.evaluate(make_eval_cfg(out / "classification", "data=synthetic_tiny", f"data.classes=[{','.join(order)}]"))
    # evaluate.py segmenter=<run> classifier=<run>: two separate runs scored as one pipeline give what
    # the pipeline run dir gives
    whole, _ = evaluate.evaluate(make_cfg([f"ckpt_path={out}", "num_overlays=0"], config_name="evaluate.yaml", output_dir=tmp_path / "e_run"))
    parts, _ = evaluate.evaluate(make_cfg([f"segmenter={out / 'segmentation'}", f"classifier={out / 'classification'}", "num_overlays=0"],
                                          config_name="evaluate.yaml", output_dir=tmp_path / "e_parts"))
    for key in ("pipeline/cell_macro_f1", "pipeline/detection_recall", "pipeline/nucleus_dice", "segmentation/test/dice_post", "classification/test/macro_f1"):
        assert parts[key] == pytest.approx(whole[key]), key
    assert json.loads((tmp_path / "e_parts" / "metrics.json").read_text())["run"] == {"segmentation": str(out / "segmentation"),
                                                                                      "classification": str(out / "classification")}


@pytest.mark.parametrize(("overrides", "expected"), [
    (["ckpt_path=run"], "run"),
    (["segmenter=a", "classifier=b"], {"segmentation": "a", "classification": "b"}),
    (["segmenter=a"], r"segmenter= and classifier= go together"),
    (["ckpt_path=run", "segmenter=a", "classifier=b"], r"ckpt_path=run and segmenter=/classifier= both given"),
])
def test_evaluate_takes_a_run_or_a_segmenter_and_a_classifier(make_cfg, overrides, expected):
    from wbc.cli.evaluate import ckpt_argument

    cfg = make_cfg(overrides, config_name="evaluate.yaml")
    if isinstance(expected, str) and expected.startswith(("segmenter", "ckpt_path")):
        with pytest.raises(ValueError, match=expected):
            ckpt_argument(cfg)
    else:
        assert ckpt_argument(cfg) == expected


def test_cell_f1_counts_missed_and_spurious_cells():
    from wbc.evaluation.pipeline import cell_f1

    # class 0: 2 found and right, 1 missed; class 1: 1 found but called 0, 1 spurious cell called 1
    pairs = [(0, 0), (0, 0), (0, None), (1, 0), (None, 1)]
    out = cell_f1(pairs, ["a", "b", "c"], "pipeline")
    assert out["pipeline/cell_f1/a"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # FP: the class-1 cell called 0
    assert out["pipeline/cell_f1/b"] == 0.0  # FN: its one cell; FP: the spurious one
    assert "pipeline/cell_f1/c" not in out  # no true cells: left out of the macro mean
    assert out["pipeline/cell_macro_f1"] == pytest.approx((4 / 6 + 0.0) / 2)
    assert cell_f1([], ["a"], "p") == {"p/cell_macro_f1": 0.0}

