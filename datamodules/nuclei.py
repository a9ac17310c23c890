"""From a predicted nucleus mask to cell instances and edge-safe, fixed-size ROI crops.

Pipeline (see :func:`extract_instances`): binarize -> 5x5 elliptical opening (the source study's fix for
thin bridges between clumped cells) -> 8-connected components -> optional watershed split of touching
*fat* nuclei -> min-area filter -> deterministic relabel.

Why the watershed is so conservative: neutrophil nuclei are 2-5 small lobes (radius ~7-11 px) joined by
bridges >= 6 px wide and must stay one cell. Seeds therefore only come from distance-transform maxima of
at least ``min_peak_radius`` px (a lobe never gets that deep), at least ``min_distance`` px apart, and
maxima joined by a ridge that dips less than ``_RIDGE_TOLERANCE`` px (one elongated nucleus, whose distance
transform has a flat ridge with many equal maxima) count as one seed.

Pure numpy / OpenCV / scikit-image / scipy: no torch, so it runs in dataset workers and offline scripts.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.measure import regionprops
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

# Distance-transform maxima whose connecting ridge dips less than this (px) are one seed: stops a single
# elongated/oval nucleus (flat ridge -> many equal maxima) from being cut into slices.
_RIDGE_TOLERANCE = 2.0
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class InstanceParams:
    threshold: float = 0.5  # for probability maps (float input); bool/uint8 masks use > 0
    opening_kernel: int = 5  # 0 or 1 disables; elliptical kernel (cv2.MORPH_ELLIPSE)
    watershed: bool = True
    min_peak_radius: float = 14.0  # px; distance-transform peaks lower than this never seed a split
    min_distance: int = 12  # px between seeds
    min_area: int = 30  # px; smaller instances are dropped (dust, noise)
    # drop nuclei touching the image border (cells cut by the frame) unless nothing else is left:
    # single-cell datasets annotate only the centred cell (no ground-truth nucleus in
    # segmentation_wbc or ALL-IDB2 touches the border), neighbours cut by the frame are unlabelled
    clear_border: bool = False


@dataclass(frozen=True)
class Instance:
    label: int  # 1..n in the returned label map
    bbox: tuple[int, int, int, int]  # (y0, x0, y1, x1), y1/x1 exclusive
    centroid: tuple[float, float]  # (cy, cx)
    area: int


def _check_2d(arr: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) array, got shape {arr.shape}")
    return arr


def _check_int(value: int, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def binarize(mask_or_prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Bool mask: float maps use ``> threshold``; bool/integer masks use ``> 0`` (labels count as foreground)."""
    arr = _check_2d(mask_or_prob, "mask_or_prob")
    if arr.dtype == bool:
        return arr.copy()
    if np.issubdtype(arr.dtype, np.floating):
        return arr > threshold
    if np.issubdtype(arr.dtype, np.integer):
        return arr > 0
    raise ValueError(f"mask_or_prob must be a bool, integer or float array, got dtype {arr.dtype}")


def open_mask(mask: np.ndarray, kernel: int = 5) -> np.ndarray:
    """Morphological opening with an elliptical kernel: cuts thin bridges between cells and removes specks."""
    mask = _check_2d(mask, "mask")
    kernel = _check_int(kernel, "kernel", 0)
    if kernel <= 1:
        return mask.astype(bool, copy=True)
    se = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel, kernel))
    # OpenCV's default border for erosion is "+inf", so nuclei touching the image edge are not eaten away.
    return cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, se).astype(bool)


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return labels, n - 1


def split_touching(mask: np.ndarray, min_peak_radius: float = 14.0, min_distance: int = 12) -> np.ndarray:
    """bool mask -> int32 label map (0 bg) with touching fat nuclei split.

    Components with 0 or 1 seeds stay whole (e.g. multi-lobed neutrophils); components with >= 2 seeds are
    split by a watershed on the negated distance transform restricted to the component, so every pixel of
    the component ends up with one of its seeds.
    """
    mask = _check_2d(mask, "mask").astype(bool)
    min_distance = _check_int(min_distance, "min_distance", 1)
    if not np.isfinite(min_peak_radius) or min_peak_radius < 0:
        raise ValueError(f"min_peak_radius must be a finite number >= 0, got {min_peak_radius!r}")
    comps, n = _components(mask)
    if n == 0:
        return comps
    dist = ndi.distance_transform_edt(mask)
    # peak_local_max keeps values strictly above threshold_abs; nudge it down so ">= min_peak_radius" holds.
    peaks = peak_local_max(
        dist,
        min_distance=min_distance,
        threshold_abs=np.nextafter(float(min_peak_radius), -np.inf),
        labels=comps,
        exclude_border=False,
    )
    if len(peaks) < 2:
        return comps
    # Merge seeds sharing one h-maximum plateau (flat ridge of an elongated nucleus); drop shoulder maxima.
    ridges, _ = ndi.label(h_maxima(dist, _RIDGE_TOLERANCE, footprint=_EIGHT), structure=_EIGHT)
    ridge_ids = np.unique(ridges[peaks[:, 0], peaks[:, 1]])
    ridge_ids = ridge_ids[ridge_ids > 0]
    seed_comp = np.array([comps[ridges == r].max() for r in ridge_ids], dtype=np.int64)
    comp_ids, counts = np.unique(seed_comp, return_counts=True)
    to_split = comp_ids[counts >= 2]
    if len(to_split) == 0:
        return comps
    markers = np.zeros_like(comps)
    for i, (r, c) in enumerate(zip(ridge_ids, seed_comp, strict=True), start=1):
        if c in to_split:
            markers[ridges == r] = i
    split_region = np.isin(comps, to_split)
    # connectivity=2 matches the 8-connected components, so diagonal-only pixels are still flooded.
    ws = watershed(-dist, markers, mask=split_region, connectivity=2)
    out = np.where(split_region, ws + n, comps)  # offset keeps watershed ids clear of component ids
    return _relabel_sequential(out)


