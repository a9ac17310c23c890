"""The pipeline stage: train segmentation, then classification, then score image -> cells -> class.

Cells predicted on test images are matched one-to-one to ground-truth cells by IoU; we report
detection precision/recall, and classification metrics on matched cells next to the
classifier's own figures on ground-truth crops.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from datamodules.cells import find_cells
from datamodules.manifest import NUCLEUS, load_instances, load_sample
from datamodules.nuclei import match_instances
from wbc.cls_eval import classification_report, confusion
from wbc.fit import fit_stage
from wbc.inference import CellPipeline
from wbc.io import write_json
from wbc.stages import score_segmentation

log = logging.getLogger("wbc")


def stage_config(cfg: DictConfig, overrides: dict, output_dir: Path) -> DictConfig:
    """A copy of the run config for one stage (dotted overrides; its own output dir)."""
    sub = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    for key, value in (overrides or {}).items():
        parts = key.split(".")
        if any(OmegaConf.select(sub, ".".join(parts[:i]), default=None) is None for i in range(1, len(parts))):
            continue  # e.g. callbacks switched off (debug=..., callbacks=none): nothing to tune
        OmegaConf.update(sub, key, value, force_add=True)
    OmegaConf.update(sub, "paths.output_dir", str(output_dir), force_add=True)
    # a stage resumes from its own last.ckpt only (never the other stage's checkpoint)
    last = output_dir / "checkpoints" / "last.ckpt"
    OmegaConf.update(sub, "ckpt_path", str(last) if cfg.get("ckpt_path") and last.is_file() else None, force_add=True)
    return sub


def score_pipeline(pipe: CellPipeline, datamodule, out_dir: Path, iou_threshold: float = 0.5) -> dict[str, float]:
    classes = datamodule.classes
    ids = datamodule.split_ids()["test"]
    items = datamodule.cached(ids)
    n_pred = n_true = 0
    probs, labels, per_image = [], [], []
    for it in items:
        rgb, _ = load_sample(it.sample, datamodule.encoding)
        res = pipe(rgb)
        true_labels, true_inst = find_cells(it.labels == NUCLEUS, pipe.crop_spec, load_instances(it.sample))
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


def run_pipeline(cfg: DictConfig, output_dir: Path) -> tuple[dict, dict]:
    p = cfg.pipeline
    seg_cfg = stage_config(cfg, OmegaConf.to_container(p.segmentation_overrides, resolve=True), output_dir / "segmentation")
    seg_metrics, seg_objs = fit_stage(seg_cfg, seg_cfg.data, seg_cfg.model, output_dir / "segmentation", score_segmentation(seg_cfg))
    cls_over = OmegaConf.to_container(p.classification_overrides, resolve=True)
    cls_cfg = stage_config(cfg, cls_over, output_dir / "classification")
    cls_cfg.model = cfg.classifier
    from wbc.cls_eval import score_classification

    cls_metrics, cls_objs = fit_stage(cls_cfg, cls_cfg.data, cls_cfg.model, output_dir / "classification", score_classification(cls_cfg))
    metrics: dict = {f"segmentation/{k}": v for k, v in seg_metrics.items()}
    metrics.update({f"classification/{k}": v for k, v in cls_metrics.items()})
    if not cfg.trainer.get("fast_dev_run"):
        pipe = CellPipeline(seg_objs["model"], cls_objs["model"])
        metrics.update(score_pipeline(pipe, cls_objs["datamodule"], output_dir, p.get("iou_threshold", 0.5)))
        n_predict = int(p.get("predict_images", 0))
        if n_predict:
            from wbc.predict_io import predict_images

            dm = cls_objs["datamodule"]
            files = [s.sample.image for s in dm.cached(dm.split_ids()["test"][:n_predict])]
            predict_images(pipe, files, output_dir / "predict")
    for key in ("test/dice_post", "test/macro_f1"):
        for stage in ("segmentation", "classification"):
            if f"{stage}/{key}" in metrics:
                metrics[key] = metrics[f"{stage}/{key}"]
    write_json(output_dir / "metrics.json", metrics)
    return metrics, {"segmentation": seg_objs, "classification": cls_objs}
