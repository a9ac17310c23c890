"""Scale: how large a nucleus looks to the network, recorded at training and matched at inference.

Training records in the segmenter checkpoint (`data_info.scale`, :func:`training_scale`) the typical
nucleus diameter **in network pixels** measured on the training masks (median and quartiles of the
equivalent diameter), the training images' typical size, and the network pixel size in µm when the data
config states `data.pixel_size_um`; with several training sources (a combined data config) the same per
source (`sources`), since each set was resized by its own factor and a pooled median matches none of them.
Inference puts a new image at that scale (Cellpose's diameter idea) with a factor `f` (image px -> network
px), found from (first that applies): `scale=<f>`, `diameter=<nucleus diameter in image px>`,
`pixel_size_um=<image pixel size>`, or `scale=auto`: a coarse pass measures the nuclei
(:func:`typical_diameter`) at a ladder of candidate factors and keeps the smallest whose nuclei fit a
training source's diameter, then refines it by the ratio to that source's.
Images no larger than the training images (at `auto`) keep the old single-pass path (the whole image
resized to the network square), so figures on the training sets do not change. Pure: no Lightning.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np

log = logging.getLogger("wbc")

# images up to this much larger than the training images keep the single-pass (squash) path
SINGLE_PASS_TOLERANCE = 1.25
# candidate factors of the automatic scale search, relative to the training resize factor
AUTO_LADDER = (0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0)
# a candidate "fits" when its nuclei are within this |log ratio| of the training diameter (x/÷ 1.35)
AUTO_TOLERANCE = math.log(1.35)
# a given factor (scale=, diameter=, pixel_size_um=) more than this many times off the training resize factor,
# either way, is refused: nuclei would be under a network pixel or span tiles, and the post-processing lengths
# (x 1 / factor) made a 5001 px opening that ran for minutes (scale=0.001)
MAX_RESCALE = 32.0
# nor may it make the image at the network's scale larger than this (two float32 maps of it are summed)
MAX_SCALED_PIXELS = 64_000_000
# scale=auto leaves out nuclei under this fraction of the area-weighted median diameter (specks, cut pieces)
FRAGMENT_FRACTION = 0.25


def equivalent_diameters(labels: np.ndarray) -> np.ndarray:
    """Equivalent diameter sqrt(4 A / pi) of every instance of an integer label map."""
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    return np.sqrt(4 * areas / math.pi) if len(ids) else np.zeros(0)


def typical_diameter(diameters: np.ndarray) -> float:
    """Median nucleus diameter leaving out specks: nuclei under FRAGMENT_FRACTION of the area-weighted
    median (the diameter of the nucleus a typical nucleus *pixel* belongs to). Fragments (a nucleus cut
    by the window, specks) can halve a plain median (dataset2 mosaics: 8 px among 80 px nuclei), and an
    area-weighted median alone follows merged neighbours (synthetic fields at a coarse factor)."""
    d = np.sort(np.asarray(diameters, dtype=np.float64))
    if not len(d):
        return float("nan")
    cum = np.cumsum(d**2)
    weighted = d[np.searchsorted(cum, 0.5 * cum[-1])]
    return float(np.median(d[d >= FRAGMENT_FRACTION * weighted]))


def training_scale(label_maps: Iterable[tuple[np.ndarray, tuple[int, int]]], image_size: int, pixel_size_um: float | None = None) -> dict:
    """`data_info.scale` from (instance label map at original resolution, (H, W)) pairs of the
    training split: nucleus diameters in network pixels (the image is resized to image_size^2, so a
    length scales by sqrt(sx * sy)), the median image size, and the network pixel size in µm."""
    diam, sizes, factors = [], [], []
    for labels, (h, w) in label_maps:
        f = math.sqrt((image_size / h) * (image_size / w))
        diam.extend((equivalent_diameters(labels) * f).tolist())
        sizes.append((h, w))
        factors.append(f)
    if not sizes:
        return {}
    d = np.asarray(diam) if diam else np.zeros(1)
    f_med = float(np.median(factors))
    return {
        "nucleus_diameter": float(np.median(d)),
        "nucleus_diameter_q25_q75": [float(np.percentile(d, 25)), float(np.percentile(d, 75))],
        "n_nuclei": len(diam),
        "source_size": [int(np.median([s[0] for s in sizes])), int(np.median([s[1] for s in sizes]))],
        "resize_factor": f_med,
        "network_pixel_size_um": (float(pixel_size_um) / f_med) if pixel_size_um else None,
    }


def measure_training_scale(datamodule, pixel_size_um: float | None = None) -> dict:
    """`training_scale` of a DataModule's training split: ground-truth instance maps where the data
    has them, else 8-connected components of the nucleus mask; per source too (`sources`,
    `datamodule.source_of`: each part of a combined data config) when there are several."""
    import cv2

    from wbc.data.manifest import NUCLEUS, load_instances

    ids = list(datamodule.split_ids()["train"])
    by_source: dict[str, list[tuple[np.ndarray, tuple[int, int]]]] = {}
    for sid, it in zip(ids, datamodule.cached(ids), strict=True):
        if it.labels is None:
            continue
        inst = load_instances(it.sample)
        if inst is None:
            inst = cv2.connectedComponents((it.labels == NUCLEUS).astype(np.uint8), connectivity=8)[1]
        by_source.setdefault(datamodule.source_of(sid), []).append((inst, it.labels.shape[:2]))
    size = int(datamodule.image_size)
    out = training_scale((p for maps in by_source.values() for p in maps), size, pixel_size_um)
    if len(by_source) > 1:
        out["sources"] = {name: training_scale(maps, size, pixel_size_um) for name, maps in by_source.items()}
    return out


def scale_targets(sc: dict) -> list[tuple[str | None, float, float]]:
    """(source, median nucleus diameter in network px, resize factor) that scale=auto may match: one
    per training source when data_info.scale has `sources`, else the pooled one."""
    def target(name: str | None, s: dict) -> tuple[str | None, float, float] | None:
        d = s.get("nucleus_diameter")
        return (name, float(d), float(s.get("resize_factor") or 0)) if d else None

    found = [t for name, s in (sc.get("sources") or {}).items() if (t := target(name, s))]
    pooled = target(None, sc)
    return found or ([pooled] if pooled else [])


def nearest_target(diameter_network_px: float, targets: list[tuple[str | None, float, float]]) -> tuple[str | None, float, float]:
    """The scale target (`scale_targets`) whose median nucleus is nearest, on a log scale, to a typical
    nucleus of `diameter_network_px` network px."""
    return min(targets, key=lambda t: abs(math.log(diameter_network_px / t[1])))


def fits_training_size(shape: tuple[int, int], info: dict) -> bool:
    """Whether an image (H, W) is no larger than the training images (x SINGLE_PASS_TOLERANCE):
    then scale=auto keeps the single pass every figure on the training sets was measured with."""
    tile = int(info.get("image_size") or 128)
    src = max((info.get("scale") or {}).get("source_size") or [tile])
    return max(shape) <= SINGLE_PASS_TOLERANCE * max(tile, src)


@dataclass(frozen=True)
class ScaleOptions:
    """What the user asked for (predict.py / the web app: `scale`, `diameter`, `pixel_size_um`,
    `tile_overlap`, `tile_batch`)."""

    scale: str | float | None = "auto"
    diameter: float | None = None
    pixel_size_um: float | None = None
    overlap: float = 0.25
    batch: int = 8

    def __post_init__(self) -> None:
        """Refused here, naming the key: a negative tile_batch made an empty tile loop and a NaN map (no cells, no error)."""
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise ValueError(f"tile_batch={self.batch!r}: expected a whole number of tiles >= 1")
        if isinstance(self.overlap, bool) or not isinstance(self.overlap, (int, float)) or not 0 <= self.overlap < 1:
            raise ValueError(f"tile_overlap={self.overlap!r}: expected a fraction of the tile in [0, 1)")
        for key, value in (("diameter", self.diameter), ("pixel_size_um", self.pixel_size_um)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf):
                raise ValueError(f"{key}={value!r}: expected a finite positive number (or leave it unset)")
        if self.scale not in (None, "auto", "single"):
            given_factor(self.scale)

    @classmethod
    def from_config(cls, cfg: Mapping) -> ScaleOptions:
        """From an entry point's top-level keys (conf/inference/scale.yaml: scale, diameter, pixel_size_um,
        tile_overlap, tile_batch), absent ones at their defaults: the one reading of that file."""
        default = cls()
        return cls(cfg.get("scale", default.scale), cfg.get("diameter"), cfg.get("pixel_size_um"),
                   cfg.get("tile_overlap", default.overlap), cfg.get("tile_batch", default.batch))


def given_factor(scale: object) -> float:
    """`scale=<factor>` as a finite positive float, else one error naming the key."""
    try:
        f = float(scale) if not isinstance(scale, bool) else math.nan  # scale=true is not a factor of 1
    except (TypeError, ValueError):
        f = math.nan
    if not 0 < f < math.inf:
        raise ValueError(f"scale={scale!r}: expected auto, single or a finite positive factor (image px -> network px)")
    return f


def within_limits(choice: ScaleChoice, shape: tuple[int, int], training_factor: float) -> ScaleChoice:
    """A given factor, unless it is more than MAX_RESCALE times off the training factor or makes the image over
    MAX_SCALED_PIXELS at the network's scale: then one error naming what was given (choice.how)."""
    f, (h, w) = float(choice.factor), shape
    ratio = f / training_factor
    if not 1 / MAX_RESCALE <= ratio <= MAX_RESCALE:
        raise ValueError(f"{choice.how}: factor {f:.4g} puts the image at {ratio:.3g} x the training scale (factor {training_factor:.4g}); "
                         f"expected within 1/{MAX_RESCALE:g} to {MAX_RESCALE:g} times: check the value, or use scale=auto")
    if h * w * f * f > MAX_SCALED_PIXELS:
        raise ValueError(f"{choice.how}: the {w} x {h} image would be {round(w * f)} x {round(h * f)} px at the network's scale, over "
                         f"{MAX_SCALED_PIXELS / 1e6:g} MP; expected a smaller factor, or a smaller image")
    return choice