def _relabel_sequential(labels: np.ndarray) -> np.ndarray:
    ids, inv = np.unique(labels, return_inverse=True)
    if ids[0] != 0:  # no background: shift so ids start at 1
        inv = inv + 1
    return inv.reshape(labels.shape).astype(np.int32)


def _instances_from_labels(labels: np.ndarray, min_area: int) -> tuple[np.ndarray, list[Instance]]:
    """Drop regions < min_area and relabel 1..n ordered by (cy, cx) of the centroid, for determinism."""
    props = [p for p in regionprops(labels) if p.area >= min_area]
    props.sort(key=lambda p: (p.centroid[0], p.centroid[1], p.bbox))
    out = np.zeros(labels.shape, dtype=np.int32)
    instances = []
    for new_id, p in enumerate(props, start=1):
        out[labels == p.label] = new_id
        cy, cx = p.centroid
        instances.append(
            Instance(
                label=new_id,
                bbox=tuple(int(v) for v in p.bbox),
                centroid=(float(cy), float(cx)),
                area=int(p.area),
            )
        )
    return out, instances


def drop_border_objects(labels: np.ndarray) -> np.ndarray:
    """Label map without the objects touching the image border; unchanged if that would empty it."""
    from skimage.segmentation import clear_border

    cleared = clear_border(labels)
    return cleared if cleared.any() else labels


def extract_instances(
    mask_or_prob: np.ndarray, params: InstanceParams = InstanceParams()
) -> tuple[np.ndarray, list[Instance]]:
    """binarize -> opening -> connected components (8-conn) -> optional watershed split -> min-area filter
    -> relabel 1..n (ordered by (y, x) of centroid for determinism)."""
    min_area = _check_int(params.min_area, "params.min_area", 0)
    mask = open_mask(binarize(mask_or_prob, params.threshold), params.opening_kernel)
    if params.watershed:
        labels = split_touching(mask, params.min_peak_radius, params.min_distance)
    else:
        labels = _components(mask)[0]
    if params.clear_border:
        labels = drop_border_objects(labels)
    return _instances_from_labels(labels, min_area)


def union_instance(
    mask_or_prob: np.ndarray, params: InstanceParams = InstanceParams()
) -> tuple[np.ndarray, list[Instance]]:
    """Single-cell datasets: every nucleus pixel surviving opening and the per-component min-area filter
    (lobes of one nucleus may be disconnected) forms ONE instance with label 1."""
    min_area = _check_int(params.min_area, "params.min_area", 0)
    mask = open_mask(binarize(mask_or_prob, params.threshold), params.opening_kernel)
    comps, _ = _components(mask)
    if params.clear_border:
        comps = drop_border_objects(comps)
    kept, _ = _instances_from_labels(comps, min_area)
    return _instances_from_labels((kept > 0).astype(np.int32), 1)


def crop_box(
    center: tuple[float, float], size: int, image_shape: tuple[int, ...]
) -> tuple[int, int, int, int]:
    """Fixed-size square ROI (y0, x0, y1, x1) centred on ``center`` and shifted to lie fully inside the image.

    Source-study fix: a cell at the top edge moves the ROI down, never out of the image. Where the image is
    smaller than ``size`` along an axis the box covers that whole axis and :func:`crop` pads.
    ``image_shape`` may be ``image.shape`` (only the first two entries are used).
    """
    size = _check_int(size, "size", 1)
    if len(image_shape) < 2 or min(image_shape[:2]) < 1:
        raise ValueError(f"image_shape must start with (H, W) >= 1, got {tuple(image_shape)}")
    if len(center) != 2 or not all(np.isfinite(center)):
        raise ValueError(f"center must be a finite (cy, cx) pair, got {center!r}")
    box = []
    for c, length in zip(center, image_shape[:2], strict=False):
        if length <= size:
            box.append((0, int(length)))
            continue
        start = int(np.floor(c - (size - 1) / 2 + 0.5))  # pixel c sits at the crop centre
        start = min(max(start, 0), int(length) - size)
        box.append((start, start + size))
    (y0, y1), (x0, x1) = box
    return y0, x0, y1, x1


