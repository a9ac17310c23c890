"""Image -> nucleus probability -> cells -> class probabilities, with each model's own preprocessing.

The preprocessing (grayscale/CLAHE, network size), the post-processing the segmenter was validated
with and the crop geometry are read from the checkpoints' data_info, so prediction can never drift
from what the models were trained on; `postprocess_overrides` (e.g. predict.py postprocess.min_area=50)
win and are logged.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from wbc.cells import CropSpec, cell_crops, crop_batch
from wbc.data.transforms import Preprocess, build_pipeline, to_tensor
from wbc.postprocess import Instance, checkpoint_postprocess, resize_prob

log = logging.getLogger("wbc")


@dataclass
class CellResult:
    prob: np.ndarray  # HxW nucleus probability at the image's resolution
    labels: np.ndarray  # HxW int32 instance ids
    instances: list[Instance]
    crops: list[np.ndarray]
    class_probs: np.ndarray  # n_cells x n_classes (empty without a classifier)
    timings: dict[str, float] = field(default_factory=dict)


class CellPipeline:
    def __init__(
        self, segmenter, classifier=None, device: str | torch.device = "cpu", crop_spec: CropSpec | None = None, postprocess_overrides: dict | None = None
    ) -> None:
        self.device = torch.device(device)
        self.segmenter = segmenter.to(self.device).eval()
        self.classifier = classifier.to(self.device).eval() if classifier is not None else None
        seg_info = dict(segmenter.hparams.data_info or {})
        self.seg_pre = Preprocess.from_config(seg_info.get("preprocess"))
        self.seg_resize = build_pipeline(None, seg_info.get("image_size", 128))
        cls_info = dict(classifier.hparams.data_info or {}) if classifier is not None else {}
        self.cls_pre = Preprocess.from_config(cls_info.get("preprocess")) if classifier is not None else self.seg_pre
        crops = dict(cls_info.get("crops") or seg_info.get("crops") or {})
        legacy = crops.pop("instance_params", None)  # checkpoints before data_info.postprocess
        self.crop_spec = crop_spec or CropSpec.from_config(crops)
        self.postprocess = checkpoint_postprocess(seg_info.get("postprocess") or legacy, postprocess_overrides, "segmenter")
        self.classes: list[str] = list(cls_info.get("classes") or [])
        self.timings: dict[str, list[float]] = defaultdict(list)

    @classmethod
    def from_checkpoints(
        cls, segmenter: str | Path | list, classifier: str | Path | list | None = None, device: str = "cpu", postprocess_overrides: dict | None = None
    ) -> CellPipeline:
        """Each of segmenter / classifier: a .ckpt file, a run dir (a pipeline run dir gives its
        stage's sub-run), or -- a fold ensemble, probabilities averaged -- a sweep dir of fold runs
        or a list of those (wbc.ensemble)."""
        from wbc.ensemble import load_models

        seg = load_models(segmenter, "segmentation", "segmenter", device)
        clf = load_models(classifier, "classification", "classifier", device) if classifier is not None else None
        return cls(seg, clf, device, postprocess_overrides=postprocess_overrides)

    @torch.no_grad()
    def segment(self, rgb: np.ndarray) -> np.ndarray:
        x = to_tensor(self.seg_resize(image=self.seg_pre(rgb))["image"])[None].to(self.device)
        prob = self.segmenter.predict_probability(x)[0, 0].float().cpu().numpy()
        return resize_prob(prob, rgb.shape[:2])

    @torch.no_grad()
    def classify(self, crops: list[np.ndarray]) -> np.ndarray:
        if self.classifier is None or not crops:
            return np.zeros((len(crops), len(self.classes)), dtype=np.float32)
        x = crop_batch(crops, self.crop_spec.image_size).to(self.device)
        return self.classifier.predict_proba(x).float().cpu().numpy()

    def __call__(self, rgb: np.ndarray) -> CellResult:
        t0 = time.perf_counter()
        prob = self.segment(rgb)
        t1 = time.perf_counter()
        cls_image = self.cls_pre(rgb)
        labels, instances, crops = cell_crops(cls_image, prob, self.crop_spec, self.postprocess)
        t2 = time.perf_counter()
        class_probs = self.classify(crops)
        t3 = time.perf_counter()
        timings = {"segment_ms": 1e3 * (t1 - t0), "cells_ms": 1e3 * (t2 - t1), "classify_ms": 1e3 * (t3 - t2)}
        for k, v in timings.items():
            self.timings[k].append(v)
        return CellResult(prob, labels, instances, crops, class_probs, timings)
