"""Calibrated probabilities (temperature scaling, ECE/NLL/Brier) and cells flagged for review."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers_models import save_checkpoint, tiny_modules
from wbc.calibration import (
    apply_temperature,
    brier,
    classwise_ece,
    ece,
    fit_temperature,
    nll,
    review_threshold,
    risk_at_coverage,
    risk_coverage,
)
from wbc.postprocess import Instance
from wbc.review import ReviewOptions, review_reasons


def _overconfident(n: int = 4000, t_true: float = 2.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z / t_true) while the 'model' outputs softmax(z): overconfident by t_true."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, size=(n, 4))
    true_p = np.exp(z / t_true) / np.exp(z / t_true).sum(1, keepdims=True)
    labels = np.array([rng.choice(4, p=p) for p in true_p])
    model_p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return model_p.astype(np.float32), labels


def test_fit_temperature_recovers_the_true_temperature_and_lowers_ece_and_nll():
    probs, labels = _overconfident()
    t = fit_temperature(probs, labels)
    assert t == pytest.approx(2.5, rel=0.12)
    cal = apply_temperature(probs, t)
    assert ece(cal, labels) < 0.5 * ece(probs, labels)
    assert nll(cal, labels) < nll(probs, labels)
    assert brier(cal, labels) < brier(probs, labels)
    assert (cal.argmax(1) == probs.argmax(1)).all()  # the class never changes: F1 unchanged


def test_temperature_is_exactly_invertible_and_one_is_identity():
    probs, _ = _overconfident(200)
    np.testing.assert_allclose(apply_temperature(apply_temperature(probs, 1.7), 1 / 1.7), probs, atol=1e-5)
    np.testing.assert_allclose(apply_temperature(probs, 1.0), probs, atol=1e-6)


def test_calibrated_model_keeps_temperature_one_and_tiny_sets_are_not_fitted():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(3), size=3000).astype(np.float32)
    labels = np.array([rng.choice(3, p=row) for row in p])  # labels drawn from p itself: calibrated
    assert fit_temperature(p, labels) == pytest.approx(1.0, abs=0.12)
    assert fit_temperature(p[:5], labels[:5]) == 1.0
    assert fit_temperature(p[:50], np.zeros(50, int)) == 1.0  # one class seen: nothing to fit


def test_ece_by_hand_including_confidence_exactly_one():
    # two cases at confidence 1.0 (one right, one wrong) -> last bin: |0.5 - 1.0| x 2/4;
    # two at 0.6 (both right) -> |1.0 - 0.6| x 2/4: ECE = 0.25 + 0.2
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 0, 0, 1])
    assert ece(probs, labels) == pytest.approx(0.45)
    assert ece(np.array([[1.0, 0.0]] * 3), np.zeros(3, int)) == 0.0  # certain and right: no hidden extra bin
    # class 0 one-vs-rest: p0 = 1.0, 0.0, 0.6, 0.4 (each alone in its bin), is-0 = 1, 1, 1, 0
    assert classwise_ece(probs, labels)[0] == pytest.approx((0 + 1 + 0.4 + 0.4) / 4)


def test_brier_and_nll_by_hand():
    probs = np.array([[0.8, 0.2], [0.3, 0.7]])
    labels = np.array([0, 0])
    assert brier(probs, labels) == pytest.approx(((0.2**2 + 0.2**2) + (0.7**2 + 0.7**2)) / 2)
    assert nll(probs, labels) == pytest.approx(-(np.log(0.8) + np.log(0.3)) / 2)


def test_risk_coverage_and_review_threshold():
    conf = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.45, 0.4])
    correct = np.array([1, 1, 1, 1, 1, 1, 1, 0, 0, 0], bool)  # errors are the least confident
    cov, risk, aurc = risk_coverage(conf, correct)
    assert cov[-1] == 1.0 and risk[-1] == pytest.approx(0.3) and risk[6] == 0.0
    assert aurc == pytest.approx(np.mean([0] * 7 + [1 / 8, 2 / 9, 3 / 10]))
    assert risk_at_coverage(conf, correct, 0.7) == 0.0
    rng = np.random.default_rng(0)
    c = rng.uniform(size=1000)
    thr = review_threshold(c, 0.9)
    assert 0.08 <= float((c < thr).mean()) <= 0.10
    assert review_threshold(c, 1.0) == 0.0


def _inst(label: int, bbox: tuple[int, int, int, int], area: int) -> Instance:
    return Instance(label, bbox, ((bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2), area)


def test_review_reasons_name_each_cause():
    classes = ["a", "b"]
    probs = np.array([[0.95, 0.05], [0.55, 0.45], [0.9, 0.1], [0.9, 0.1], [0.9, 0.1]])
    views = np.stack([probs, probs.copy()])
    views[1, 2] = [0.2, 0.8]  # the flipped view of cell 3 picks b
    insts = [
        _inst(1, (20, 20, 40, 40), 314),  # fine
        _inst(2, (50, 50, 70, 70), 314),  # low confidence
        _inst(3, (80, 80, 100, 100), 314),  # views disagree
        _inst(4, (0, 10, 20, 30), 314),  # on the border
        _inst(5, (30, 60, 34, 64), 12),  # tiny
    ]
    reasons = review_reasons(probs, views, insts, (128, 128), classes, 0.7, (15.0, 25.0), 1.0)
    assert reasons[0] == []
    assert reasons[1] == ["low confidence (0.55 < 0.70)"]
    assert reasons[2] == ["views disagree (a / b)"]
    assert reasons[3] == ["nucleus touches the image border"]
    assert len(reasons[4]) == 1 and reasons[4][0].startswith("nucleus small")
    # the user's threshold wins; switches turn causes off
    off = ReviewOptions(min_probability=0.5, views_disagree=False, border=False)
    assert review_reasons(probs, views, insts, (128, 128), classes, 0.7, None, 1.0, off) == [[], [], [], [], []]
    with pytest.raises(ValueError, match="review: unknown key"):
        ReviewOptions.from_config({"min_prob": 0.5})


def test_classifier_temperature_travels_in_the_checkpoint_and_old_checkpoints_load(tmp_path: Path):
    from lightning_modules.classification import ClassifierModule
    from lightning_modules.common import module_from_checkpoint

    _, clf = tiny_modules(tmp_path)
    clf.temperature.fill_(2.0)
    clf.review_min_probability.fill_(0.6)
    path = save_checkpoint(clf, tmp_path / "c.ckpt")
    back = module_from_checkpoint(ClassifierModule, str(path), "classification")
    assert back.calibration() == {"temperature": 2.0, "review_min_probability": pytest.approx(0.6)}
    size = int(back.hparams.data_info["crops"]["image_size"])
    x = torch.rand(3, 3, size, size)
    raw = back.probabilities(x, calibrated=False).detach()
    torch.testing.assert_close(back.predict_proba(x), torch.as_tensor(apply_temperature(raw.numpy(), 2.0)), atol=1e-5, rtol=1e-4)
    # a checkpoint from before calibration (no buffers) loads with T = 1 and no review threshold
    ckpt = torch.load(path, weights_only=True)
    for k in ("temperature", "review_min_probability"):
        del ckpt["state_dict"][k]
    torch.save(ckpt, tmp_path / "old.ckpt")
    old = module_from_checkpoint(ClassifierModule, str(tmp_path / "old.ckpt"), "classification")
    assert old.calibration() == {"temperature": 1.0, "review_min_probability": 0.0}


def test_classify_run_fits_temperature_and_reports_calibration(make_cfg, run_training):
    cfg = make_cfg(["experiment=classify", "trainer.max_epochs=2"])
    metrics, objects = run_training(cfg)
    out = Path(cfg.paths.output_dir)
    for key in ("test/ece", "test/ece_lo", "test/ece_hi", "test/nll", "test/brier", "test/uncalibrated/ece", "test/temperature", "test/review/flagged", "test/review/aurc"):
        assert key in metrics, key
    assert metrics["test/ece_lo"] <= metrics["test/ece"] <= metrics["test/ece_hi"]
    assert (out / "test_reliability.png").stat().st_size > 1000
    report = json.loads((out / "test_calibration.json").read_text())
    # the checkpoint's temperature is the one fitted on its own validation epoch: refit it here
    from lightning_modules.classification import ClassifierModule
    from lightning_modules.common import module_from_checkpoint
    from wbc.evaluation.classification import predict_crops

    best = module_from_checkpoint(ClassifierModule, metrics.get("best_checkpoint") or str(sorted((out / "checkpoints").glob("epoch_*.ckpt"))[-1]), "classification")
    assert report["calibration"]["temperature"] == pytest.approx(float(best.temperature))
    assert float(best.temperature) != 1.0  # fitted (the tiny val split has enough crops)
    dm = objects["datamodule"]
    val = dm.datasets["val"]
    best.hparams.calibrate = True
    raw = apply_temperature(predict_crops(best, val), 1 / float(best.temperature))
    labels = np.array([c.label for c in val.crops])
    assert float(best.temperature) == pytest.approx(fit_temperature(raw, labels), rel=0.05)
    # the out-of-fold file carries the probabilities before the temperature too (fitted on these very
    # crops, so a seed ensemble or a cross-fitted calibration must start from them): T maps them onto p_
    from wbc.evaluation.classification import (
        has_uncalibrated,
        prediction_arrays,
        probability_array,
        read_predictions_csv,
    )

    classes, rows = read_predictions_csv(out / "val_predictions.csv")
    assert has_uncalibrated(rows, classes) and len(rows) == len(val)
    calibrated, _ = prediction_arrays(rows, classes)
    before = probability_array(rows, classes, uncalibrated=True)
    assert not np.allclose(before, calibrated, atol=1e-3)
    np.testing.assert_allclose(apply_temperature(before, report["calibration"]["temperature"]), calibrated, atol=2e-4)


def test_ensemble_temperature_is_fitted_on_pooled_out_of_fold_predictions(tmp_path: Path):
    from wbc.ensemble import ClassifierEnsemble, calibrate_from_oof
    from wbc.evaluation.classification import average

    (_, a), (_, b) = tiny_modules(tmp_path / "a", seed=0), tiny_modules(tmp_path / "b", seed=1)
    ens = ClassifierEnsemble([a, b], ["fold0", "fold1"])
    classes = ens.classes
    probs, labels = _overconfident(600, 2.0)
    probs = probs[:, :3] / probs[:, :3].sum(1, keepdims=True)
    labels = np.minimum(labels, 2)
    ckpts = []
    for k, rows in enumerate((slice(0, 300), slice(300, 600))):
        run = tmp_path / f"fold{k}"
        ckpts.append(save_checkpoint(a, run / "checkpoints" / "best.ckpt"))
        lines = ["sample_id,cell,true,pred," + ",".join(f"p_{c}" for c in classes)]
        lines += [f"s{i},1,{classes[y]},{classes[int(np.argmax(p))]}," + ",".join(f"{v:.5f}" for v in p) for i, (p, y) in enumerate(zip(probs[rows], labels[rows]), start=rows.start)]  # folds: disjoint crops
        (run / "val_predictions.csv").write_text("\n".join(lines) + "\n")
    calibrate_from_oof(ens, ckpts)
    rounded = np.round(probs, 5)
    assert ens.temperature == pytest.approx(fit_temperature(rounded, labels), rel=1e-3) and ens.temperature > 1.2
    assert "600 crops" in ens.calibration()["fitted_on"]
    member = [probs[:4], probs[4:8]]
    np.testing.assert_allclose(average(member, ens), apply_temperature((member[0] + member[1]) / 2, ens.temperature), atol=1e-6)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(
        ens.predict_proba(x), torch.as_tensor(apply_temperature(((a.predict_proba(x) + b.predict_proba(x)) / 2).numpy(), ens.temperature)), atol=1e-5, rtol=1e-4
    )
    assert ens.predict_views(x).shape == (2, 2, 3)
    torch.testing.assert_close(ens(x), ens.predict_proba(x))


def _write_oof(run: Path, classes: list[str], probs: np.ndarray, labels: np.ndarray) -> None:
    lines = ["sample_id,cell,true,pred," + ",".join(f"p_{c}" for c in classes)]
    lines += [f"s{i},1,{classes[y]},{classes[int(np.argmax(p))]}," + ",".join(f"{v:.5f}" for v in p) for i, (p, y) in enumerate(zip(probs, labels))]
    run.mkdir(parents=True, exist_ok=True)
    (run / "val_predictions.csv").write_text("\n".join(lines) + "\n")


def test_ensemble_temperature_averages_members_that_saw_the_same_crops(tmp_path: Path):
    """Two runs of one fold (seeds, or plain + masked twins) scored the same validation crops: the
    ensemble's temperature is fitted on their averaged probabilities, the ones it will output, not on
    both files pooled (which would fit each member's own over-confidence)."""
    from wbc.ensemble import ClassifierEnsemble, calibrate_from_oof

    (_, a), (_, b) = tiny_modules(tmp_path / "a", seed=0), tiny_modules(tmp_path / "b", seed=1)
    ens = ClassifierEnsemble([a, b], ["seed0", "seed1"])
    classes = ens.classes
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 400)
    member = []
    for _ in range(2):  # each member over-confident, with its own errors
        logits = rng.normal(0, 1.0, (400, 3)) * 4
        logits[np.arange(400), labels] += 3
        e = np.exp(logits - logits.max(1, keepdims=True))
        member.append(np.round(e / e.sum(1, keepdims=True), 5))
    ckpts = []
    for k, probs in enumerate(member):
        _write_oof(tmp_path / f"run{k}", classes, probs, labels)
        ckpts.append(save_checkpoint(a, tmp_path / f"run{k}" / "checkpoints" / "best.ckpt"))
    calibrate_from_oof(ens, ckpts)
    averaged, pooled = fit_temperature((member[0] + member[1]) / 2, labels), fit_temperature(np.concatenate(member), np.concatenate([labels, labels]))
    assert abs(averaged - pooled) > 0.1  # the two readings differ on this data
    assert ens.temperature == pytest.approx(averaged, rel=1e-3)
    assert "400 crops, 400 seen by several members" in ens.calibration()["fitted_on"]

    wrong = labels.copy()
    wrong[0] = (wrong[0] + 1) % 3  # a second file that calls one crop another class: not the same crops
    _write_oof(tmp_path / "run1", classes, member[1], wrong)
    ens = ClassifierEnsemble([a, b], ["seed0", "seed1"])
    calibrate_from_oof(ens, ckpts)
    assert ens.temperature == 1.0 and "no out-of-fold" in ens.calibration()["fitted_on"]


def test_pipeline_cells_carry_review_reasons(tmp_path: Path):
    from wbc.data.synthetic import SyntheticSpec, render_image
    from wbc.inference import CellPipeline

    seg, clf = tiny_modules(tmp_path)
    rgb = render_image(SyntheticSpec(image_size=64, seed=3), 0, "neutrophil")[0]
    res = CellPipeline(seg, clf, review=ReviewOptions(min_probability=1.01))(rgb)  # nobody is that sure
    assert len(res.review) == len(res.instances)
    assert all(any(r.startswith("low confidence") for r in reasons) for reasons in res.review)
    res = CellPipeline(seg, clf, review=ReviewOptions(min_probability=0.0, border=False, size_low=0, size_high=1e9))(rgb)
    assert res.review == [[] for _ in res.instances]
