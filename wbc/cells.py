"""From an image and its nuclei (true or predicted) to one fixed-size crop per cell.

Crop geometry (:class:`CropSpec`, edge-safe boxes, padding), the crops themselves, the classifier's
input batch and the one-to-one matching of predicted to true cells. Shared by the classification
DataModule (ground-truth masks), pipeline scoring and prediction (predicted masks), so a crop is
made the same way everywhere. Pure numpy/OpenCV (+ torch for the batch): no Lightning, no Hydra.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from wbc.data.transforms import build_pipeline, to_tensor
from wbc.postprocess import (
    Instance,
    PostprocessParams,
    _check_2d,
    _check_int,
    extract_instances,
    instances_from_labels,
    union_instance,
)

# the smallest ROI side a cell-unit crop gets (a few-pixel speck still gives a usable crop)
MIN_ROI = 16
# data.crops.masked for crops holding both views (plain, then nucleus-masked) along the channels
BOTH_VIEWS = "both"


@dataclass(frozen=True)
class CropSpec:
    """How cells are cut out. `mode`: `instances` (one crop per nucleus; fields with several
    cells) or `single` (one crop around all nucleus pixels; single-cell datasets whose nucleus
    lobes may be disconnected). `size` is the ROI side in original pixels (None = whole image);
    `diameters`, when set, wins: each cell's ROI side is that many times its nucleus's equivalent
    diameter, so the crop holds the same amount of cell whatever the image's magnification (crops
    in cell units: the lever for other microscopes and datasets). `masked`: zero everything outside
    the cell's nucleus (true), keep the pixels (false), or "both": each crop holds the plain and the
    masked view stacked along the channels, for an ensemble of a masked and an unmasked classifier
    (wbc.ensemble.ClassifierEnsemble gives each member its own view)."""

    size: int | None = 96
    image_size: int = 64
    mode: str = "instances"
    masked: bool | str = False
    center: str = "bbox"
    diameters: float | None = None

    @classmethod
    def from_config(cls, cfg: Mapping | None) -> CropSpec:
        cfg = dict(cfg or {})
        cfg.pop("transforms", None)
        unknown = set(cfg) - set(cls.__dataclass_fields__) - {"instance_params"}
        if unknown:
            raise ValueError(f"data.crops: unknown keys {sorted(unknown)}; expected {sorted(cls.__dataclass_fields__)}")
        if "instance_params" in cfg:
            raise ValueError(
                "data.crops.instance_params: post-processing moved to the top-level `postprocess` node "
                "(postprocess.clear_border=..., postprocess.min_area=...)"
            )
        spec = cls(**cfg)
        if spec.mode not in ("instances", "single"):
            raise ValueError(f"data.crops.mode must be 'instances' or 'single', got {spec.mode!r}")
        if not (isinstance(spec.masked, bool) or spec.masked == BOTH_VIEWS):
            raise ValueError(f"data.crops.masked must be true, false or {BOTH_VIEWS!r} (plain and masked views stacked), got {spec.masked!r}")
        if spec.diameters is not None and not float(spec.diameters) > 0:
            raise ValueError(f"data.crops.diameters must be a positive number (ROI side / nucleus diameter) or null, got {spec.diameters!r}")
        return spec

    def roi_sizes(self, image_shape: tuple[int, ...], instances: list[Instance]) -> list[int]:
        """Each cell's ROI side in image pixels (see the class docstring)."""
        if self.diameters is not None:
            return [max(MIN_ROI, round(float(self.diameters) * i.equivalent_diameter)) for i in instances]
        return [self.size or max(image_shape[:2])] * len(instances)

    @property
    def views(self) -> int:
        """How many views a crop stacks along its channels (2 for masked="both")."""
        return 2 if self.masked == BOTH_VIEWS else 1

    def to_dict(self) -> dict:
        return asdict(self)


