"""Appearance: is a new image's colour like the images a model was trained on?

Models trained on one lab's smears fail on another lab's (README "Models that travel": the 4-class
classifier fell from ~0.8 to ~0.3 macro-F1 across sources) while their probabilities stay confident,
so calibration cannot warn. What differs between sources is the stain and the light (a yellowish vs
white background, pale pink vs purple nuclei). Training records in each checkpoint
(`data_info.appearance`) a profile of its training images: ten colour measurements an image, and per
training source (a combined data config's parts) their mean, a shrunk inverse covariance (Ledoit-Wolf)
and a distance threshold that `coverage` of its validation images stay under; inference flags an image
beyond the threshold of every source ("unlike the training images") and every cell in it for review
(wbc.review).

The measurements need the image's nucleus mask (the ground truth at training, the segmenter's nuclei at
inference), so they describe the stain and the light rather than how much of the image a cell fills (a
cell cut out of an image compares like the image): the chromaticity (r, g of
r+g+b) of the nucleus pixels, of the brightest quarter of the other pixels (background) and of their
middle half (red cells, cytoplasm), the spread of the nucleus chromaticity, and two brightness ratios to
the background; an exposure change (x0.8-1.2) does not move them, another stain or white balance does.
Pure numpy / OpenCV.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("wbc")

FEATURES: tuple[str, ...] = (
    "nucleus_r", "nucleus_g", "background_r", "background_g", "middle_r", "middle_g", "nucleus_r_std", "nucleus_g_std",
    "log_brightness_nucleus_vs_background", "log_brightness_middle_vs_background")
# fewer nucleus pixels than this (in the sample below) and the image is not measured
MIN_NUCLEUS_PX = 10
# pixels of each region (nucleus, the rest) measured at most: an evenly strided sample of bigger ones, at
# full resolution (a resized field would blend small nuclei into their surroundings)
MAX_PIXELS = 16384
# default share of validation images that stay under the threshold: the only copy of it; train.yaml's
# `appearance_coverage: default` means this value (USE_DEFAULT), so the two can never disagree
COVERAGE = 0.99
USE_DEFAULT = "default"
# training images measured at most (a seeded sample of bigger training splits)
MAX_IMAGES = 2000


def check_coverage(value, key: str = "appearance_coverage") -> float:
    """A share in (0, 1) (`default`: COVERAGE, the config's default without a copy of the number), or one
    error naming the setting."""
    if value == USE_DEFAULT:
        return COVERAGE
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ValueError(f"{key}={value!r}: expected a share in (0, 1) (of validation images under the distance limit), "
                         f"{USE_DEFAULT} ({COVERAGE}), or null for no profile")
    return float(value)


def image_features(rgb: np.ndarray, nucleus: np.ndarray) -> np.ndarray | None:
    """The FEATURES of one RGB uint8 image (HxWx3) with its nucleus mask (HxW, nonzero = nucleus); None
    when it shows fewer than MIN_NUCLEUS_PX nucleus pixels or nothing else."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or nucleus.shape != rgb.shape[:2]:
        raise ValueError(f"image_features: expected an HxWx3 RGB image and an HxW mask, got {rgb.shape} and {nucleus.shape}")
    flat, inside = rgb.reshape(-1, 3), nucleus.reshape(-1) > 0

    def sample(idx: np.ndarray) -> np.ndarray:
        step = max(1, -(-len(idx) // MAX_PIXELS))  # ceil: at most MAX_PIXELS, spread over the whole image
        return flat[idx[::step]].astype(np.float32) + 1.0  # +1: a black pixel has a defined chromaticity

    nuc, rest = sample(np.flatnonzero(inside)), sample(np.flatnonzero(~inside))
    if len(nuc) < MIN_NUCLEUS_PX or len(rest) < 4:
        return None
    brightness = rest.sum(1)
    q25, q75 = np.quantile(brightness, [0.25, 0.75])
    background, middle = rest[brightness >= q75], rest[(brightness >= q25) & (brightness <= q75)]
    bright = background.sum(1).mean()

    def chroma(p: np.ndarray) -> np.ndarray:
        return (p.sum(0) / p.sum())[:2]

    spread = (nuc[:, :2] / nuc.sum(1, keepdims=True)).std(0)
    ratios = [np.log(nuc.sum(1).mean() / bright), np.log(middle.sum(1).mean() / bright)]
    return np.concatenate([chroma(nuc), chroma(background), chroma(middle), spread, ratios]).astype(np.float64)


@dataclass(frozen=True)
class Component:
    """One source's images: mean and precision (inverse shrunk covariance) of their FEATURES, and the
    Mahalanobis distance beyond which an image is unlike them."""

    name: str
    mean: np.ndarray
    precision: np.ndarray
    threshold: float
    images: int

    @classmethod
    def fit(cls, name: str, train: np.ndarray, val: np.ndarray | None, coverage: float) -> Component:
        """From the training images' feature rows; the threshold is the `coverage` quantile of the
        validation images' distances (the training ones' when there are none, which sit closer), and
        never below the chi quantile a Gaussian profile would give (tiny validation splits)."""
        from scipy.stats import chi2
        from sklearn.covariance import LedoitWolf

        train = np.asarray(train, dtype=np.float64)
        if train.ndim != 2 or train.shape[1] != len(FEATURES) or len(train) < 2:
            raise ValueError(f"appearance: expected at least 2 rows of {len(FEATURES)} features, got shape {train.shape}")
        lw = LedoitWolf().fit(train)
        part = cls(name, lw.location_, np.linalg.pinv(lw.covariance_), 0.0, len(train))
        held = np.asarray(val, dtype=np.float64) if val is not None and len(val) else train
        threshold = max(float(np.quantile(part.distances(held), coverage)), float(np.sqrt(chi2.ppf(coverage, len(FEATURES)))))
        return cls(name, part.mean, part.precision, threshold, len(train))

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each feature row to this source's training images."""
        d = np.atleast_2d(features) - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.precision, d), 0.0))


