"""Segmentation scoring at each image's original resolution, before and after post-processing.

Predictions are made at the network size and the probability map is resized back to the ground
truth (never the mask shrunk to the network). Post-processing = threshold, morphological opening
(5x5 by default, the source study's fix for clumped cells), a minimum-area filter and, for
single-cell datasets, dropping nuclei cut by the image border.
Per-image Dice/IoU: an image whose truth and prediction are both empty scores NaN and is left out
of means (MONAI/nnU-Net convention); an empty truth with any predicted nucleus scores 0.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.segmentation import dice_score, mean_iou

from wbc.data.manifest import NUCLEUS
from wbc.io import write_json, write_png
from wbc.overlay import draw_overlay
from wbc.postprocess import PostprocessParams, nucleus_mask, resize_prob

# the validation split's per-image results: a fold's out-of-fold predictions (pooled by the CV summary)
OOF_FILE = Path("val_eval") / "summary.json"
UNIT = "images"


def case_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Per-image Dice and IoU of two boolean masks (torchmetrics; NaN when both are empty)."""
    p = torch.from_numpy(np.asarray(pred, dtype=np.int64))[None]
    t = torch.from_numpy(np.asarray(truth, dtype=np.int64))[None]
    kw = {"num_classes": 2, "include_background": False, "input_format": "index"}
    with warnings.catch_warnings():  # torchmetrics warns of its future default even with `average` given
        warnings.filterwarnings("ignore", message="dice_score metric currently defaults to `average=micro`")
        dice = float(dice_score(p, t, average="micro", aggregation_level="samplewise", **kw)[0])
    return {"dice": dice, "iou": float(mean_iou(p, t, **kw)[0])}


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
    post: PostprocessParams | None = None,
    out_dir: str | Path | None = None,
    num_overlays: int = 8,
    probabilities: list[np.ndarray] | None = None,
) -> dict:
    """Score a split; write summary.json, predicted masks and overlays under out_dir if given."""
    post = post or PostprocessParams()
    dataset = eval_dataset(datamodule, split)
    if probabilities is None:
        probabilities = predict_probabilities(module, dataset)
    cases, pooled = [], defaultdict(float)
    out_dir = Path(out_dir) if out_dir else None
    for i, (item, prob) in enumerate(zip(dataset.items, probabilities)):
        truth = item.labels == NUCLEUS
        full = resize_prob(prob, truth.shape)
        raw = full >= post.threshold
        cleaned = nucleus_mask(full, post)
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
        "postprocess": post.to_dict(),
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


# ----------------------------------------------------------------------------- the stage's interface
# (wbc.stages.Stage: the same functions exist for classification)
MAIN_METRIC = "dice_post"


def eval_dataset(datamodule, split: str):
    """A split without training augmentation (the train split is rebuilt with the eval transforms)."""
    datamodule.setup()
    if split == "train":
        return datamodule.make_dataset("eval", datamodule.cached(datamodule.split_ids()["train"]))
    return datamodule.datasets[split]


def predict(module, datamodule, split: str) -> list[np.ndarray]:
    """Per image: the network-size probability (images no larger than the training ones, as
    always), or for a larger field the full-resolution probability of the tiled, at-scale pass
    predict.py makes (wbc.inference.CellPipeline, scale=auto); scoring resizes both to the truth."""
    from wbc.inference import CellPipeline
    from wbc.scale import fits_training_size

    dataset = eval_dataset(datamodule, split)
    probs = predict_probabilities(module, dataset)
    info = dict(module.hparams.get("data_info") or {})
    big = [i for i, it in enumerate(dataset.items) if info.get("scale") and not fits_training_size(it.image.shape[:2], info)]
    if big:
        pipe = CellPipeline(module, None, device=next(module.parameters()).device)
        for i in big:
            probs[i] = pipe.segment_preprocessed(dataset.items[i].image)
    return probs


def average(member_probs: Sequence[list[np.ndarray]], model=None) -> list[np.ndarray]:
    """Per image, the mean of the members' probability maps (before threshold / post-processing)."""
    return [np.mean(per_image, axis=0) for per_image in zip(*member_probs)]


def score(
    datamodule, split: str, probabilities: list[np.ndarray], out_dir: Path, post: PostprocessParams, num_overlays: int = 0, title: str = "", model=None,
) -> tuple[dict, dict]:
    """(headline metrics, summary) of one model's or an ensemble's probabilities on a split;
    writes summary.json, masks/ and overlays/ under out_dir (`model` is part of the stage
    interface: classification reads its calibration; unused here)."""
    summary = evaluate_segmentation(None, datamodule, split, post, out_dir, num_overlays, probabilities)
    return headline(summary, split), summary


def report_test(model, out_dir: Path) -> None:
    """Right after trainer.test: nothing to add for segmentation (overlays come from the callback)."""


def score_test(model, datamodule, out_dir: Path, post: PostprocessParams, num_overlays: int) -> dict[str, float]:
    """After trainer.test: the test split at original resolution, post-processed (test_eval/)."""
    return score(datamodule, "test", predict(model, datamodule, "test"), out_dir / "test_eval", post, num_overlays)[0]


def score_val(model, datamodule, out_dir: Path, post: PostprocessParams) -> dict[str, float]:
    """The validation split the same way (val_eval/summary.json: the fold's out-of-fold cases)."""
    return score(datamodule, "val", predict(model, datamodule, "val"), out_dir / OOF_FILE.parent, post)[0]


def pool_oof(jobs: Sequence) -> tuple[dict, list[dict]] | None:
    """Pool every fold's validation cases (val_eval/summary.json) and average them together:
    the per-image means over all out-of-fold images (post-processed and raw, original resolution)."""
    import json

    from wbc.rundir import stage_file

    cases: list[dict] = []
    used = []
    for job in jobs:
        path = stage_file(job.run_dir, OOF_FILE)
        if path is None:
            continue
        used.append(job.name)
        for c in json.loads(path.read_text()).get("metric_per_case", []):
            cases.append({"job": job.name, "fold": job.fold, **c})
    if not cases:
        return None
    metrics = {
        "oof/val/dice_post": _mean([c.get("dice") for c in cases]),
        "oof/val/iou_post": _mean([c.get("iou") for c in cases]),
        "oof/val/dice_raw_fullres": _mean([c.get("dice_raw") for c in cases]),
        "oof/val/iou_raw_fullres": _mean([c.get("iou_raw") for c in cases]),
    }
    by_class: dict[str, list[dict]] = defaultdict(list)
    for c in cases:
        by_class[str(c.get("class_name"))].append(c)
    for cls, cs in sorted(by_class.items()):
        metrics[f"oof/val/dice_post/{cls}"] = _mean([c.get("dice") for c in cs])
    info = {
        "metrics": metrics,
        "n_cases": len(cases),
        "n_unique_cases": len({c.get("id") for c in cases}),
        "jobs": used,
        "definition": "per-image Dice/IoU of every fold's validation images pooled, then averaged (NaN cases excluded)",
    }
    return info, cases