@dataclass(frozen=True)
class ScaleChoice:
    factor: float | None  # image px -> network px; None = the single-pass path (resize to the square)
    how: str  # what decided it, for the outputs
    nucleus_diameter_px: float | None = None  # measured / given nucleus diameter in image px
    source: str | None = None  # the training source whose nuclei scale=auto matched (several-source segmenters)
    resize_factor: float | None = None  # that source's training resize factor (image px -> network px)

    def to_dict(self) -> dict:
        return asdict(self)


def choose_scale(
    shape: tuple[int, int],
    info: dict,
    scale: str | float | None = "auto",
    diameter: float | None = None,
    pixel_size_um: float | None = None,
    measure: Callable[[float], np.ndarray] | None = None,
) -> ScaleChoice:
    """The factor for an image of `shape` (H, W) given the segmenter's data_info. `measure(f)`
    returns nucleus diameters (image px) found at factor f (used by scale=auto)."""
    sc = dict(info.get("scale") or {})
    target = sc.get("nucleus_diameter")
    if scale == "single":
        return ScaleChoice(None, "single pass (scale=single): the whole image resized to the network square")
    trained = float(sc.get("resize_factor") or int(info.get("image_size") or 128) / max(shape))
    if scale not in (None, "auto"):
        f = given_factor(scale)
        return within_limits(ScaleChoice(f, f"scale={f:g} (given)"), shape, trained)
    for key, value in (("diameter", diameter), ("pixel_size_um", pixel_size_um)):
        if value is not None:
            ScaleOptions(**{key: value})  # the same check, for direct calls
    if diameter is not None:
        if not target:
            raise ValueError("diameter=...: the segmenter checkpoint records no training nucleus diameter (data_info.scale); retrain or use scale=<factor>")
        if sc.get("sources"):
            # several training sources: the one whose nuclei had this size in its own image px (the least
            # resampling); the pooled median matches none of them (the case where auto's F1 fell to 0.22)
            source, t, rf = min((t for t in scale_targets(sc) if t[2] > 0), key=lambda t: abs(math.log(float(diameter) * t[2] / t[1])))
            return within_limits(ScaleChoice(t / float(diameter), f"diameter={float(diameter):g} px (given) -> training diameter of {source} {t:.1f} network px",
                                             float(diameter), source, rf), shape, rf)
        return within_limits(ScaleChoice(float(target) / float(diameter), f"diameter={float(diameter):g} px (given) -> training diameter {target:.1f} network px",
                                         float(diameter)), shape, trained)
    if pixel_size_um is not None:
        net_um = sc.get("network_pixel_size_um")
        if not net_um:
            raise ValueError("pixel_size_um=...: the training data stated no data.pixel_size_um; use diameter=<nucleus px> or scale=auto")
        return within_limits(ScaleChoice(float(pixel_size_um) / float(net_um), f"pixel_size_um={float(pixel_size_um):g} (given) / network {net_um:.3g} µm"),
                             shape, trained)
    targets = scale_targets(sc)
    if fits_training_size(shape, info) or not targets or measure is None:
        return ScaleChoice(None, "single pass: the image is no larger than the training images")
    base = trained
    found: list[tuple[float, float, float, tuple]] = []  # (|log ratio|, factor, typical diameter in image px, target)
    # an over-enlarged image splits each nucleus into pieces that can look the right size (a false
    # fixed point, seen on dataset2 mosaics): among the candidates that fit, the smallest factor wins.
    # The ladder is climbed from the smallest factor, so the first that fits is that one: the larger
    # factors, whose passes cost the most (more of the window at network size), are not measured.
    for rel in sorted(AUTO_LADDER):
        f = base * rel
        d = measure(f)
        if len(d) < 3:
            continue
        med = typical_diameter(d)
        t = nearest_target(med * f, targets)
        found.append((abs(math.log(med * f / t[1])), f, med, t))
        if found[-1][0] <= AUTO_TOLERANCE:
            break
    plausible = [c for c in found if c[0] <= AUTO_TOLERANCE]
    best = min(plausible, key=lambda c: c[1]) if plausible else min(found, default=None, key=lambda c: c[0])
    if best is None:
        log.warning("scale=auto: no nuclei found at any candidate scale; using the training resize factor %.3f", base)
        return ScaleChoice(base, "auto: no nuclei found, training resize factor")
    _, f, med, (source, t, rf) = best
    refined = t / med
    of = f" of {source}" if source else ""
    return ScaleChoice(refined, f"auto: typical nucleus {med:.1f} px at factor {f:.3f} -> {refined:.3f} (training diameter{of} {t:.1f} network px)",
                       med, source, rf or None)