@dataclass(frozen=True)
class AppearanceProfile:
    """One Component per training source (a combined data config's parts; one for a single dataset): an
    image is like the training images when it is within the threshold of one of them (a single Gaussian
    over two labs would also accept the colours between them)."""

    components: tuple[Component, ...]
    coverage: float

    @classmethod
    def fit(cls, sources: Mapping[str, tuple[np.ndarray, np.ndarray | None]], coverage: float = COVERAGE) -> AppearanceProfile:
        """{source name: (training feature rows, validation feature rows or None)}."""
        coverage = check_coverage(coverage)
        return cls(tuple(Component.fit(name, tr, va, coverage) for name, (tr, va) in sources.items()), coverage)

    @property
    def images(self) -> int:
        """Training images measured; a source named by several components (an ensemble's folds, which share
        most of their images) counts with its largest."""
        most: dict[str, int] = {}
        for c in self.components:
            most[c.name] = max(most.get(c.name, 0), c.images)
        return sum(most.values())

    def nearest(self, features: np.ndarray, threshold: float | None = None) -> tuple[float, float, str]:
        """(distance, threshold, source) of the component an image's features are nearest to, relative
        to each component's threshold, or in distance alone when one `threshold` is given for all."""
        scored = [(float(c.distances(features)[0]), threshold or c.threshold, c.name) for c in self.components]
        return min(scored, key=lambda t: t[0] / t[1])

    def unlike(self, rgb: np.ndarray, nucleus: np.ndarray, threshold: float | None = None) -> bool | None:
        """Whether the image is beyond every source's threshold (or a given distance `threshold`); None
        when image_features can not measure it."""
        f = image_features(rgb, nucleus)
        if f is None:
            return None
        d, t, _ = self.nearest(f, threshold)
        return d > t

    def to_dict(self) -> dict:
        """Plain lists and numbers: it travels in the checkpoint's data_info and export.json."""
        return {"features": list(FEATURES), "coverage": self.coverage,
                "components": [{"name": c.name, "mean": c.mean.tolist(), "precision": c.precision.tolist(),
                                "threshold": c.threshold, "images": c.images} for c in self.components]}

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "data_info.appearance") -> AppearanceProfile:
        """Back from to_dict; a malformed entry is one error naming `where` (a profile measured with
        other features, from another version, asks for a retrain rather than a wrong distance)."""
        k = len(FEATURES)
        try:
            if list(d["features"]) != list(FEATURES):
                raise ValueError(f"features {list(d['features'])} are not this version's {list(FEATURES)}")
            parts = []
            for c in d["components"]:
                mean, precision = np.asarray(c["mean"], dtype=np.float64), np.asarray(c["precision"], dtype=np.float64)
                threshold = float(c["threshold"])
                if mean.shape != (k,) or precision.shape != (k, k) or not (np.isfinite(mean).all() and np.isfinite(precision).all()):
                    raise ValueError(f"expected a mean of {k} and a {k}x{k} precision of finite numbers")
                if not threshold > 0:
                    raise ValueError(f"threshold={threshold!r}: expected a positive distance")
                parts.append(Component(str(c["name"]), mean, precision, threshold, int(c["images"])))
            if not parts:
                raise ValueError("no components")
            coverage = float(d["coverage"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: not an appearance profile ({err}); retrain, or leave the entry out to skip the check") from None
        return cls(tuple(parts), coverage)


def profile_of(data_info: Mapping | None, where: str) -> AppearanceProfile | None:
    """The profile a checkpoint's data_info carries (None for checkpoints trained before it was recorded)."""
    entry = (data_info or {}).get("appearance")
    return AppearanceProfile.from_dict(entry, where) if entry else None


def merge_profiles(entries: Iterable[Mapping | None], where: str = "ensemble member data_info.appearance") -> dict | None:
    """One profile for an ensemble from its members' `data_info.appearance` entries: every member's
    components, so an image is like the training images when it is like any member's (fold models each
    saw another 80 % of the images; an RGB and a grey member may come from other runs). Identical
    components are kept once, members without a profile (older checkpoints) are passed over, and none
    with one gives None. The coverage is the first profile's (each component keeps its own threshold)."""
    profiles = [AppearanceProfile.from_dict(e, where) for e in entries if e]
    if not profiles:
        return None
    merged: list[Component] = []
    for c in (c for p in profiles for c in p.components):
        if not any(c.name == m.name and c.threshold == m.threshold and np.array_equal(c.mean, m.mean) for m in merged):
            merged.append(c)
    return AppearanceProfile(tuple(merged), profiles[0].coverage).to_dict()


Pairs = Iterable[tuple[np.ndarray, np.ndarray]]


def fit_profile(sources: Mapping[str, tuple[Pairs, Pairs]], coverage: float = COVERAGE) -> dict | None:
    """`data_info.appearance` of a training run from {source: ((RGB, nucleus mask) pairs of its training
    images, pairs of its validation images)}; a source with fewer than 2 measurable training images is left
    out (logged), and with none left there is no profile (None)."""
    fitted = {}
    for name, (train, val) in sources.items():
        rows = [f for f in (image_features(im, m) for im, m in train) if f is not None]
        if len(rows) < 2:
            log.info("appearance: %s has fewer than 2 training images with a nucleus mask to measure; left out of the profile", name)
            continue
        held = [f for f in (image_features(im, m) for im, m in val) if f is not None]
        fitted[name] = (np.array(rows), np.array(held) if held else None)
    return AppearanceProfile.fit(fitted, coverage).to_dict() if fitted else None


def training_appearance(datamodule, coverage: float = COVERAGE, seed: int = 0) -> dict | None:
    """fit_profile of a DataModule's training split (a seeded sample of MAX_IMAGES where bigger), one
    component per source (`datamodule.source_of`: each part of a combined data config), thresholded on the
    validation split: the raw RGB images
    (before any preprocessing: the check is about where an image comes from) with their ground-truth
    nucleus masks (images without one are left out)."""
    ids = datamodule.split_ids()
    train = list(ids["train"])
    if len(train) > MAX_IMAGES:
        train = [train[i] for i in sorted(np.random.default_rng(seed).choice(len(train), MAX_IMAGES, replace=False))]
    source = datamodule.source_of

    def pairs(split_ids: list[str]):
        return masked_images(datamodule, split_ids)

    names = list(dict.fromkeys(source(sid) for sid in train))
    val = list(ids.get("val") or [])
    return fit_profile({n: (pairs([i for i in train if source(i) == n]), pairs([i for i in val if source(i) == n])) for n in names}, coverage)


def masked_images(datamodule, ids: Iterable[str]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(raw RGB, ground-truth nucleus mask) of the samples `ids` of a DataModule that have a mask."""
    from wbc.data.manifest import NUCLEUS, load_sample

    by_id = datamodule.load_manifest().by_id()
    for sid in ids:
        if by_id[sid].mask is not None:
            rgb, labels = load_sample(by_id[sid], datamodule.encoding_of(sid))
            yield rgb, labels == NUCLEUS
