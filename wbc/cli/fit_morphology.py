"""`wbc-fit-morphology` / `python fit_morphology.py [data=...] [data.fold=k]`: fit the nucleus-morphology
classifier (wbc/morphology.py) on a data config's labelled cells and write the `morphology.json` that
predict.py / evaluate.py / serve.py take as `morphology=<file>` (conf/fit_morphology.yaml says which cells).

Why a command: the model is seconds of scikit-learn on twelve numbers a cell, so a lab refits it on its
own labelled cells (predict.py's annotated_dataset) or on any dataset it has masks for, without training
a network; the figure to decide on is the fold's validation macro-F1 (metrics.json), as for train.py.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from wbc.cli import CONFIG_DIR, prepare
from wbc.run import extras, task_wrapper

log = logging.getLogger("wbc")
FIT_ON = ("train", "train+val")


def measure_cells(dm, ids: Sequence[str], closing: float) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(feature rows, class indices, ids of images with a cell that could not be measured) of the cells
    in `ids`, found as the classifier's data finds them (the nucleus mask through data.crops' cell
    finding, each cell taking its image's class) and measured on the raw RGB image."""
    from wbc.cells import find_cells
    from wbc.data.manifest import NUCLEUS, load_instances, load_sample
    from wbc.morphology import FEATURES, cell_measurements

    m = dm.load_manifest()
    by_id, index = m.by_id(), {c: i for i, c in enumerate(m.classes)}
    rows, labels, unmeasured = [], [], []
    for sid in ids:
        sample = by_id[sid]
        rgb, mask = load_sample(sample, dm.encoding_of(sid))
        cell_labels, instances = find_cells(mask == NUCLEUS, dm.crop_spec, dm.postprocess, load_instances(sample))
        feats = cell_measurements(rgb, cell_labels, instances, closing)
        ok = np.isfinite(feats).all(1)
        if not ok.all() or not instances:
            unmeasured.append(sid)
        rows.append(feats[ok])
        labels += [index[sample.class_name]] * int(ok.sum())
    x = np.concatenate(rows) if rows else np.zeros((0, len(FEATURES)))
    return x, np.asarray(labels, dtype=int), unmeasured


def scores(model, x: np.ndarray, y: np.ndarray, split: str) -> dict[str, float]:
    """macro-F1 and balanced accuracy of the model on one split's cells (over all its classes)."""
    from sklearn.metrics import balanced_accuracy_score, f1_score

    if not len(y):
        return {}
    pred = model.predict_proba(x).argmax(1)
    labels = list(range(len(model.classes)))
    return {f"{split}/macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
            f"{split}/balanced_accuracy": float(balanced_accuracy_score(y, pred)), f"{split}/cells": float(len(y))}


@task_wrapper
def fit_morphology(cfg: DictConfig) -> tuple[dict, dict]:
    """Measure, fit, score, write morphology.json + metrics.json; returns (metrics, {"model", "datamodule"})."""
    from wbc.fit import build_datamodule, postprocess_of
    from wbc.io import write_json
    from wbc.morphology import MorphologyClassifier, check_outline_closing

    if cfg.fit_on not in FIT_ON:
        raise ValueError(f"fit_on={cfg.fit_on!r}: expected one of {list(FIT_ON)}")
    closing, c = check_outline_closing(cfg.outline_closing), cfg.c  # `default`: wbc.morphology.OUTLINE_CLOSING
    if isinstance(c, bool) or not isinstance(c, int | float) or c <= 0:
        raise ValueError(f"c={c!r}: expected a positive number (inverse regularisation strength)")
    out = Path(cfg.paths.output_dir)
    # the run's `postprocess` node finds the cells, as train.py's classification data does
    dm = build_datamodule(cfg.data, postprocess_of(cfg))
    ids = dm.split_ids()
    classes = list(dm.load_manifest().classes)
    fit_ids = ids["train"] + (ids["val"] if cfg.fit_on == "train+val" else [])
    x, y, skipped = measure_cells(dm, fit_ids, float(closing))
    model = MorphologyClassifier.fit(x, y, classes, c=float(c), outline_closing=float(closing))
    path = model.save(out / "morphology.json")
    metrics: dict[str, float] = {"train/cells": float(len(y))}
    splits = ([] if cfg.fit_on == "train+val" else ["val"]) + (["test"] if cfg.test else [])
    for split in splits:
        xs, ys, missed = measure_cells(dm, ids[split], float(closing))
        metrics.update(scores(model, xs, ys, split))
        skipped += missed
    if skipped:
        log.warning("%d image(s) held a cell too small or too close to the edge to measure, left out: %s", len(skipped),
                    ", ".join(skipped[:10]) + (" ..." if len(skipped) > 10 else ""))
    metrics["unmeasured_images"] = float(len(skipped))
    write_json(out / "metrics.json", metrics)
    shown = ", ".join(f"{k}={v:.0f}" if k.endswith(("cells", "images")) else f"{k}={v:.4f}" for k, v in metrics.items())
    print(f"\nmorphology model on {', '.join(classes)} ({cfg.fit_on} cells of fold {dm.fold}): {shown}\n"
          f"  {path}\n  use it: python predict.py ... morphology={path}")
    return metrics, {"model": model, "datamodule": dm}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="fit_morphology.yaml")
def run(cfg: DictConfig) -> float | None:
    extras(cfg)
    metrics, _ = fit_morphology(cfg)
    return metrics.get("val/macro_f1")


def main() -> None:
    """Console script `wbc-fit-morphology` (and `python fit_morphology.py`)."""
    prepare()
    run()
