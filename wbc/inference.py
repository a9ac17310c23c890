"""Image -> nucleus probability -> cells -> class probabilities, with each model's own preprocessing.

The preprocessing (grayscale/CLAHE, network size, the camera bit depth new images are read at), the
post-processing the segmenter was validated with and the crop geometry are read from the checkpoints'
data_info, so prediction can never drift from what the models were trained on; `postprocess_overrides`
(e.g. predict.py postprocess.min_area=50) and `bit_depth` win and are logged.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from wbc.adaptation import MODELS, adapt_batchnorm, batches_of, batchnorm_layers
from wbc.appearance import AppearanceProfile, image_features, profile_of
from wbc.cells import CropSpec, cell_crops, crop_batch
from wbc.data.bitdepth import check_bit_depth, info_bit_depth
from wbc.data.transforms import Preprocess, StackedPreprocess, build_pipeline, model_input, to_tensor
from wbc.morphology import MorphologyClassifier
from wbc.postprocess import (
    Instance,
    PostprocessParams,
    checkpoint_postprocess,
    extract_instances,
    rescale_postprocess,
    resize_prob,
)
from wbc.review import ReviewOptions, review_reasons
from wbc.scale import (
    ScaleChoice,
    ScaleOptions,
    choose_scale,
    equivalent_diameters,
    nearest_target,
    scale_targets,
    typical_diameter,
)
from wbc.tiling import sliding_window

log = logging.getLogger("wbc")


@dataclass
class CellResult:
    prob: np.ndarray  # HxW nucleus probability at the image's resolution
    labels: np.ndarray  # HxW int32 instance ids
    instances: list[Instance]
    crops: list[np.ndarray]
    class_probs: np.ndarray  # n_cells x n_classes (empty without a classifier)
    timings: dict[str, float] = field(default_factory=dict)
    review: list[list[str]] = field(default_factory=list)  # per cell, why to look at it (wbc.review); [] = not flagged
    appearance: dict | None = None  # the image's appearance check (CellPipeline.check_appearance)


def pipeline_bit_depth(seg_info: dict, cls_info: dict | None, override: int | str | None = None) -> int | str:
    """The camera bit depth new images are read at: `override` (predict/serve `bit_depth=`), else the one
    the checkpoints were trained with (data_info.bit_depth; auto before it was recorded). An image is read
    once for both models, so a segmenter and a classifier trained at different depths need the override."""
    if override is not None:
        chosen = check_bit_depth(override, "bit_depth")
        log.info("bit_depth=%s: new images are read at it (the checkpoints': %s)", chosen, info_bit_depth(seg_info, "segmenter"))
        return chosen
    seg = info_bit_depth(seg_info, "segmenter")
    cls = info_bit_depth(cls_info, "classifier") if cls_info is not None else seg
    if cls != seg:
        raise ValueError(f"the segmenter was trained at data.bit_depth={seg} and the classifier at {cls}, but an image is read once: "
                         f"pass bit_depth=<the depth of the new images' camera> (e.g. bit_depth={seg} or bit_depth={cls})")
    if seg != "auto":
        log.info("bit_depth=%s (the checkpoint's data_info.bit_depth): 16-bit images are divided by %d", seg, 2**int(seg) - 1)
    return seg


class CellPipeline:
    def __init__(
        self, segmenter, classifier=None, device: str | torch.device = "cpu", crop_spec: CropSpec | None = None,
        postprocess_overrides: dict | None = None, scale: ScaleOptions | None = None, review: ReviewOptions | None = None,
        bit_depth: int | str | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.segmenter = segmenter.to(self.device).eval()
        self.classifier = classifier.to(self.device).eval() if classifier is not None else None
        seg_info = dict(segmenter.hparams.data_info or {})
        own_pre = Preprocess.from_config(seg_info.get("preprocess"))
        self.seg_pre = model_input(seg_info)  # an ensemble of segmenters trained on different inputs: all of them stacked
        self.seg_resize = build_pipeline(None, seg_info.get("image_size", 128))
        cls_info = dict(classifier.hparams.data_info or {}) if classifier is not None else {}
        for model, info, keys in (("segmenter", seg_info, ("image_size", "preprocess")), ("classifier", cls_info, ("crops", "preprocess"))):
            absent = [k for k in keys if k not in info] if model == "segmenter" or classifier is not None else []
            if absent:  # train.py always writes them: a stripped or hand-made file; the defaults may not be its inputs
                log.warning("the %s's data_info has no %s: the defaults are used (a checkpoint not written by train.py?)", model, absent)
        # classifiers trained on different inputs: the crops are cut from all of them stacked
        self.cls_pre: Preprocess | StackedPreprocess = model_input(cls_info) if classifier is not None else own_pre
        crops = dict(cls_info.get("crops") or seg_info.get("crops") or {})
        legacy = crops.pop("instance_params", None)  # checkpoints before data_info.postprocess
        self.crop_spec = crop_spec or CropSpec.from_config(crops)
        self.postprocess = checkpoint_postprocess(seg_info.get("postprocess") or legacy, postprocess_overrides, "segmenter")
        self.classes: list[str] = list(cls_info.get("classes") or [])
        # how the readers (wbc.predict_io, the web app) make new 16-bit images 8-bit: as training did
        self.bit_depth = pipeline_bit_depth(seg_info, cls_info if classifier is not None else None, bit_depth)
        self.timings: dict[str, list[float]] = defaultdict(list)
        self.seg_info = seg_info
        self.scale = scale or ScaleOptions()
        self.last_scale: ScaleChoice | None = None  # how the last image was scaled (reported with its results)
        self.review_options = review or ReviewOptions()
        fn = getattr(classifier, "calibration", None)
        self.calibration: dict = dict(fn()) if callable(fn) else {}  # temperature, review_min_probability
        self._seg_inputs: Callable[[torch.Tensor], None] | None = None  # sees every batch of segmenter inputs (adapt_batchnorm)
        self.adapted_on = 0  # images whose batch-norm statistics the models now use (adapt_batchnorm); 0 = the training ones
        self.adapted_models: tuple[str, ...] = ()  # which of them
        self.morphology: MorphologyClassifier | None = None  # use_morphology
        self.morphology_source: str | None = None  # its file, recorded with the results
        # the colour profile of the classifier's training images (the stage that does not travel), else the
        # segmenter's; None for checkpoints trained before it was recorded
        which = "classifier" if cls_info.get("appearance") else "segmenter"
        self.appearance: AppearanceProfile | None = profile_of(cls_info if which == "classifier" else seg_info, f"{which} data_info.appearance")
        self.appearance_model = which

    @property
    def shown_channels(self) -> int:
        """How many of a crop's channels people see (wbc.cells.shown): the first classifier input's."""
        return (self.cls_pre.parts[0] if isinstance(self.cls_pre, StackedPreprocess) else self.cls_pre).channels

    def use_morphology(self, model: MorphologyClassifier | None, source: str | None = None) -> None:
        """Average each cell's class probabilities with a nucleus-morphology model's (wbc.morphology:
        the cues that travel between labs); without a classifier its probabilities are the classes."""
        if model is not None and self.classifier is not None:
            model.check_classes(self.classes)
        if model is not None and self.classifier is None:
            self.classes = list(model.classes)
        self.morphology, self.morphology_source = model, source if model is not None else None

    def with_morphology(self, rgb: np.ndarray, labels: np.ndarray, instances: list[Instance], class_probs: np.ndarray) -> np.ndarray:
        """class_probs averaged with the morphology model's, cell by cell; a cell it can not measure
        keeps the classifier's probabilities (uniform without one), and the count is logged."""
        if self.morphology is None or not instances:
            return class_probs
        morph = self.morphology.cell_probabilities(rgb, labels, instances, self.classes)
        ok = np.isfinite(morph).all(1)
        if not ok.all():
            log.info("morphology: %d of %d cells could not be measured (too small or no room around the nucleus): "
                     "the classifier's probabilities kept (uniform without one)", int((~ok).sum()), len(ok))
        if self.classifier is None:
            return np.where(ok[:, None], morph, 1.0 / len(self.classes)).astype(np.float32)
        out = class_probs.copy()
        out[ok] = (class_probs[ok] + morph[ok]) / 2
        return out

    @classmethod
    def from_checkpoints(
        cls, segmenter: str | Path | list, classifier: str | Path | list | None = None, device: str = "cpu",
        postprocess_overrides: dict | None = None, scale: ScaleOptions | None = None, review: ReviewOptions | None = None,
        bit_depth: int | str | None = None,
    ) -> CellPipeline:
        """Each of segmenter / classifier: a .ckpt file, a run dir (a pipeline run dir gives its
        stage's sub-run), or -- a fold ensemble, probabilities averaged -- a sweep dir of fold runs
        or a list of those (wbc.ensemble)."""
        from wbc.ensemble import load_models

        seg = load_models(segmenter, "segmentation", "segmenter", device)
        clf = load_models(classifier, "classification", "classifier", device) if classifier is not None else None
        return cls(seg, clf, device, postprocess_overrides=postprocess_overrides, scale=scale, review=review, bit_depth=bit_depth)

    @torch.no_grad()
    def segment(self, rgb: np.ndarray) -> np.ndarray:
        """Nucleus probability at the image's resolution: one pass over the image resized to the
        network square when it is no larger than the training images, else sliding windows over the
        image put at the training scale (wbc.scale); `last_scale` says which and why."""
        return self.segment_preprocessed(self.seg_pre(rgb))

    @torch.no_grad()
    def segment_preprocessed(self, pre: np.ndarray) -> np.ndarray:
        """`segment` of an image already through the segmenter's preprocessing (the DataModules'
        cached images: evaluate.py scores big fields with this very code)."""
        o = self.scale
        self.last_scale = choose_scale(pre.shape[:2], self.seg_info, o.scale, o.diameter, o.pixel_size_um, lambda f: self._diameters(pre, f))
        if self.last_scale.factor is None:
            x = to_tensor(self.seg_resize(image=pre)["image"])[None]
            prob = self._probability(x)[0, 0].float().cpu().numpy()
            return resize_prob(prob, pre.shape[:2])
        return resize_prob(self._tiled(pre, self.last_scale.factor), pre.shape[:2])

    def _tiled(self, pre: np.ndarray, factor: float) -> np.ndarray:
        """Sliding-window probability of `pre` resized by `factor` (at the network's scale)."""
        h, w = pre.shape[:2]
        scaled = cv2.resize(pre, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)
        tile = int(self.seg_info.get("image_size") or 128)
        return sliding_window(self._probability, to_tensor(scaled), tile, self.scale.overlap, self.scale.batch)

    def _probability(self, x: torch.Tensor) -> torch.Tensor:
        """The segmenter's probability of a batch of network inputs (all of a segmentation ensemble's
        input groups stacked); adapt_batchnorm sees each batch here first."""
        if self._seg_inputs is not None:
            self._seg_inputs(x)
        return self.segmenter.predict_probability(x.to(self.device))

    def _diameters(self, pre: np.ndarray, factor: float) -> np.ndarray:
        """Nucleus diameters (image px) found at `factor` on a central window of at most 2 x 2 tiles
        (the coarse pass of scale=auto), nuclei cut by the window's edge left out: their pieces are
        smaller than the nucleus and pulled auto's factor up (7-14 % above the true one on synthetic
        fields and dataset2 mosaics, 4-10 % without them)."""
        tile = int(self.seg_info.get("image_size") or 128)
        side = max(1, round(2 * tile / factor))
        h, w = pre.shape[:2]
        y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
        window = pre[y0 : y0 + side, x0 : x0 + side]
        recording, self._seg_inputs = self._seg_inputs, None  # a trial scale's tiles are not the image's inputs (adapt_batchnorm)
        try:
            prob = resize_prob(self._tiled(window, factor), window.shape[:2])
        finally:
            self._seg_inputs = recording
        labels, _ = extract_instances(prob, replace(self.postprocess, watershed=False, min_area=0, clear_border=True))
        return equivalent_diameters(labels)

    def scaled_for_image(self) -> tuple[CropSpec, PostprocessParams]:
        """Crop size and post-processing lengths follow the scale of the last image: k image px per
        training px (1 on the single-pass path; the matched training source's px when auto matched one), so a cell gets
        the crop and the filters it was trained with."""
        if self.last_scale is None or self.last_scale.factor is None:
            return self.crop_spec, self.postprocess
        rf = self.last_scale.resize_factor or float((self.seg_info.get("scale") or {}).get("resize_factor") or 0) or self.last_scale.factor
        k = rf / self.last_scale.factor
        spec = replace(self.crop_spec, size=max(8, round(self.crop_spec.size * k))) if self.crop_spec.size else self.crop_spec
        return spec, rescale_postprocess(self.postprocess, k)

    @torch.no_grad()
    def classify(self, crops: list[np.ndarray]) -> np.ndarray:
        return self.classify_with_views(crops)[0]

    @torch.no_grad()
    def classify_with_views(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """(n x C calibrated class probabilities, V x n x C per-view probabilities or None): the
        views are the test-time flips or the ensemble members, when the classifier has them."""
        if self.classifier is None or not crops:
            return np.zeros((len(crops), len(self.classes)), dtype=np.float32), None
        x = crop_batch(crops, self.crop_spec.image_size).to(self.device)
        probs = self.classifier.predict_proba(x).float().cpu().numpy()
        views_fn = getattr(self.classifier, "predict_views", None) if self.review_options.views_disagree else None
        views = views_fn(x).float().cpu().numpy() if callable(views_fn) else None
        return probs, views if views is not None and len(views) > 1 else None

    def check_appearance(self, rgb: np.ndarray, labels: np.ndarray) -> dict | None:
        """Whether an image (with its nuclei: `labels` > 0) looks like the model's training images
        (wbc.appearance): {model, source (the nearest training source), distance, threshold,
        unlike_training}; None without a profile, with review.unlike_training=false, or when too little
        nucleus was found to measure it."""
        if self.appearance is None or not self.review_options.unlike_training:
            return None
        features = image_features(rgb, labels > 0)
        if features is None:
            return None
        distance, threshold, source = self.appearance.nearest(features, self.review_options.appearance_threshold)
        return {"model": self.appearance_model, "source": source, "distance": round(distance, 3), "threshold": round(float(threshold), 3),
                "unlike_training": bool(distance > threshold)}

    def review(self, shape: tuple[int, int], instances: list[Instance], class_probs: np.ndarray, views: np.ndarray | None = None,
               appearance: dict | None = None, classifier_probs: np.ndarray | None = None) -> list[list[str]]:
        """Per cell, the reasons to review it (wbc.review), at the scale the last image was segmented at;
        `appearance`: the image's check_appearance; `classifier_probs`: the classifier's own calibrated
        probabilities when `class_probs` averaged a morphology model in (its review threshold reads those)."""
        tile = int(self.seg_info.get("image_size") or 128)
        h, w = shape
        factor = self.last_scale.factor if self.last_scale is not None and self.last_scale.factor else math.sqrt(tile / h * tile / w)
        sc = self.seg_info.get("scale") or {}
        source = self.last_scale.source if self.last_scale is not None else None
        if source is None and sc.get("sources") and instances:
            # single pass (or a given factor): the training source whose nuclei are nearest in size to this image's
            typical = typical_diameter(np.array([i.equivalent_diameter for i in instances])) * factor
            source = nearest_target(typical, scale_targets(sc))[0]
        matched = (sc.get("sources") or {}).get(source) or sc
        q = matched.get("nucleus_diameter_q25_q75")  # that training source's nuclei, else all training nuclei
        return review_reasons(
            class_probs, views, instances, shape, self.classes, float(self.calibration.get("review_min_probability", 0.0)),
            tuple(q) if q else None, factor, self.review_options, appearance,
            None if classifier_probs is None or np.size(classifier_probs) == 0 else np.asarray(classifier_probs).max(1),
        )

    @torch.no_grad()
    def adapt_batchnorm(self, images: Sequence[np.ndarray] | Callable[[], Iterable[np.ndarray]], batch_size: int = 8,
                        max_inputs: int = 256, seed: int = 0, models: Sequence[str] = MODELS) -> int:
        """AdaBN for a new lab's images (wbc.adaptation); their labels are never needed. `images`:
        RGB arrays, or a function returning a fresh iterable of them (read twice). Pass 1 runs the
        segmenter as usual and keeps up to `max_inputs` of its network inputs (tiles or resized
        images, a seeded reservoir sample), on which its batch norms are re-estimated in batches of
        `batch_size`; pass 2 finds the cells with the adapted segmenter and re-estimates the
        classifier's on their crops (shuffled: a folder is often sorted by class). The new statistics replace the training ones for every later
        call. `models` limits it to the segmenter or the classifier (wbc.adaptation.adapt_targets).
        Returns the number of images; ValueError for none, or for ONNX models."""
        chosen = {"segmenter": self.segmenter, "classifier": self.classifier}
        nets = [chosen[k] for k in models if chosen[k] is not None]
        if not all(isinstance(m, torch.nn.Module) for m in nets):
            raise ValueError("adapt_bn: needs the PyTorch checkpoints; an ONNX export's batch norms are folded and cannot be adapted")
        if not batchnorm_layers(*nets):
            raise ValueError("adapt_bn: neither model has a batch-norm layer to adapt")
        again = images if callable(images) else lambda: images
        members = list(getattr(self.segmenter, "members", [self.segmenter]))
        # an ensemble's input holds each input group's channels (RGB and grey + CLAHE members): each member gets its own
        member_inputs = getattr(self.segmenter, "member_inputs", lambda b: [b] * len(members))
        rng, kept, seen = np.random.default_rng(seed), [], 0

        def record(batch: torch.Tensor) -> None:
            nonlocal seen
            for x in batch.detach().cpu():
                seen += 1
                j = len(kept) if len(kept) < max_inputs else int(rng.integers(seen))
                if j < max_inputs:
                    kept[j:j + 1] = [x]

        n = 0
        if "segmenter" in models:
            self._seg_inputs = record  # the inputs at the scale each image is segmented at, not auto's trial scales
            try:
                for rgb in again():
                    self.segment(rgb)
                    n += 1
            finally:
                self._seg_inputs = None
        if kept and batchnorm_layers(self.segmenter):
            x = torch.stack(kept)
            adapt_batchnorm(self.segmenter, (x[s].to(self.device) for s in batches_of(len(x), batch_size)),
                            lambda b: [m(xi) for m, xi in zip(members, member_inputs(b))])
        crops: list[np.ndarray] = []
        if "classifier" in models and self.classifier is not None:
            n = 0
            for rgb in again():
                crops += self._cells(rgb)[3]
                n += 1
        if n == 0:
            raise ValueError("adapt_bn: no readable image to adapt on")
        if crops and batchnorm_layers(self.classifier):
            c = crop_batch(crops, self.crop_spec.image_size)[torch.from_numpy(rng.permutation(len(crops)))]  # not in image order
            adapt_batchnorm(self.classifier, (c[s].to(self.device) for s in batches_of(len(c), 4 * batch_size)), self.classifier.predict_proba)
        self.timings.clear()
        self.adapted_on, self.adapted_models = n, tuple(models)
        log.info("adapt_bn (%s): batch-norm statistics re-estimated on %d image(s): %d network inputs, %d cell crops",
                 "+".join(models), n, len(kept), len(crops))
        return n

    def _cells(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[Instance], list[np.ndarray], float]:
        """(probability, labels, instances, crops, seconds spent segmenting) of one image: the
        nucleus probability, then the cells and their crops at the scale it was segmented at."""
        t0 = time.perf_counter()
        prob = self.segment(rgb)
        seconds = time.perf_counter() - t0
        spec, post = self.scaled_for_image()
        labels, instances, crops = cell_crops(self.cls_pre(rgb), prob, spec, post)
        return prob, labels, instances, crops, seconds

    def __call__(self, rgb: np.ndarray) -> CellResult:
        t0 = time.perf_counter()
        prob, labels, instances, crops, seg_seconds = self._cells(rgb)
        t1 = t0 + seg_seconds
        t2 = time.perf_counter()
        own, views = self.classify_with_views(crops)
        class_probs = self.with_morphology(rgb, labels, instances, own)
        appearance = self.check_appearance(rgb, labels)
        review = self.review(rgb.shape[:2], instances, class_probs, views, appearance, own if class_probs is not own else None)
        t3 = time.perf_counter()
        timings = {"segment_ms": 1e3 * (t1 - t0), "cells_ms": 1e3 * (t2 - t1), "classify_ms": 1e3 * (t3 - t2)}
        for k, v in timings.items():
            self.timings[k].append(v)
        return CellResult(prob, labels, instances, crops, class_probs, timings, review, appearance)
