"""Full-pipeline scoring: image -> nucleus mask -> cells -> class, against the ground truth.

Cells predicted on test images are matched one-to-one to ground-truth cells by IoU; we report
detection precision/recall, classification metrics on matched cells next to the classifier's own
figures on ground-truth crops, and a detection-aware cell F1 (`pipeline/cell_macro_f1`, the
CoNIC/PanNuke habit): a missed cell is a false negative of its class and a spurious or misplaced
cell a false positive of the class it was given, so a pipeline that finds few cells cannot score
well on the few it finds. `pipeline/nucleus_dice` is the per-image Dice of the pipeline's cell mask
(after post-processing, at the image's resolution) against the true nucleus mask. With `adapt_bn`
both models first re-estimate their batch-norm statistics on the split's images (AdaBN, no labels
read), as `predict.py adapt_bn=true` does for a lab's folder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wbc.cells import find_cells, match_instances
from wbc.data.manifest import NUCLEUS, load_instances, load_sample
from wbc.evaluation.classification import classification_report, confusion, same_classes
from wbc.evaluation.segmentation import case_scores
from wbc.inference import CellPipeline
from wbc.io import write_json

log = logging.getLogger("wbc")


def score_pipeline(pipe: CellPipeline, datamodule, out_dir: Path, iou_threshold: float = 0.5, adapt_bn: Sequence[str] = ()) -> dict[str, float]:
    """Detection precision/recall of the predicted cells (one-to-one IoU matching) and the class
    metrics of the matched ones, on the test split; pipeline_summary.json + pipeline_confusion.png."""
    classes = datamodule.classes
    if pipe.classifier is not None:
        same_classes(list(classes), list(pipe.classes), "the pipeline's classifier")
    ids = datamodule.split_ids()["test"]
    items = datamodule.cached(ids)
    if adapt_bn:
        pipe.adapt_batchnorm(lambda: (load_sample(it.sample, datamodule.encoding_of(it.sample.id))[0] for it in items), models=adapt_bn)
    dice: list[float] = []
    n_pred = n_true = 0
    probs, labels, per_image = [], [], []
    pairs: list[tuple[int | None, int | None]] = []  # (true class, predicted class) per cell; None = no partner
    for it in items:
        rgb, _ = load_sample(it.sample, datamodule.encoding_of(it.sample.id))  # a combined set: each part's own encoding
        res = pipe(rgb)
        true_labels, true_inst = find_cells(it.labels == NUCLEUS, pipe.crop_spec, pipe.postprocess, load_instances(it.sample))
        matches = match_instances(res.labels, true_labels, iou_threshold)
        dice.append(case_scores(res.labels > 0, it.labels == NUCLEUS)["dice"])
        n_pred += len(res.instances)
        n_true += len(true_inst)
        for pred_id, _true_id, _iou in matches:
            probs.append(res.class_probs[pred_id - 1])
            labels.append(it.label)
        matched_pred = {m[0] for m in matches}
        pred_class = {i + 1: int(np.argmax(p)) for i, p in enumerate(res.class_probs)}
        pairs += [(it.label, pred_class[m[0]]) for m in matches]
        pairs += [(None, c) for i, c in pred_class.items() if i not in matched_pred]
        pairs += [(it.label, None)] * (len(true_inst) - len(matches))
        check = getattr(res, "appearance", None)  # wbc.appearance: unlike the model's training images?
        per_image.append({"id": it.sample.id, "class_name": it.sample.class_name, "true_cells": len(true_inst), "pred_cells": len(res.instances),
                          "matched": len(matches), "unlike_training": None if check is None else bool(check["unlike_training"])})
    n_match = len(labels)
    out = {
        "pipeline/detection_precision": n_match / max(1, n_pred),
        "pipeline/detection_recall": n_match / max(1, n_true),
        "pipeline/cells_true": float(n_true),
        "pipeline/cells_pred": float(n_pred),
        "pipeline/nucleus_dice": float(np.nanmean(dice)) if dice and not np.all(np.isnan(dice)) else float("nan"),
        **cell_f1(pairs, classes, "pipeline"),
    }
    checked = [p["unlike_training"] for p in per_image if p["unlike_training"] is not None]
    if checked:  # the share of images the appearance check flags (a model without a colour profile checks none)
        out["pipeline/unlike_training_share"] = float(np.mean(checked))
    if not n_match:  # nothing found: report zeros rather than leave the metrics undefined
        out.update({f"pipeline/{k}": 0.0 for k in ("accuracy", "balanced_accuracy", "macro_f1")})
    else:
        probs_arr, labels_arr = np.stack(probs), np.asarray(labels)
        out.update(classification_report(probs_arr, labels_arr, classes, "pipeline"))
        matrix = confusion(probs_arr, labels_arr, len(classes))
        from wbc.plots import plot_confusion

        plot_confusion(matrix, classes, out_dir / "pipeline_confusion.png", "full pipeline (matched cells)")
    timing = {k: float(np.median(v)) for k, v in pipe.timings.items()}
    write_json(out_dir / "pipeline_summary.json", {"metrics": out, "median_timings_ms": timing, "per_image": per_image, "iou_threshold": iou_threshold,
                                                      "adapt_bn_images": getattr(pipe, "adapted_on", 0),
                                                      "adapt_bn_models": list(getattr(pipe, "adapted_models", ())),
                                                      "morphology": getattr(pipe, "morphology_source", None)})
    return out


def cell_f1(pairs: list[tuple[int | None, int | None]], classes: list[str], prefix: str) -> dict[str, float]:
    """Per-class and macro F1 over cells, detection included: TP = matched and given its true class;
    FP = given class c but unmatched or truly another class; FN = of class c but missed or given
    another class. The macro mean is over the classes with a true or a given cell (a class only given
    counts 0): test/macro_f1's convention (torchmetrics' macro F1), so the two differ by detection alone."""
    out: dict[str, float] = {}
    f1s = []
    for c, name in enumerate(classes):
        tp = sum(t == c and p == c for t, p in pairs)
        fp = sum(p == c and t != c for t, p in pairs)
        fn = sum(t == c and p != c for t, p in pairs)
        if tp + fn + fp == 0:
            continue
        out[f"{prefix}/cell_f1/{name}"] = 2 * tp / (2 * tp + fp + fn)
        f1s.append(out[f"{prefix}/cell_f1/{name}"])
    out[f"{prefix}/cell_macro_f1"] = float(np.mean(f1s)) if f1s else 0.0
    return out