def shown(crop: np.ndarray, channels: int | None = None) -> np.ndarray:
    """The crop as a person sees it (PNG files, the web page): the plain view of a crop that
    stacks a plain and a masked one (data.crops.masked="both": 6 channels, or 2 for grey); with
    `channels` (CellPipeline.shown_channels: the first member input's, 3 or 1), the first input of a
    crop that stacks several (a classifier ensemble over RGB and grey + CLAHE)."""
    if channels is not None and crop.ndim == 3 and crop.shape[2] > channels:
        view = crop[..., :channels]
        return view[..., 0] if channels == 1 else view
    if crop.ndim == 3 and crop.shape[2] in (2, 6):
        view = crop[..., : crop.shape[2] // 2]
        return view[..., 0] if view.shape[2] == 1 else view
    return crop


def find_cells(
    nucleus: np.ndarray, spec: CropSpec, params: PostprocessParams | None = None, instance_map: np.ndarray | None = None
) -> tuple[np.ndarray, list[Instance]]:
    """Label map + instances: from a given instance map, or by post-processing the mask."""
    params = params or PostprocessParams()
    if instance_map is not None and spec.mode == "instances":
        return instances_from_labels(instance_map, params.min_area)
    if spec.mode == "single":
        return union_instance(nucleus, params)
    return extract_instances(nucleus, params)


def cell_crops(
    image: np.ndarray, nucleus: np.ndarray, spec: CropSpec, params: PostprocessParams | None = None, instance_map: np.ndarray | None = None
) -> tuple[np.ndarray, list[Instance], list[np.ndarray]]:
    """(label map, instances, crops) for one image; crops are uint8 at the ROI size (resized later)."""
    labels, instances = find_cells(nucleus, spec, params, instance_map)
    if not instances:
        return labels, instances, []
    crops = instance_crops(image, labels, instances, spec.roi_sizes(image.shape, instances), masked=spec.masked, center=spec.center)
    return labels, instances, crops


def crop_batch(crops: list[np.ndarray], image_size: int) -> torch.Tensor:
    """Crops at ROI size -> a batch tensor at the classifier's input size (no augmentation)."""
    pipeline = build_pipeline(None, image_size)
    return torch.stack([to_tensor(pipeline(image=c)["image"]) for c in crops])


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
    size: int | Sequence[int],
    masked: bool | str = False,
    center: str = "bbox",
) -> list[np.ndarray]:
    """One ``size x size`` crop per instance (one size for all, or one per instance) centred on its
    bbox centre ("bbox") or centroid ("centroid"); ``masked=True`` zeroes everything outside that
    instance's nucleus pixels (the source study's masked crops); ``masked="both"`` stacks the plain
    and the masked crop along the channels (HxWx6, or HxWx2 for a grey image)."""
    image = np.asarray(image)
    labels = _check_2d(labels, "labels")
    if image.ndim not in (2, 3) or image.shape[:2] != labels.shape:
        raise ValueError(
            f"image shape {image.shape} must be HxW or HxWxC matching labels shape {labels.shape}"
        )
    if center not in ("bbox", "centroid"):
        raise ValueError(f"center must be 'bbox' or 'centroid', got {center!r}")
    sizes = [size] * len(instances) if isinstance(size, int | np.integer) else list(size)
    if len(sizes) != len(instances):
        raise ValueError(f"{len(sizes)} crop sizes for {len(instances)} instances")
    crops = []
    for inst, size in zip(instances, sizes):
        if center == "bbox":
            y0, x0, y1, x1 = inst.bbox
            c = ((y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2)
        else:
            c = inst.centroid
        box = crop_box(c, size, image.shape)
        patch = crop(image, box, size)
        if masked:
            keep = crop(labels, box, size) == inst.label  # the box only, not the whole image a cell
            cut = np.where(keep[..., None] if patch.ndim == 3 else keep, patch, np.zeros((), patch.dtype))
            patch = np.concatenate([np.atleast_3d(patch), np.atleast_3d(cut)], axis=2) if masked == BOTH_VIEWS else cut
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
