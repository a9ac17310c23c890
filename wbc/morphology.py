"""Nucleus morphology features and a linear classifier on them: the cell-type cues a haematologist
reads (lobes, how round and how thick the nucleus is, the cytoplasm's colour next to it), measured
so that they travel between labs.

Why: a CNN trained on one lab's smears learns that lab's stain and optics, and across
segmentation_wbc's two sources it falls to ~0.42 macro-F1 (issue 16). These features are shape ratios
(invariant to magnification) and colour differences between the ring around the nucleus and the
nucleus itself (a stain or white-balance shift moves both alike), so nothing in them is measured
against a lab's background or in pixels. Nothing here reads the cytoplasm mask: the pipeline
segments nuclei only, so the ring stands in for the cytoplasm.

The classifier is a class-balanced multinomial logistic regression on standardised features
(scikit-learn fits it); it is stored as plain numbers in JSON, so a model file can not run code.
Pure numpy/OpenCV/scikit-image: no Lightning, no Hydra.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.ndimage import binary_fill_holes
from skimage.measure import label, regionprops

from wbc.io import write_text

FEATURES: tuple[str, ...] = (
    "lobes",  # nucleus pieces of at least 5 % of its area
    "solidity",  # pixels / pixels of the convex hull: low for lobed, indented and holed nuclei; <= 1
    "circularity",  # 4 pi area / perimeter^2 of the outline through the boundary pixels' centres; <= 1
    "eccentricity",  # of the largest piece's fitted ellipse
    "extent",  # largest piece's area / its bounding box area
    "thickness_mean",  # mean distance to the nucleus border, in equivalent diameters
    "thickness_max",  # largest inscribed radius, in equivalent diameters
    "indentations",  # convexity defects deeper than 0.08 equivalent diameters
    "indentation_max",  # the deepest one, in equivalent diameters
    "ring_a_minus_nucleus",  # Lab a* (red-green) of the ring around the nucleus minus the nucleus's
    "ring_b_minus_nucleus",  # Lab b* (yellow-blue) likewise
    "ring_texture",  # std of the ring's lightness over the background-nucleus lightness contrast (granules)
)
# version 2 (2026-12-06): solidity and circularity had divided the pixel count by a hull and a perimeter traced
# through the boundary pixels' centres, a smaller shape, so small round nuclei read above 1 (solidity 1.12);
# a model file records the version its features were measured with, and one fitted on other numbers is refused
FEATURE_VERSION = 2
RING_DIAMETERS = 0.35  # the ring reaches this many equivalent nucleus diameters beyond the nucleus
MIN_LOBE = 0.05
MIN_INDENTATION = 0.08
# cells measured at once at most (threads: OpenCV releases the GIL, and two disk dilations a cell are
# most of the time); also bounded by OpenCV's own thread count (cv2.setNumThreads, OPENCV_FOR_THREADS_NUM)
MAX_MEASURE_THREADS = 8
# a segmenter's nucleus outline is rougher than an expert's (pale gaps as holes, notches as indentations);
# filling holes and closing at this fraction of the equivalent diameter before measuring lifted the model
# on predicted nuclei in both cross-source directions (benchmarks/morphology_cross.py, README). Recorded in
# each model file (MorphologyClassifier.outline_closing): features are measured as the model was fitted.
# The only copy of the default: fit_morphology.yaml's `outline_closing: default` means it (check_outline_closing).
OUTLINE_CLOSING = 0.05


def check_outline_closing(value: object, key: str = "outline_closing") -> float:
    """A closing in [0, 0.5) equivalent diameters (`default`: OUTLINE_CLOSING, so a config never holds a
    second copy of the number), or one error naming the setting."""
    if value == "default":
        return OUTLINE_CLOSING
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 0.5:
        raise ValueError(f"{key}={value!r}: expected a number in [0, 0.5) (equivalent nucleus diameters), or default ({OUTLINE_CLOSING})")
    return float(value)


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def regularise_outline(nucleus: np.ndarray, closing: float) -> np.ndarray:
    """The nucleus mask (uint8 0/1) with its holes filled and its outline closed by a disk of `closing`
    equivalent diameters (at least 1 px); `closing` 0 returns it as it is. A closing that would leave
    fewer than 9 pixels is not applied."""
    nuc = (np.asarray(nucleus) > 0).astype(np.uint8)
    if closing <= 0:
        return nuc
    nuc = binary_fill_holes(nuc).astype(np.uint8)
    radius = max(1, int(round(closing * np.sqrt(4 * nuc.sum() / np.pi))))
    closed = cv2.morphologyEx(np.pad(nuc, radius), cv2.MORPH_CLOSE, _disk(radius))[radius:-radius, radius:-radius]
    return closed if closed.sum() >= 9 else nuc


def nucleus_features(rgb: np.ndarray, nucleus: np.ndarray, outline_closing: float = 0.0) -> np.ndarray:
    """The FEATURES of one cell, from its RGB image (uint8, HxWx3) and its nucleus mask (HxW, nonzero
    = nucleus), measured after regularise_outline(nucleus, outline_closing). The image should reach ~0.7
    nucleus diameters beyond the nucleus (the ring and the background beside it); a crop of 2.7
    diameters, as the classifier's, does."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"nucleus_features: expected an HxWx3 uint8 RGB image, got {rgb.dtype} {rgb.shape}")
    if nucleus.shape != rgb.shape[:2]:
        raise ValueError(f"nucleus_features: mask {nucleus.shape} and image {rgb.shape[:2]} differ in size")
    nuc = regularise_outline(nucleus, outline_closing)
    area = int(nuc.sum())
    if area < 9:
        raise ValueError(f"nucleus_features: the nucleus mask has {area} pixels; at least 9 are needed")
    eqd = float(np.sqrt(4 * area / np.pi))

    pieces = regionprops(label(nuc))
    largest = max(pieces, key=lambda p: p.area)
    contours, _ = cv2.findContours(nuc, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    # each ratio compares like with like (the pixel count against a hull and a perimeter through the boundary
    # pixels' centres read above 1): solidity counts the pixels of the hull through those centres, which holds
    # every nucleus pixel (holes lower it); circularity takes the area the perimeter encloses (isoperimetric: <= 1)
    hull = np.zeros_like(nuc)
    cv2.fillConvexPoly(hull, cv2.convexHull(np.concatenate(contours)), 1)
    hull_pixels = int((hull | nuc).sum())
    traced = sum(cv2.contourArea(c) for c in contours)
    perimeter = sum(cv2.arcLength(c, True) for c in contours)
    dist = cv2.distanceTransform(nuc, cv2.DIST_L2, 5)[nuc > 0]
    outline = max(contours, key=cv2.contourArea)
    depths = np.zeros(0)
    if len(outline) > 4:
        try:
            defects = cv2.convexityDefects(outline, cv2.convexHull(outline, returnPoints=False))
        except cv2.error:  # a self-touching outline: OpenCV refuses its hull indices
            defects = None
        if defects is not None:
            depths = defects[:, 0, 3] / 256.0 / eqd

    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    reach = max(3, int(RING_DIAMETERS * eqd)) | 1
    ring = (cv2.dilate(nuc, _disk(reach)) > 0) & (nuc == 0)
    beyond = cv2.dilate(nuc, _disk(2 * reach)) == 0
    if ring.sum() < 9:
        raise ValueError(f"nucleus_features: the image leaves {int(ring.sum())} pixels around the nucleus; crop wider")
    background = lab[beyond] if beyond.sum() > 20 else lab.reshape(-1, 3)
    nucleus_lab, ring_lab = lab[nuc > 0].mean(0), lab[ring].mean(0)
    contrast = max(float(np.median(background[:, 0]) - nucleus_lab[0]), 1.0)
    return np.array([
        sum(p.area >= MIN_LOBE * area for p in pieces),
        area / hull_pixels,
        4 * np.pi * traced / max(perimeter**2, 1.0),
        largest.eccentricity,
        largest.extent,
        dist.mean() / eqd,
        dist.max() / eqd,
        int((depths > MIN_INDENTATION).sum()),
        float(depths.max()) if depths.size else 0.0,
        ring_lab[1] - nucleus_lab[1],
        ring_lab[2] - nucleus_lab[2],
        float(lab[ring][:, 0].std()) / contrast,
    ], dtype=np.float64)


def cell_features(rgb: np.ndarray, labels: np.ndarray, instances: Sequence, outline_closing: float = 0.0) -> list[np.ndarray | None]:
    """nucleus_features of each instance (wbc.postprocess.Instance) of a label map, each measured in a
    window around its nucleus wide enough for the ring and the background beyond it; None for a cell
    that can not be measured (too small, or a window with no room around the nucleus)."""
    h, w = labels.shape

    def one(inst) -> np.ndarray | None:
        y0, x0, y1, x1 = inst.bbox
        pad = int(np.ceil((2 * RING_DIAMETERS + 0.3) * inst.equivalent_diameter)) + 2
        ys, xs = slice(max(0, y0 - pad), min(h, y1 + pad)), slice(max(0, x0 - pad), min(w, x1 + pad))
        try:
            return nucleus_features(rgb[ys, xs], labels[ys, xs] == inst.label, outline_closing)
        except ValueError:
            return None

    workers = min(MAX_MEASURE_THREADS, max(1, cv2.getNumThreads()), len(instances))
    if workers <= 1:
        return [one(inst) for inst in instances]
    with ThreadPoolExecutor(workers) as pool:  # each cell its own window: the same numbers, in order
        return list(pool.map(one, instances))


def cell_measurements(rgb: np.ndarray, labels: np.ndarray, instances: Sequence, outline_closing: float = 0.0) -> np.ndarray:
    """cell_features as a (cells, FEATURES) array, a row of NaN for a cell that can not be measured:
    the per-cell shape and colour measurements of the cell table and GeoJSON (QuPath's habit)."""
    out = np.full((len(instances), len(FEATURES)), np.nan)
    for k, f in enumerate(cell_features(rgb, labels, instances, outline_closing)):
        if f is not None:
            out[k] = f
    return out


@dataclass(frozen=True)
class MorphologyClassifier:
    """Standardise, then a multinomial logistic regression; plain arrays, stored as JSON, with the
    outline closing its features were measured with (0 in files written before it was recorded)."""

    classes: tuple[str, ...]
    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (classes, features)
    intercept: np.ndarray  # (classes,)
    outline_closing: float = 0.0

    @classmethod
    def fit(cls, x: np.ndarray, y: Sequence[int], classes: Sequence[str], c: float = 1.0, outline_closing: float = 0.0) -> MorphologyClassifier:
        """Fit on feature rows `x` and class indices `y` (into `classes`); classes weighted to balance.
        `outline_closing` is the one `x` was measured with: recorded, so cells are measured alike later."""
        from sklearn.linear_model import LogisticRegression

        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y)
        if x.ndim != 2 or x.shape[1] != len(FEATURES) or len(y) != len(x):
            raise ValueError(f"MorphologyClassifier.fit: expected x of shape (n, {len(FEATURES)}) and n labels, got {x.shape} and {len(y)}")
        missing = sorted(set(range(len(classes))) - set(y.tolist()))
        if missing:
            raise ValueError(f"MorphologyClassifier.fit: no training cells of {[classes[i] for i in missing]}")
        mean, scale = x.mean(0), x.std(0)
        scale[scale == 0] = 1.0
        reg = LogisticRegression(C=c, class_weight="balanced", max_iter=5000).fit((x - mean) / scale, y)
        coef, intercept = reg.coef_.copy(), reg.intercept_.copy()
        if len(classes) == 2:  # scikit-learn keeps one logit z for two classes: softmax of (-z/2, z/2) is sigmoid(z)
            coef, intercept = np.vstack([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
        return cls(tuple(classes), FEATURES, mean, scale, coef, intercept, float(outline_closing))

    def check_classes(self, classes: Sequence[str]) -> None:
        """Refuse a classifier whose class set differs from this model's (their probabilities are averaged)."""
        if set(self.classes) != set(classes):
            raise ValueError(f"morphology model classes {list(self.classes)} differ from the classifier's {list(classes)}")

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities, one row a cell."""
        z = (np.atleast_2d(np.asarray(x, dtype=np.float64)) - self.mean) / self.scale @ self.coef.T + self.intercept
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(1, keepdims=True)

    def cell_probabilities(self, rgb: np.ndarray, labels: np.ndarray, instances: Sequence, classes: Sequence[str]) -> np.ndarray:
        """Per instance, the probabilities of `classes` (this model's classes in another order); a row
        of NaN for a cell that can not be measured."""
        order = [self.classes.index(c) for c in classes]
        feats = cell_measurements(rgb, labels, instances, self.outline_closing)
        out = np.full((len(feats), len(classes)), np.nan)
        ok = np.isfinite(feats).all(1)
        if ok.any():
            out[ok] = self.predict_proba(feats[ok])[:, order]
        return out

    def to_json(self) -> str:
        return json.dumps({"kind": "wbc.morphology.MorphologyClassifier", "classes": list(self.classes), "features": list(self.features),
                           "mean": self.mean.tolist(), "scale": self.scale.tolist(), "coef": self.coef.tolist(),
                           "intercept": self.intercept.tolist(), "outline_closing": self.outline_closing,
                           "feature_version": FEATURE_VERSION}, indent=1)

    @classmethod
    def from_json(cls, text: str, source: str = "<text>") -> MorphologyClassifier:
        """Read a model written by to_json; `source` names the file in errors."""
        d = json.loads(text)
        if not isinstance(d, dict) or d.get("kind") != "wbc.morphology.MorphologyClassifier":
            raise ValueError(f"{source}: not a morphology classifier (expected kind 'wbc.morphology.MorphologyClassifier')")
        if tuple(d.get("features", ())) != FEATURES:
            raise ValueError(f"{source}: key 'features' is {d.get('features')}, this version measures {list(FEATURES)}")
        version = d.get("feature_version", 1)
        if version != FEATURE_VERSION:
            raise ValueError(f"{source}: key 'feature_version' is {version!r}: its features were measured otherwise than this "
                             f"version measures them (version {FEATURE_VERSION}: solidity and circularity at most 1); "
                             "fit it again with `python fit_morphology.py` (seconds)")
        n_c, n_f = len(d["classes"]), len(FEATURES)
        shapes = {"mean": (n_f,), "scale": (n_f,), "coef": (n_c, n_f), "intercept": (n_c,)}
        arrays = {k: np.asarray(d.get(k), dtype=np.float64) for k in shapes}
        for k, shape in shapes.items():
            if arrays[k].shape != shape or not np.isfinite(arrays[k]).all():
                raise ValueError(f"{source}: key '{k}' should be finite numbers of shape {shape}, got shape {arrays[k].shape}")
        closing = d.get("outline_closing", 0.0)
        if isinstance(closing, bool) or not isinstance(closing, int | float) or not 0 <= closing < 0.5:
            raise ValueError(f"{source}: key 'outline_closing' should be a number in [0, 0.5) (equivalent diameters), got {closing!r}")
        return cls(tuple(d["classes"]), FEATURES, **arrays, outline_closing=float(closing))

    def save(self, path: str | Path) -> Path:
        """Write the JSON atomically (a reader never sees half a model)."""
        return write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> MorphologyClassifier:
        if not Path(path).is_file():
            raise FileNotFoundError(f"morphology={path}: no such file (a model written by benchmarks/morphology_cross.py or MorphologyClassifier.save)")
        return cls.from_json(Path(path).read_text(), source=str(path))
