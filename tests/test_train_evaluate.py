"""End-to-end: train.py and evaluate.py through the Hydra compose API on the tiny synthetic set."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from wbc.cli import evaluate


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _test_ids(objects: dict) -> list[str]:
    return objects["datamodule"].split_ids()["test"]


def _csv_epochs(metrics_csv: Path, key: str) -> set[int]:
    with open(metrics_csv, newline="") as fh:
        return {int(float(r["epoch"])) for r in csv.DictReader(fh) if r.get(key) not in (None, "")}


def test_fast_dev_run_writes_metrics(make_cfg, run_training, tmp_path: Path) -> None:
    cfg = make_cfg(["debug=fdr"])
    metrics, objects = run_training(cfg)
    assert objects["trainer"].fast_dev_run
    saved = _read_json(tmp_path / "run" / "metrics.json")
    assert saved["best_checkpoint"] is None  # fast_dev_run does not checkpoint
    assert "test/dice" in saved and "test/accuracy" in saved
    assert 0.0 <= saved["train/dice"] <= 1.0
    assert "test/dice_post" not in saved  # full-resolution scoring is skipped on a smoke run


def test_train_writes_checkpoints_metrics_and_test_eval(trained_run) -> None:
    run, metrics, objects = trained_run
    assert (run / "checkpoints" / "last.ckpt").is_file()
    epoch_ckpts = sorted(p.name for p in (run / "checkpoints").glob("epoch_*.ckpt"))
    assert epoch_ckpts and all(re.fullmatch(r"epoch_\d{3}\.ckpt", n) for n in epoch_ckpts), epoch_ckpts
    saved = _read_json(run / "metrics.json")
    assert 0.0 <= saved["test/dice_post"] <= 1.0
    assert Path(saved["best_checkpoint"]).name in epoch_ckpts
    assert saved["val/dice_best"] == pytest.approx(metrics["val/dice_best"])
    assert 0.0 <= saved["train/dice"] <= 1.0
    summary = _read_json(run / "test_eval" / "summary.json")
    test_ids = _test_ids(objects)
    assert summary["n_cases"] == len(test_ids) == len(summary["metric_per_case"])
    assert sorted(c["id"] for c in summary["metric_per_case"]) == sorted(test_ids)
    assert len(list((run / "test_eval" / "masks").glob("*.png"))) == len(test_ids)
    assert len(list((run / "test_eval" / "overlays").glob("*.png"))) == 2  # num_overlays=2
    assert (run / "learning_curves.png").is_file()


def test_evaluate_run_dir(trained_run, make_eval_cfg, tmp_path: Path) -> None:
    run, train_metrics, objects = trained_run
    metrics, out = evaluate.evaluate(make_eval_cfg(run))
    best = Path(train_metrics["best_checkpoint"])
    assert out["checkpoint"] == run / "checkpoints" / best.name  # a run dir resolves to its best checkpoint
    eval_dir = tmp_path / "eval"
    summary = _read_json(eval_dir / "summary.json")
    test_ids = _test_ids(objects)
    assert summary["n_cases"] == len(test_ids)
    assert sorted(c["id"] for c in summary["metric_per_case"]) == sorted(test_ids)
    assert {"mean", "mean_per_class", "dataset_wise"} <= set(summary)
    assert len(list((eval_dir / "overlays").glob("*.png"))) == 2
    assert len(list((eval_dir / "masks").glob("*.png"))) == len(test_ids)
    assert (eval_dir / "learning_curves.png").is_file()
    saved = _read_json(eval_dir / "metrics.json")
    assert saved["n_cases"] == len(test_ids)
    # same checkpoint, same data and post-processing as the training run's own test scoring
    for key in ("test/dice_post", "test/dice_raw_fullres", "test/dice_dataset_post"):
        assert saved[key] == pytest.approx(train_metrics[key], abs=1e-6), key
        assert metrics[key] == pytest.approx(train_metrics[key], abs=1e-6), key


def test_evaluate_checkpoint_file_with_data_override(trained_run, make_eval_cfg, tmp_path: Path) -> None:
    run, _, objects = trained_run
    cfg = make_eval_cfg(run / "checkpoints" / "last.ckpt", "data=synthetic_tiny", "split=val")
    assert cfg.data is not None
    metrics, _ = evaluate.evaluate(cfg)
    val_ids = objects["datamodule"].split_ids()["val"]
    assert _read_json(tmp_path / "eval" / "summary.json")["n_cases"] == len(val_ids)
    assert "val/dice_post" in metrics


def test_resume_continues_epochs_and_steps(trained_run, make_cfg, run_training, tmp_path: Path) -> None:
    run, first_metrics, first = trained_run
    first_best = first_metrics["val/dice_best"]
    steps_per_epoch = first["trainer"].global_step
    assert steps_per_epoch > 0 and first["trainer"].current_epoch == 1
    cfg = make_cfg([f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=2", "num_overlays=0"])
    metrics, objects = run_training(cfg)
    trainer = objects["trainer"]
    assert trainer.current_epoch == 2  # one more epoch, not two
    assert trainer.global_step == 2 * steps_per_epoch
    epochs = _csv_epochs(tmp_path / "run" / "csv" / "metrics.csv", "train/loss")
    assert epochs == {1}
    assert (tmp_path / "run" / "checkpoints" / "epoch_001.ckpt").is_file()
    # the best validation Dice so far survives the resume (it is what sweepers optimise)
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["val_dice_best"] == pytest.approx(first_best)
    assert metrics["val/dice_best"] >= first_best - 1e-6


def test_eval_checkpoint_last_tests_the_final_weights(make_cfg, run_training, tmp_path: Path) -> None:
    """eval_checkpoint=last (a fixed schedule): test and out-of-fold scoring use last.ckpt, not the best epoch."""
    # a monitor that gets worse (val/loss, mode max): the best epoch is 0, so a last.ckpt written
    # only with top-k checkpoints (Lightning 2.6 save_last) would hold epoch 0
    metrics, objects = run_training(make_cfg(["eval_checkpoint=last", "trainer.max_epochs=2", "num_overlays=0", "monitor=val/loss"]))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert metrics["best_checkpoint"] == str(last)
    assert objects["trainer"].checkpoint_callback.best_model_path != str(last)
    tested = torch.load(last, map_location="cpu", weights_only=True)
    assert tested["epoch"] == 1  # the final epoch's weights
    with pytest.raises(ValueError, match="eval_checkpoint='newest'"):
        run_training(make_cfg(["eval_checkpoint=newest"]))


def test_eval_checkpoint_best_reports_the_tested_weights_validation(make_cfg, run_training, tmp_path: Path) -> None:
    """With eval_checkpoint=best, metrics.json's val/ figures are the tested checkpoint's, not the last epoch's
    (the CV summary averages them beside the tested weights' out-of-fold figures). A monitor that gets worse
    (val/loss, mode max) makes the best epoch 0 of 3: its val/loss is the checkpoint's recorded score."""
    metrics, objects = run_training(make_cfg(["trainer.max_epochs=3", "num_overlays=0", "monitor=val/loss"]))
    cb = objects["trainer"].checkpoint_callback
    assert torch.load(cb.best_model_path, map_location="cpu", weights_only=True)["epoch"] != 2  # not the last epoch
    saved = _read_json(tmp_path / "run" / "metrics.json")
    assert saved["val/loss"] == pytest.approx(float(cb.best_model_score), rel=1e-5)
    with open(tmp_path / "run" / "csv" / "metrics.csv", newline="") as fh:  # the curves: one validation row an epoch
        assert len([r for r in csv.DictReader(fh) if r.get("val/loss") not in (None, "")]) == 3


def test_test_only_run_uses_ckpt_path(trained_run, make_cfg, run_training) -> None:
    """train=false ckpt_path=...: the given checkpoint is tested (not freshly initialised weights)."""
    run, first_metrics, _ = trained_run
    last = run / "checkpoints" / "last.ckpt"  # 1-epoch run: same weights as its best checkpoint
    metrics, _ = run_training(make_cfg(["train=false", f"ckpt_path={last}", "num_overlays=0"]))
    assert metrics["best_checkpoint"] == str(last)
    for key in ("test/dice", "test/loss", "test/dice_post"):
        assert metrics[key] == pytest.approx(first_metrics[key], abs=1e-6), key


def test_evaluate_rejects_bad_checkpoints(make_eval_cfg, tmp_path: Path) -> None:
    garbage = tmp_path / "x.ckpt"
    garbage.write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match="ckpt_path="):
        evaluate.evaluate(make_eval_cfg(garbage))

    not_lightning = tmp_path / "tensor.ckpt"
    torch.save(torch.zeros(3), not_lightning)  # a valid torch file, but no state_dict/hyper_parameters
    with pytest.raises(ValueError, match="ckpt_path=.*not a Lightning checkpoint"):
        evaluate.evaluate(make_eval_cfg(not_lightning))

    other = tmp_path / "det" / "checkpoints" / "epoch_000.ckpt"
    other.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "hyper_parameters": {"stage": "detection"}}, other)
    with pytest.raises(ValueError, match=r"det.*cannot tell whether it is a segmentation or a classification run"):
        evaluate.evaluate(make_eval_cfg(other))

    with pytest.raises(FileNotFoundError, match="ckpt_path="):
        evaluate.evaluate(make_eval_cfg(tmp_path / "nowhere.ckpt"))

    with pytest.raises(ValueError, match="ckpt_path is required"):
        evaluate.evaluate(make_eval_cfg("null"))
    cfg = make_eval_cfg("null")
    with open_dict(cfg):
        del cfg["ckpt_path"]  # missing from the config altogether
    with pytest.raises(ValueError, match="ckpt_path is required"):
        evaluate.evaluate(cfg)


