"""Full-pipeline scoring: image -> nucleus mask -> cells -> class, against the ground truth.

Cells predicted on test images are matched one-to-one to ground-truth cells by IoU; we report
detection precision/recall, and classification metrics on matched cells next to the
classifier's own figures on ground-truth crops.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from wbc.cells import find_cells, match_instances
from wbc.data.manifest import NUCLEUS, load_instances, load_sample
from wbc.evaluation.classification import classification_report, confusion
from wbc.inference import CellPipeline
from wbc.io import write_json

log = logging.getLogger("wbc")


def score_pipeline(pipe: CellPipeline, datamodule, out_dir: Path, iou_threshold: float = 0.5) -> dict[str, float]:
    """Detection precision/recall of the predicted cells (one-to-one IoU matching) and the class
    metrics of the matched ones, on the test split; pipeline_summary.json + pipeline_confusion.png."""
    classes = datamodule.classes
    ids = datamodule.split_ids()["test"]
    items = datamodule.cached(ids)
    n_pred = n_true = 0
    probs, labels, per_image = [], [], []
    for it in items:
        rgb, _ = load_sample(it.sample, datamodule.encoding)
        res = pipe(rgb)
        true_labels, true_inst = find_cells(it.labels == NUCLEUS, pipe.crop_spec, pipe.postprocess, load_instances(it.sample))
        matches = match_instances(res.labels, true_labels, iou_threshold)
        n_pred += len(res.instances)
        n_true += len(true_inst)
        for pred_id, _true_id, _iou in matches:
            probs.append(res.class_probs[pred_id - 1])
            labels.append(it.label)
        per_image.append({"id": it.sample.id, "class_name": it.sample.class_name, "true_cells": len(true_inst), "pred_cells": len(res.instances), "matched": len(matches)})
    n_match = len(labels)
    out = {
        "pipeline/detection_precision": n_match / max(1, n_pred),
        "pipeline/detection_recall": n_match / max(1, n_true),
        "pipeline/cells_true": float(n_true),
        "pipeline/cells_pred": float(n_pred),
    }
    if not n_match:  # nothing found: report zeros rather than leave the metrics undefined
        out.update({f"pipeline/{k}": 0.0 for k in ("accuracy", "balanced_accuracy", "macro_f1")})
    else:
        probs_arr, labels_arr = np.stack(probs), np.asarray(labels)
        out.update(classification_report(probs_arr, labels_arr, classes, "pipeline"))
        matrix = confusion(probs_arr, labels_arr, len(classes))
        from wbc.plots import plot_confusion

        plot_confusion(matrix, classes, out_dir / "pipeline_confusion.png", "full pipeline (matched cells)")
    timing = {k: float(np.median(v)) for k, v in pipe.timings.items()}
    write_json(out_dir / "pipeline_summary.json", {"metrics": out, "median_timings_ms": timing, "per_image": per_image, "iou_threshold": iou_threshold})
    return out