def crop(
    image: np.ndarray, box: tuple[int, int, int, int], size: int, pad_value: int | float = 0
) -> np.ndarray:
    """Crop (HxW or HxWxC) to exactly ``size x size (x C)``; pads (constant, centred) only where the image is
    smaller than the crop, so a model always sees the same input size."""
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be HxW or HxWxC, got shape {image.shape}")
    size = _check_int(size, "size", 1)
    y0, x0, y1, x1 = (int(v) for v in box)
    h, w = image.shape[:2]
    if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
        raise ValueError(f"box {tuple(box)} must satisfy 0 <= y0 < y1 <= {h} and 0 <= x0 < x1 <= {w}")
    if y1 - y0 > size or x1 - x0 > size:
        raise ValueError(f"box {tuple(box)} is larger than size={size}; use crop_box() to build it")
    patch = image[y0:y1, x0:x1]
    ph, pw = size - patch.shape[0], size - patch.shape[1]
    if ph == 0 and pw == 0:
        return patch.copy()
    pad = [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(patch, pad, mode="constant", constant_values=pad_value)


def instance_crops(
    image: np.ndarray,
    labels: np.ndarray,
    instances: list[Instance],
    size: int,
    masked: bool = False,
    center: str = "bbox",
) -> list[np.ndarray]:
    """One ``size x size`` crop per instance centred on its bbox centre ("bbox") or centroid ("centroid");
    ``masked=True`` zeroes everything outside that instance's nucleus pixels (the source study's masked crops)."""
    image = np.asarray(image)
    labels = _check_2d(labels, "labels")
    if image.ndim not in (2, 3) or image.shape[:2] != labels.shape:
        raise ValueError(
            f"image shape {image.shape} must be HxW or HxWxC matching labels shape {labels.shape}"
        )
    if center not in ("bbox", "centroid"):
        raise ValueError(f"center must be 'bbox' or 'centroid', got {center!r}")
    crops = []
    for inst in instances:
        if center == "bbox":
            y0, x0, y1, x1 = inst.bbox
            c = ((y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2)
        else:
            c = inst.centroid
        box = crop_box(c, size, image.shape)
        patch = crop(image, box, size)
        if masked:
            keep = crop(labels == inst.label, box, size, pad_value=False)
            patch = np.where(keep[..., None] if patch.ndim == 3 else keep, patch, np.zeros((), patch.dtype))
        crops.append(patch)
    return crops


def match_instances(
    pred_labels: np.ndarray, true_labels: np.ndarray, iou_threshold: float = 0.5
) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching by IoU (highest first) of predicted to ground-truth instance ids.

    Returns ``(pred_id, true_id, iou)`` with ``iou >= iou_threshold`` (only overlapping pairs); used to score
    detection precision/recall of the full pipeline.
    """
    pred = _check_2d(pred_labels, "pred_labels")
    true = _check_2d(true_labels, "true_labels")
    if pred.shape != true.shape:
        raise ValueError(f"pred_labels shape {pred.shape} != true_labels shape {true.shape}")
    if not (np.issubdtype(pred.dtype, np.integer) and np.issubdtype(true.dtype, np.integer)):
        raise ValueError("pred_labels and true_labels must be integer label maps")
    if pred.size and (pred.min() < 0 or true.min() < 0):
        raise ValueError("pred_labels and true_labels must be non-negative (0 = background)")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold!r}")
    p, t = pred.ravel().astype(np.int64), true.ravel().astype(np.int64)
    both = (p > 0) & (t > 0)
    if not both.any():
        return []
    area_p, area_t = np.bincount(p), np.bincount(t)
    pairs, inter = np.unique(np.stack([p[both], t[both]]), axis=1, return_counts=True)
    ious = inter / (area_p[pairs[0]] + area_t[pairs[1]] - inter)
    order = sorted(range(len(ious)), key=lambda i: (-ious[i], pairs[0, i], pairs[1, i]))
    used_p, used_t, matches = set(), set(), []
    for i in order:
        pi, ti, iou = int(pairs[0, i]), int(pairs[1, i]), float(ious[i])
        if iou < iou_threshold:
            break
        if pi in used_p or ti in used_t:
            continue
        used_p.add(pi)
        used_t.add(ti)
        matches.append((pi, ti, iou))
    return matches


def instances_from_labels(labels: np.ndarray, min_area: int = 0) -> tuple[np.ndarray, list[Instance]]:
    """Instances of an existing label map (e.g. a dataset's ground-truth instance file)."""
    return _instances_from_labels(np.asarray(labels, dtype=np.int32), _check_int(min_area, "min_area", 0))
