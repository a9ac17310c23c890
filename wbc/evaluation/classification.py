"""Classification scoring: per-crop predictions, metrics from probabilities, confusion matrices."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
)

from wbc.io import atomic_write, write_json, write_text
from wbc.spreadsheet import guard, unguard_row

# the validation split's per-crop probabilities: a fold's out-of-fold predictions
OOF_FILE = Path("val_predictions.csv")
# its columns of probabilities before the temperature: the temperature was fitted on these very crops, so
# anything scored on them across runs (seed ensembles, cross-fitted calibration) starts from these
UNCALIBRATED = "uncalibrated_p_"
UNIT = "crops"
MAIN_METRIC = "macro_f1"


def same_classes(data_classes: Sequence[str], model_classes: Sequence[str], spec: Any) -> None:
    """Refuse to score a classifier on data whose classes are not the model's, in its order: each
    label is scored against the probability column of the same index (another order, e.g. data=folder's
    alphabetical one, scored every cell against another class's column, silently)."""
    if model_classes and list(data_classes) != list(model_classes):
        hint = f"pass data.classes=[{','.join(model_classes)}]" if sorted(data_classes) == sorted(model_classes) else "evaluate it on data with its classes"
        raise ValueError(f"{spec}: the data's classes {list(data_classes)} are not the model's {list(model_classes)} in its order; {hint}")


def present_class_recall(confusion: Any) -> tuple[np.ndarray, float]:
    """Per-class recall from a confusion matrix (rows: the true class), NaN for a class with no true sample, and the
    balanced accuracy: their mean over the classes present, as scikit-learn's balanced_accuracy_score
    (torchmetrics' macro accuracy counted a class absent from the truth but predicted as a recall of 0)."""
    cm = np.asarray(confusion, dtype=np.float64)
    support = cm.sum(1)
    recall = np.full(len(cm), np.nan)
    recall[support > 0] = np.diag(cm)[support > 0] / support[support > 0]
    return recall, float(np.nanmean(recall)) if (support > 0).any() else float("nan")


def classification_report(probs: np.ndarray, labels: np.ndarray, classes: list[str], prefix: str) -> dict[str, float]:
    """Accuracy and macro-F1 (torchmetrics), balanced accuracy and per-class recall over the classes present."""
    p, t, n = torch.as_tensor(probs, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.long), len(classes)
    recall, balanced = present_class_recall(confusion(probs, labels, n))
    out = {
        f"{prefix}/accuracy": float(multiclass_accuracy(p, t, n, average="micro")),
        f"{prefix}/balanced_accuracy": balanced,
        f"{prefix}/macro_f1": float(multiclass_f1_score(p, t, n, average="macro")),
    }
    for c, r in zip(classes, recall):
        out[f"{prefix}/recall/{c}"] = float(r)
    return out


def model_calibration(model) -> dict:
    """The fitted temperature and review threshold of a module or ensemble ({} for one without)."""
    fn = getattr(model, "calibration", None)
    return dict(fn()) if callable(fn) else {}


def score_calibration(probs: np.ndarray, labels: np.ndarray, classes: list[str], calibration: Mapping, out_dir: Path, prefix: str, stem: str = "",
                      uncalibrated: np.ndarray | None = None) -> dict[str, float]:
    """ECE (+ bootstrap 95 %), per-class ECE, NLL, Brier before and after the temperature, and the
    review figures (share flagged by the model's threshold, error of kept vs all, error at 90 %
    coverage, AURC); writes `<stem>calibration.json` and the `<stem>reliability.png` diagram.
    `uncalibrated`: the probabilities before the temperature, from the same forward pass (a training run's
    test scoring, evaluate.py: for an ensemble the mean of its members' T = 1 probabilities); without them
    rebuilt by undoing T (inexact for T < 1, where tiny probabilities were clipped; for an ensemble only its
    own temperature is undone, the members' stay applied)."""
    from wbc.calibration import (
        apply_temperature,
        calibration_report,
        reliability,
        risk_at_coverage,
        risk_coverage,
    )
    from wbc.plots import plot_reliability

    t = float(calibration.get("temperature", 1.0))
    before = np.asarray(uncalibrated) if uncalibrated is not None else apply_temperature(probs, 1.0 / t) if t != 1.0 else np.asarray(probs)
    after = calibration_report(probs, labels, classes, prefix)
    raw = calibration_report(before, labels, classes, f"{prefix}/uncalibrated", n_boot=200)
    out = {**after, **{k: v for k, v in raw.items() if k.count("/") == 2}, f"{prefix}/temperature": t}
    conf = np.asarray(probs).max(1) if len(labels) else np.zeros(0)
    correct = np.asarray(probs).argmax(1) == labels if len(labels) else np.zeros(0, bool)
    threshold = float(calibration.get("review_min_probability", 0.0))
    kept = conf >= threshold
    out.update({
        f"{prefix}/review/threshold": threshold,
        f"{prefix}/review/flagged": float(1 - kept.mean()) if len(conf) else float("nan"),
        f"{prefix}/review/error_kept": float(1 - correct[kept].mean()) if kept.any() else float("nan"),
        f"{prefix}/review/error_all": float(1 - correct.mean()) if len(conf) else float("nan"),
        f"{prefix}/review/error_at_90": risk_at_coverage(conf, correct, 0.9),
        f"{prefix}/review/aurc": risk_coverage(conf, correct)[2],
    })
    out_dir = Path(out_dir)
    curves = {f"before (T=1), ECE {raw[f'{prefix}/uncalibrated/ece']:.3f}": reliability(before, labels),
              f"after (T={t:.2f}), ECE {after[f'{prefix}/ece']:.3f}": reliability(probs, labels)}
    plot_reliability(curves, out_dir / f"{stem}reliability.png", f"{prefix}: reliability ({len(labels)} crops)")
    write_json(out_dir / f"{stem}calibration.json", {
        "metrics": out, "calibration": dict(calibration), "bins": 15,
        "definition": "top-1 ECE over 15 equal-width confidence bins (k/15, (k+1)/15], 1.0 in the last; 95 % bootstrap interval; "
                      "uncalibrated = " + ("the probabilities before any temperature (T = 1), from the same forward pass" if uncalibrated is not None
                                              else "the same probabilities with the temperature undone") + "; review: cells below the model's "
                      "review_min_probability are flagged; error_at_90 = error rate of the 90 % most confident",
    })
    return out


def confusion(probs: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    return multiclass_confusion_matrix(torch.as_tensor(probs).argmax(1), torch.as_tensor(labels, dtype=torch.long), n).numpy()


@torch.no_grad()
def predict_crops(module, dataset, batch_size: int = 64, calibrated: bool = True) -> np.ndarray:
    """Class probabilities of every crop; `calibrated=False`: before the module's temperature."""
    device = next(module.parameters()).device
    out = []
    for start in range(0, len(dataset), batch_size):
        x = torch.stack([dataset[i]["image"] for i in range(start, min(start + batch_size, len(dataset)))]).to(device)
        prob = module.predict_proba(x) if calibrated else module.probabilities(x, calibrated=False)
        out.append(prob.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(module.classes)))


def write_predictions(path: Path, dataset, probs: np.ndarray, classes: list[str], uncalibrated: np.ndarray | None = None) -> None:
    """One row per crop: sample id, cell, true and predicted class, class probabilities (csv module),
    and with `uncalibrated` the same before the temperature (UNCALIBRATED columns)."""
    import csv

    def _write(p: Path) -> None:
        with open(p, "w", newline="") as fh:
            writer = csv.writer(fh)
            extra = [f"{UNCALIBRATED}{c}" for c in classes] if uncalibrated is not None else []
            writer.writerow(["sample_id", "cell", "true", "pred", *(f"p_{c}" for c in classes), *extra])
            for i, (c, row) in enumerate(zip(dataset.crops, probs)):
                # 8 significant digits, so a true class's 3e-7 is not a 0: temperatures are fitted from these
                # (an ensemble's from the members' calibrated p_ columns, wbc.ensemble.calibrate_from_oof)
                raw = [f"{v:.8g}" for v in uncalibrated[i]] if uncalibrated is not None else []
                writer.writerow([guard(str(c.sample_id)), c.cell, guard(classes[c.label]), guard(classes[int(np.argmax(row))]), *(f"{v:.8g}" for v in row), *raw])

    atomic_write(path, _write)


def read_predictions_csv(path: Path) -> tuple[list[str], list[dict]]:
    """(classes from the p_<class> columns, rows) of a predictions CSV this product wrote (evaluate's or predict's)."""
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        classes = [h[2:] for h in (reader.fieldnames or []) if h.startswith("p_")]
        return classes, [unguard_row(r) for r in reader]


def probability_array(rows: list[dict], classes: list[str], uncalibrated: bool = False, dtype=np.float32) -> np.ndarray:
    """N x C class probabilities of rows read by `read_predictions_csv`; `uncalibrated`: the
    UNCALIBRATED columns (has_uncalibrated says whether a file has them)."""
    prefix = UNCALIBRATED if uncalibrated else "p_"
    return np.asarray([[float(r[f"{prefix}{c}"]) for c in classes] for r in rows], dtype=dtype).reshape(len(rows), len(classes))


def prediction_arrays(rows: list[dict], classes: list[str], uncalibrated: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(N x C class probabilities, N true-class indices) of rows read by `read_predictions_csv`."""
    return probability_array(rows, classes, uncalibrated), np.asarray([classes.index(r["true"]) for r in rows])


def has_uncalibrated(rows: list[dict], classes: list[str]) -> bool:
    """Whether prediction rows carry the probabilities before the temperature (validation predictions
    written since they do; older runs' hold only the calibrated ones). No rows: nothing lacks them."""
    return not rows or all(f"{UNCALIBRATED}{c}" in rows[0] for c in classes)


def write_confusion(matrix: np.ndarray, classes: list[str], stem: Path, title: str, loggers=()) -> None:
    """`<stem>.csv` (true x predicted counts) and `<stem>.png`, also sent to image-capable loggers."""
    import csv
    import io

    from wbc.plots import plot_confusion

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["true\\pred", *classes])
    writer.writerows([c, *(int(v) for v in row)] for c, row in zip(classes, matrix))
    write_text(stem.with_suffix(".csv"), buf.getvalue())
    fig = plot_confusion(matrix, classes, stem.with_suffix(".png"), title)
    for lg in loggers:
        if hasattr(lg, "log_image"):
            lg.log_image(key=f"{stem.name}/confusion_matrix", images=[str(stem.with_suffix(".png"))])
        elif hasattr(getattr(lg, "experiment", None), "add_figure"):
            lg.experiment.add_figure(f"{stem.name}/confusion_matrix", fig)
    import matplotlib.pyplot as plt

    plt.close(fig)


# ----------------------------------------------------------------------------- the stage's interface
# (wbc.stages.Stage: the same functions exist for segmentation)
def eval_dataset(datamodule, split: str):
    """A split's crops without training augmentation."""
    datamodule.setup()
    if split == "train":
        return datamodule.make_dataset("eval", datamodule.cached(datamodule.split_ids()["train"]))
    return datamodule.datasets[split]


def predict(module, datamodule, split: str) -> np.ndarray:
    return predict_crops(module, eval_dataset(datamodule, split))


def predict_pair(module, datamodule, split: str) -> tuple[np.ndarray | None, np.ndarray]:
    """(before the temperature, after it) of a split's crops from one forward pass: evaluate.py's "before
    calibration" figures then read the T = 1 probabilities themselves, not T undone on the calibrated ones."""
    return calibrated_pair(module, eval_dataset(datamodule, split))


def average(member_probs, model=None) -> np.ndarray:
    """The mean of the members' class probabilities (before argmax), then the ensemble's own
    temperature when `model` (the ClassifierEnsemble) has one: what its predict_proba gives."""
    from wbc.calibration import apply_temperature

    mean = np.mean(np.stack(list(member_probs)), axis=0)
    t = float(model_calibration(model).get("temperature", 1.0)) if len(member_probs) > 1 else 1.0
    return apply_temperature(mean, t) if t != 1.0 else mean


def score(
    datamodule, split: str, probabilities: np.ndarray, out_dir: Path, post=None, num_overlays: int = 0, title: str = "", model=None,
    uncalibrated: np.ndarray | None = None,
) -> tuple[dict, dict]:
    """(metrics, summary) of one model's or an ensemble's crop probabilities on a split; writes
    predictions.csv, confusion.csv/.png, calibration.json, reliability.png and summary.json under
    out_dir (`model`: what produced the probabilities, for its temperature and review threshold;
    `uncalibrated`: the same crops before any temperature, scored as "before calibration" and written
    as the UNCALIBRATED columns)."""
    dataset = eval_dataset(datamodule, split)
    classes = list(datamodule.classes)
    labels = np.asarray([c.label for c in dataset.crops])
    report = classification_report(probabilities, labels, classes, split)
    matrix = confusion(probabilities, labels, len(classes))
    out_dir = Path(out_dir)
    report.update(score_calibration(probabilities, labels, classes, model_calibration(model), out_dir, split, uncalibrated=uncalibrated))
    write_predictions(out_dir / "predictions.csv", dataset, probabilities, classes, uncalibrated)
    write_confusion(matrix, classes, out_dir / "confusion", title or f"{split} confusion matrix (crops)")
    summary = {"split": split, "n_crops": len(labels), "n_cases": len(labels), "classes": classes, "metrics": report, "confusion": matrix}
    write_json(out_dir / "summary.json", summary)
    return report, summary


def report_test(model, out_dir: Path) -> None:
    """Right after trainer.test (also in smoke runs): the test confusion matrix it accumulated,
    next to the run (test_confusion.csv/.png) and on image-capable dashboards."""
    matrix = getattr(model, "test_confusion", None)
    if matrix is not None:
        loggers = model.trainer.loggers if model._trainer is not None else ()
        write_confusion(matrix, list(model.classes), out_dir / "test_confusion", "test confusion matrix (crops)", loggers)


def score_test(model, datamodule, out_dir: Path, post=None, num_overlays: int = 0) -> dict[str, float]:
    """After trainer.test (which logged the test metrics): per-crop test predictions next to the run."""
    ds = datamodule.datasets["test"]
    raw, probs = calibrated_pair(model, ds)
    write_predictions(out_dir / "test_predictions.csv", ds, probs, model.classes)
    labels = np.asarray([c.label for c in ds.crops])
    calib = score_calibration(probs, labels, list(model.classes), model_calibration(model), out_dir, "test", "test_", raw) if len(labels) else {}
    return {"test/n_crops": float(len(ds)), **calib}


def score_val(model, datamodule, out_dir: Path, post=None) -> dict[str, float]:
    """val_predictions.csv: the fold's out-of-fold crops (pooled by the CV summary)."""
    val = datamodule.datasets["val"]
    # the temperature was fitted on these crops: the probabilities before it go with them, for what is
    # scored on them later across runs (benchmarks/seed_ensemble.py, quality_calibration.py's cross-fit)
    raw, calibrated = calibrated_pair(model, val)
    write_predictions(out_dir / OOF_FILE, val, calibrated, model.classes, raw)
    return {"val/n_crops": float(len(val))}


def calibrated_pair(model, dataset) -> tuple[np.ndarray | None, np.ndarray]:
    """(probabilities before the temperature, after it) of every crop, from one forward pass; (None, after)
    for a model without a temperature of its own."""
    if not hasattr(model, "calibrated"):
        return None, predict_crops(model, dataset)
    raw = predict_crops(model, dataset, calibrated=False)
    with torch.no_grad():  # predict_proba's last step, on the module's device
        return raw, model.calibrated(torch.as_tensor(raw, device=next(model.parameters()).device)).float().cpu().numpy()


def pool_oof(jobs) -> tuple[dict, list[dict]] | None:
    """Pool every fold's validation crops (val_predictions.csv) and re-score them together."""
    import logging

    from wbc.rundir import stage_file

    classes: list[str] | None = None
    rows: list[dict] = []
    used = []
    for job in jobs:
        path = stage_file(job.run_dir, OOF_FILE)
        if path is None:
            continue
        cls, rs = read_predictions_csv(path)
        if classes is None:
            classes = cls
        elif cls != classes:
            logging.getLogger("wbc").warning("CV summary: %s has classes %s, other folds %s: left out of the OOF score", path, cls, classes)
            continue
        used.append(job.name)
        rows.extend({"job": job.name, "fold": job.fold, **r} for r in rs)
    if not rows or not classes:
        return None
    probs, labels = prediction_arrays(rows, classes)
    info = {
        "metrics": classification_report(probs, labels, classes, "oof/val"),
        "n_crops": len(rows),
        "classes": classes,
        "jobs": used,
        "definition": "every fold's validation crops pooled, then accuracy / balanced accuracy / macro-F1 computed once",
    }
    return info, rows