def test_evaluate_sweep_dir_without_finished_runs(make_eval_cfg, tmp_path: Path) -> None:
    """A sweep dir is a fold ensemble (tests/test_ensemble.py); with no finished run there is nothing to score."""
    sweep = tmp_path / "sweep"
    for fold in ("0", "1"):
        (sweep / fold / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="sweep dir without a finished run"):
        evaluate.evaluate(make_eval_cfg(sweep))


def test_evaluate_requires_cli_missing_value(make_cfg) -> None:
    cfg = make_cfg([], config_name="evaluate.yaml")  # ckpt_path left unset
    with pytest.raises(ValueError, match="ckpt_path is required"):
        evaluate.evaluate(cfg)


@pytest.mark.slow
def test_overfit_tiny_data(make_cfg, run_training) -> None:
    """debug=overfit (2 batches, no augmentation, 60 epochs): the model and loss can learn at all
    (the source study's network painted background). ~7 s on an idle 2-core CPU; the test phase is
    skipped as only the training Dice matters here."""
    cfg = make_cfg(["debug=overfit", "test=false"])
    metrics, _ = run_training(cfg)
    assert metrics["train/dice"] > 0.9, metrics["train/dice"]


def test_scoring_the_train_split_is_unaugmented(trained_run) -> None:
    """seg_eval on split=train scores the resized images, not the augmented training views."""
    from wbc.evaluation.segmentation import evaluate_segmentation, predict_probabilities

    _, _, objects = trained_run
    model, dm = objects["model"], objects["datamodule"]
    dm.setup()
    plain = dm.make_dataset("eval", dm.datasets["train"].items)  # resize only
    expected = evaluate_segmentation(model, dm, "train", num_overlays=0, probabilities=predict_probabilities(model, plain))
    scored = evaluate_segmentation(model, dm, "train", num_overlays=0)
    assert scored["n_cases"] == len(dm.split_ids()["train"])
    for key in ("dice_raw", "iou_raw"):
        got = [c[key] for c in scored["metric_per_case"]]
        assert got == pytest.approx([c[key] for c in expected["metric_per_case"]]), key


