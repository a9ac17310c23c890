"""Segmentation scoring at each image's original resolution, before and after post-processing.

Predictions are made at the network size and the probability map is resized back to the ground
truth (never the mask shrunk to the network). Post-processing = threshold, morphological opening
(5x5 by default, the source study's fix for clumped cells), a minimum-area filter and, for
single-cell datasets, dropping nuclei cut by the image border.
Per-image Dice/IoU: an image whose truth and prediction are both empty scores NaN and is left out
of means (MONAI/nnU-Net convention); an empty truth with any predicted nucleus scores 0.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torchmetrics.functional.segmentation import dice_score, mean_iou

from datamodules.manifest import NUCLEUS
from datamodules.nuclei import InstanceParams, extract_instances
from wbc.io import write_json, write_png
from wbc.overlay import draw_overlay


def case_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Per-image Dice and IoU of two boolean masks (torchmetrics; NaN when both are empty)."""
    p = torch.from_numpy(np.asarray(pred, dtype=np.int64))[None]
    t = torch.from_numpy(np.asarray(truth, dtype=np.int64))[None]
    kw = {"num_classes": 2, "include_background": False, "input_format": "index"}
    return {
        "dice": float(dice_score(p, t, average="micro", aggregation_level="samplewise", **kw)[0]),
        "iou": float(mean_iou(p, t, **kw)[0]),
    }


def postprocess(prob: np.ndarray, threshold: float = 0.5, opening_kernel: int = 5, min_area: int = 30, clear_border: bool = False) -> np.ndarray:
    """Probability map -> boolean nucleus mask after opening, the min-area filter and (single-cell
    datasets) dropping nuclei cut by the image border."""
    params = InstanceParams(threshold=threshold, opening_kernel=opening_kernel, watershed=False, min_area=min_area, clear_border=clear_border)
    labels, _ = extract_instances(prob.astype(np.float32), params)
    return labels > 0


def resize_prob(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return cv2.resize(prob.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


@torch.no_grad()
def predict_probabilities(module, dataset, batch_size: int = 16) -> list[np.ndarray]:
    """Nucleus probability at network size for every item of an (unaugmented) dataset
    (test-time flips when the module's `tta` is on)."""
    device = next(module.parameters()).device
    out: list[np.ndarray] = []
    for start in range(0, len(dataset), batch_size):
        x = torch.stack([dataset[i]["image"] for i in range(start, min(start + batch_size, len(dataset)))]).to(device)
        prob = module.predict_probability(x)
        out.extend(prob[:, 0].float().cpu().numpy())
    return out


def _mean(values: Sequence[float]) -> float:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    return float(np.nanmean(arr)) if arr.size and not np.isnan(arr).all() else float("nan")


def summarize(cases: list[dict], keys: Sequence[str]) -> dict:
    """nnU-Net-style: means over cases and per class (NaN cases excluded)."""
    by_class: dict[str, list[dict]] = defaultdict(list)
    for c in cases:
        by_class[c["class_name"]].append(c)
    return {
        "mean": {k: _mean([c[k] for c in cases]) for k in keys},
        "mean_per_class": {cls: {**{k: _mean([c[k] for c in cs]) for k in keys}, "n": len(cs)} for cls, cs in sorted(by_class.items())},
    }


def evaluate_segmentation(
    module,
    datamodule,
    split: str = "test",
    post: Mapping | None = None,
    out_dir: str | Path | None = None,
    num_overlays: int = 8,
    probabilities: list[np.ndarray] | None = None,
) -> dict:
    """Score a split; write summary.json, predicted masks and overlays under out_dir if given."""
    post = dict(post or {})
    datamodule.setup()
    dataset = datamodule.datasets[split]
    if split == "train":  # score what the model saw without the training augmentation (resize only)
        dataset = datamodule.make_dataset("eval", dataset.items)
    if probabilities is None:
        probabilities = predict_probabilities(module, dataset)
    cases, pooled = [], defaultdict(float)
    out_dir = Path(out_dir) if out_dir else None
    for i, (item, prob) in enumerate(zip(dataset.items, probabilities)):
        truth = item.labels == NUCLEUS
        full = resize_prob(prob, truth.shape)
        raw = full >= post.get("threshold", 0.5)
        cleaned = postprocess(full, post.get("threshold", 0.5), post.get("opening_kernel", 5), post.get("min_area", 30), bool(post.get("clear_border", False)))
        s_raw, s_post = case_scores(raw, truth), case_scores(cleaned, truth)
        for name, mask in (("raw", raw), ("post", cleaned)):
            pooled[f"tp_{name}"] += float((mask & truth).sum())
            pooled[f"fp_{name}"] += float((mask & ~truth).sum())
            pooled[f"fn_{name}"] += float((~mask & truth).sum())
        cases.append(
            {
                "id": item.sample.id,
                "image": str(item.sample.image),
                "class_name": item.sample.class_name,
                "size": list(truth.shape),
                "dice_raw": s_raw["dice"],
                "iou_raw": s_raw["iou"],
                "dice": s_post["dice"],
                "iou": s_post["iou"],
                "truth_empty": bool(not truth.any()),
            }
        )
        if out_dir is not None:
            safe = item.sample.id.replace("/", "_")
            write_png(out_dir / "masks" / f"{safe}.png", cleaned.astype(np.uint8) * 255)
            if i < num_overlays:
                write_png(out_dir / "overlays" / f"{safe}.png", draw_overlay(item.image, cleaned, truth))
    keys = ("dice", "iou", "dice_raw", "iou_raw")
    summary = {
        "split": split,
        "n_cases": len(cases),
        "resolution": "original (probabilities resized to each ground-truth mask)",
        "postprocess": {
            "threshold": post.get("threshold", 0.5),
            "opening_kernel": post.get("opening_kernel", 5),
            "min_area": post.get("min_area", 30),
            "clear_border": bool(post.get("clear_border", False)),
        },
        "empty_mask_policy": "per-image Dice/IoU are NaN (excluded from means) when truth and prediction are both empty; 0 when only the truth is empty",
        **summarize(cases, keys),
        "dataset_wise": {
            f"dice_{n}": 2 * pooled[f"tp_{n}"] / max(1.0, 2 * pooled[f"tp_{n}"] + pooled[f"fp_{n}"] + pooled[f"fn_{n}"]) for n in ("raw", "post")
        },
        "metric_per_case": cases,
    }
    if out_dir is not None:
        write_json(out_dir / "summary.json", summary)
    return summary


def headline(summary: dict, prefix: str = "test") -> dict[str, float]:
    """Flat metric dict for metrics.json / loggers (per-image means, at original resolution)."""
    m = summary["mean"]
    out = {
        f"{prefix}/dice_post": m["dice"],
        f"{prefix}/iou_post": m["iou"],
        f"{prefix}/dice_raw_fullres": m["dice_raw"],
        f"{prefix}/dice_dataset_post": summary["dataset_wise"]["dice_post"],
    }
    for cls, vals in summary["mean_per_class"].items():
        out[f"{prefix}/dice_post/{cls}"] = vals["dice"]
    return out
