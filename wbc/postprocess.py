"""Post-processing: a nucleus probability map (or mask) -> nucleus mask -> cell instances.

One home for threshold, opening, minimum area, watershed splitting and `clear_border`
(:class:`PostprocessParams`); segmentation scoring, pipeline crops, predict, ONNX and the web app
all call :func:`nucleus_mask` / :func:`extract_instances` / :func:`union_instance` with the params the
segmenter checkpoint carries.

extract_instances: binarize -> 5x5 elliptical opening (the source study's fix for thin bridges
between clumped cells) -> 8-connected components -> optional watershed split of touching *fat*
nuclei -> optional border clearing -> min-area filter -> deterministic relabel.

Why the watershed is so conservative: neutrophil nuclei are 2-5 small lobes (radius ~7-11 px) joined
by bridges >= 6 px wide and must stay one cell. Seeds therefore only come from distance-transform
maxima of at least ``min_peak_radius`` px (a lobe never gets that deep), at least ``min_distance`` px
apart, and maxima joined by a ridge that dips less than ``_RIDGE_TOLERANCE`` px (one elongated nucleus,
whose distance transform has a flat ridge with many equal maxima) count as one seed.

Pure numpy / OpenCV / scikit-image / scipy: no torch, Lightning or Hydra.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.measure import regionprops
from skimage.morphology import local_maxima, reconstruction
from skimage.segmentation import watershed

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class PostprocessParams:
    """How a nucleus probability map becomes nuclei. The one home of these defaults: Hydra's
    `postprocess` node is this dataclass (wbc.cli registers it), the segmenter checkpoint stores the
    values it was validated with (`data_info.postprocess`), and every consumer reads them from there."""

    # probability maps (float input) use `> threshold`; bool/uint8 masks use `> 0`
    threshold: float = 0.5
    # elliptical opening kernel side (px); 0 or 1 disables it. 5x5 = the source study's fix for clumped cells
    opening_kernel: int = 5
    # split touching fat nuclei by a watershed on the distance transform (instances only; the
    # binary mask scored by Dice is the same with or without it)
    watershed: bool = True
    # px; distance-transform peaks lower than this never seed a split (a neutrophil lobe never gets that deep)
    min_peak_radius: float = 14.0
    # px between watershed seeds
    min_distance: int = 12
    # px; distance-transform peaks joined by a ridge that dips less than this below the lower peak are one
    # seed: a peanut / bean-shaped or elongated nucleus (a waist, or a flat ridge) is not cut in two
    ridge_tolerance: float = 2.0
    # px; smaller nuclei are dropped (dust, noise)
    min_area: int = 30
    # drop nuclei touching the image border (cells cut by the frame) unless nothing else is left:
    # single-cell datasets annotate only the centred cell, so neighbours cut by the frame are unlabelled
    clear_border: bool = False
    # px; nucleus pieces (8-connected) at most this far apart are one cell: the lobes of a segmented
    # neutrophil that masks draw apart (34 % of dataset1's neutrophils, 18 % of dataset2's), which on a
    # field would each be a "cell". Pieces of a group a watershed split are left alone. 0 = off; single-cell
    # datasets join every piece anyway (union_instance)
    lobe_gap: float = 0.0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | PostprocessParams | None, where: str = "postprocess") -> PostprocessParams:
        """From a config node or dict (missing keys keep their defaults); unknown keys and wrong
        types are one clear error naming `where`."""
        if isinstance(cfg, PostprocessParams):
            return cfg
        values = dict(cfg or {})
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; expected {sorted(cls.__dataclass_fields__)}")
        params = cls(**{k: v for k, v in values.items() if v is not None})
        params.check(where)
        return params

    def check(self, where: str = "postprocess") -> None:
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"{where}.threshold must be in [0, 1], got {self.threshold!r}")
        for key, minimum in (("opening_kernel", 0), ("min_distance", 1), ("min_area", 0)):
            _check_int(getattr(self, key), f"{where}.{key}", minimum)
        for key in ("min_peak_radius", "ridge_tolerance", "lobe_gap"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value) or value < 0:
                raise ValueError(f"{where}.{key} must be a finite number >= 0 (px), got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, overrides: Mapping[str, Any] | None, where: str = "postprocess") -> tuple[PostprocessParams, dict[str, tuple[Any, Any]]]:
        """These params with the non-null `overrides` applied, and {key: (stored, override)} of
        what actually changed (for the log)."""
        given = {k: v for k, v in dict(overrides or {}).items() if v is not None}
        merged = PostprocessParams.from_config({**self.to_dict(), **given}, where)
        changed = {k: (getattr(self, k), v) for k, v in given.items() if getattr(self, k) != getattr(merged, k)}
        return merged, changed


@dataclass(frozen=True)
class Instance:
    label: int  # 1..n in the returned label map
    bbox: tuple[int, int, int, int]  # (y0, x0, y1, x1), y1/x1 exclusive
    centroid: tuple[float, float]  # (cy, cx)
    area: int

    @property
    def equivalent_diameter(self) -> float:
        """sqrt(4 A / pi): the diameter of the disc of the same area (a size that ignores shape)."""
        return math.sqrt(4 * self.area / math.pi)


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


def split_touching(mask: np.ndarray, min_peak_radius: float = 14.0, min_distance: int = 12, ridge_tolerance: float = 2.0) -> np.ndarray:
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
    dist = _edt(mask)
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
    # Merge seeds sharing one h-dome plateau (a waist or flat ridge of one nucleus, a shoulder of a peak).
    ridges = _ridges(dist, comps, np.unique(comps[peaks[:, 0], peaks[:, 1]], return_counts=True), ridge_tolerance)
    ridge_ids = np.unique(ridges[peaks[:, 0], peaks[:, 1]])
    ridge_ids = ridge_ids[ridge_ids > 0]
    # each ridge's component, in one pass: a ridge (dist > 0, 8-connected) lies inside one 8-connected component
    on_ridge = ridges > 0
    comp_of = np.zeros(int(ridges.max()) + 1, dtype=np.int64)
    comp_of[ridges[on_ridge]] = comps[on_ridge]
    seed_comp = comp_of[ridge_ids]
    comp_ids, counts = np.unique(seed_comp, return_counts=True)
    to_split = comp_ids[counts >= 2]
    if len(to_split) == 0:
        return comps
    marker_of = np.zeros(int(ridges.max()) + 1, dtype=comps.dtype)  # ridge -> its marker (1, 2, ... in ridge order), 0 = none
    chosen = np.isin(seed_comp, to_split)
    marker_of[ridge_ids[chosen]] = np.arange(1, len(ridge_ids) + 1, dtype=comps.dtype)[chosen]
    markers = marker_of[ridges]
    split_region = np.isin(comps, to_split)
    # connectivity=2 matches the 8-connected components, so diagonal-only pixels are still flooded.
    ws = watershed(-dist, markers, mask=split_region, connectivity=2)
    out = np.where(split_region, ws + n, comps)  # offset keeps watershed ids clear of component ids
    return _relabel_sequential(out)


def _edt(mask: np.ndarray) -> np.ndarray:
    """scipy's exact Euclidean distance transform, bit for bit, in a fraction of its time: OpenCV's exact
    transform is float32(sqrt(n)) for the integer squared distance n, so n is recovered by rounding and
    its float64 square root taken, as scipy does. Beyond 1000 px (n near float32's integer precision)
    scipy itself."""
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    if dist.size and float(dist.max()) > 1000.0:
        return ndi.distance_transform_edt(mask)
    return np.sqrt(np.round(dist.astype(np.float64) ** 2))


def h_domes(image: np.ndarray, tolerance: float) -> np.ndarray:
    """The regional maxima (8-connected) of `image`'s h-maxima transform: each peak cut `tolerance` below
    its top, one plateau per dome; peaks joined by a saddle less than `tolerance` below the lower one share
    a plateau. (skimage's h_maxima marks only each peak's top pixels, so a waist dipping 0.5 px left two.)"""
    return local_maxima(reconstruction(image - tolerance, image), footprint=_EIGHT)


def _ridges(dist: np.ndarray, comps: np.ndarray, peak_counts: tuple[np.ndarray, np.ndarray], tolerance: float = 2.0) -> np.ndarray:
    """8-connected h-dome plateaus of `dist` (h_domes), labelled 1.., computed only in the components holding
    two or more peaks, each in its bounding box with one background pixel around: the whole image's plateaus
    there (a reconstruction path through the background is bounded by 0), at a fraction of the time (on a
    16 MP field the whole-image reconstruction was most of the watershed's)."""
    ridges = np.zeros(dist.shape, dtype=np.int32)
    comp_ids, counts = peak_counts
    boxes = ndi.find_objects(comps)
    firsts: list[np.ndarray] = []  # each ridge's first pixel (row, col) in the image
    for c in comp_ids[counts >= 2]:
        ys, xs = boxes[int(c) - 1]
        box = (slice(max(ys.start - 1, 0), ys.stop + 1), slice(max(xs.start - 1, 0), xs.stop + 1))
        own = comps[box] == c
        local, _ = ndi.label(h_domes(np.where(own, dist[box], 0.0), tolerance) & own, structure=_EIGHT)
        on = local > 0
        ridges[box][on] = local[on] + sum(len(f) for f in firsts)
        _, first = np.unique(local, return_index=True)  # ndi.label numbers in raster order: first[1:] follow 1..k
        r, q = np.divmod(first[1:], local.shape[1])
        firsts.append(np.stack([r + box[0].start, q + box[1].start], axis=1))
    if not firsts:
        return ridges
    # number the ridges in raster order of their first pixel, as labelling the whole image would
    first = np.concatenate(firsts)
    order = np.lexsort((first[:, 1], first[:, 0]))
    renumber = np.zeros(len(first) + 1, dtype=np.int32)
    renumber[order + 1] = np.arange(1, len(first) + 1, dtype=np.int32)
    return renumber[ridges]


def join_lobes(mask: np.ndarray, labels: np.ndarray, gap: float) -> np.ndarray:
    """`labels` with the pieces (8-connected components of `mask`) that lie within `gap` px of each other
    given one label, unless a piece of the group holds several labels (a watershed split: touching cells)."""
    m = np.asarray(mask) > 0
    comps, n = _components(m)
    if n < 2 or gap <= 0:
        return labels
    away = cv2.distanceTransform((~m).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    _, groups = cv2.connectedComponents((away <= gap / 2).astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    comp_group = np.zeros(n + 1, np.int64)
    comp_group[comps[m]] = groups[m]
    pairs = np.unique(np.stack([comps[m], labels[m]]), axis=1)  # (component, label) pairs present
    split = np.bincount(pairs[0], minlength=n + 1) > 1
    pieces = np.bincount(comp_group[1:], minlength=groups.max() + 1)
    no_split = np.ones(groups.max() + 1, bool)
    no_split[comp_group[1:][split[1:]]] = False
    pair_group = comp_group[pairs[0]]
    join = ((pieces > 1) & no_split)[pair_group]  # pairs whose group becomes one cell
    first = np.full(groups.max() + 1, np.iinfo(np.int64).max)
    np.minimum.at(first, pair_group[join], pairs[1][join])  # each joined group's smallest label
    lookup = np.arange(int(labels.max()) + 1)
    lookup[pairs[1][join]] = first[pair_group[join]]
    return lookup[labels].astype(labels.dtype)


def _relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Ids 1..n in the order of the old ids, 0 kept (a lookup table: np.unique's sort took seconds on big fields)."""
    present = np.zeros(int(labels.max(initial=0)) + 1, dtype=bool)
    present[labels.ravel()] = True
    lookup = np.cumsum(present, dtype=np.int64) - int(present[0])  # no background: the smallest id becomes 1
    return lookup[labels].astype(np.int32)


def _instances_from_labels(labels: np.ndarray, min_area: int) -> tuple[np.ndarray, list[Instance]]:
    """Drop regions < min_area and relabel 1..n ordered by (cy, cx) of the centroid, for determinism."""
    props = [p for p in regionprops(labels) if p.area >= min_area]
    props.sort(key=lambda p: (p.centroid[0], p.centroid[1], p.bbox))
    lookup = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.int32)  # one pass over the image, not one a cell (minutes on a big field)
    instances = []
    for new_id, p in enumerate(props, start=1):
        lookup[p.label] = new_id
        cy, cx = p.centroid
        instances.append(
            Instance(
                label=new_id,
                bbox=tuple(int(v) for v in p.bbox),
                centroid=(float(cy), float(cx)),
                area=int(p.area),
            )
        )
    return lookup[labels], instances


def drop_border_objects(labels: np.ndarray, min_area: int = 0) -> np.ndarray:
    """Label map without the objects touching the image border; unchanged if no object of at least
    `min_area` px would be left (a speck the area filter drops next must not cost the cut nucleus)."""
    from skimage.segmentation import clear_border

    cleared = clear_border(labels)
    sizes = np.bincount(cleared.ravel())[1:]
    return cleared if (sizes >= max(min_area, 1)).any() else labels


def extract_instances(
    mask_or_prob: np.ndarray, params: PostprocessParams = PostprocessParams()
) -> tuple[np.ndarray, list[Instance]]:
    """binarize -> opening -> connected components (8-conn) -> optional watershed split -> optional lobe
    joining -> min-area filter -> relabel 1..n (ordered by (y, x) of centroid for determinism)."""
    min_area = _check_int(params.min_area, "params.min_area", 0)
    mask = open_mask(binarize(mask_or_prob, params.threshold), params.opening_kernel)
    if params.watershed:
        labels = split_touching(mask, params.min_peak_radius, params.min_distance, params.ridge_tolerance)
    else:
        labels = _components(mask)[0]
    if params.lobe_gap > 0:
        labels = join_lobes(mask, labels, params.lobe_gap)
    if params.clear_border:
        labels = drop_border_objects(labels, min_area)
    return _instances_from_labels(labels, min_area)


def union_instance(
    mask_or_prob: np.ndarray, params: PostprocessParams = PostprocessParams()
) -> tuple[np.ndarray, list[Instance]]:
    """Single-cell datasets: every nucleus pixel surviving opening and the per-component min-area filter
    (lobes of one nucleus may be disconnected) forms ONE instance with label 1."""
    min_area = _check_int(params.min_area, "params.min_area", 0)
    mask = open_mask(binarize(mask_or_prob, params.threshold), params.opening_kernel)
    comps, _ = _components(mask)
    if params.clear_border:
        comps = drop_border_objects(comps, min_area)
    kept, _ = _instances_from_labels(comps, min_area)
    return _instances_from_labels((kept > 0).astype(np.int32), 1)


def instances_from_labels(labels: np.ndarray, min_area: int = 0) -> tuple[np.ndarray, list[Instance]]:
    """Instances of an existing label map (e.g. a dataset's ground-truth instance file)."""
    return _instances_from_labels(np.asarray(labels, dtype=np.int32), _check_int(min_area, "min_area", 0))


def resize_prob(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A network-size probability map back to an image's (H, W), bilinear: post-processing and
    scoring happen at the image's own resolution, never on a mask shrunk to the network."""
    return cv2.resize(np.asarray(prob, dtype=np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def nucleus_mask(prob: np.ndarray, params: PostprocessParams = PostprocessParams()) -> np.ndarray:
    """Probability map -> the boolean nucleus mask that segmentation is scored on: threshold,
    opening, border clearing and min-area filter (no watershed: splitting never changes the mask)."""
    labels, _ = extract_instances(np.asarray(prob, dtype=np.float32), replace(params, watershed=False))
    return labels > 0


def checkpoint_postprocess(stored: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None = None, who: str = "segmenter") -> PostprocessParams:
    """The params a segmenter checkpoint carries (`data_info.postprocess`) with the user's non-null
    overrides applied; every override that changes a stored value is logged. A checkpoint without
    them (older than this field) gets the defaults, with a warning."""
    import logging

    log = logging.getLogger("wbc")
    if stored is None:
        log.warning("%s checkpoint carries no data_info.postprocess (older format): using the defaults %s", who, PostprocessParams())
    params, changed = PostprocessParams.from_config(stored, f"{who} data_info.postprocess").with_overrides(overrides)
    for key, (old, new) in changed.items():
        log.info("postprocess.%s=%r overrides the %s checkpoint's %r", key, new, who, old)
    return params


def rescale_postprocess(params: PostprocessParams, k: float) -> PostprocessParams:
    """The params for an image with k image px per training px: lengths scale by k, areas by k^2
    (the opening kernel stays odd and >= its original 0/1 meaning)."""
    if abs(k - 1.0) < 1e-6:
        return params
    kernel = params.opening_kernel
    if kernel > 1:
        kernel = max(3, int(round(kernel * k)) | 1)
    return replace(
        params,
        opening_kernel=kernel,
        min_peak_radius=params.min_peak_radius * k,
        ridge_tolerance=params.ridge_tolerance * k,
        min_distance=max(1, int(round(params.min_distance * k))),
        min_area=int(round(params.min_area * k * k)),
        lobe_gap=params.lobe_gap * k,
    )