def test_clear_border_follows_the_data_and_travels_in_the_checkpoint(make_cfg, trained_run) -> None:
    """postprocess.clear_border defaults to data.single_cell (on for the single-cell sets), and the
    segmenter checkpoint carries the post-processing it was validated with."""
    assert make_cfg(["data=all_idb2"]).postprocess.clear_border is True
    assert make_cfg([]).postprocess.clear_border is False
    assert make_cfg(["data=all_idb2", "postprocess.clear_border=false"]).postprocess.clear_border is False
    run, _, objects = trained_run
    info = objects["model"].hparams.data_info
    assert info["postprocess"]["min_area"] == 4 and info["postprocess"]["clear_border"] is False  # postprocess=tiny


def test_evaluate_tta_overrides_the_checkpoint_setting(trained_run) -> None:
    from lightning_modules.common import module_from_checkpoint
    from lightning_modules.segmentation import SegmentationModule
    from wbc.evaluation.runs import apply_tta

    run, _, _ = trained_run
    module = module_from_checkpoint(SegmentationModule, str(run / "checkpoints" / "last.ckpt"), "segmentation")
    assert not module.hparams.tta
    apply_tta([module], None)
    assert not module.hparams.tta
    x = torch.rand(1, 3, 32, 32)
    single = module.predict_probability(x)
    apply_tta([module], True)
    assert module.hparams.tta and not torch.allclose(module.predict_probability(x), single)
    torch.testing.assert_close(module.predict_probability(x.flip(-1)), module.predict_probability(x).flip(-1), atol=1e-5, rtol=0)
