"""Appearance: is a new image's colour like the images a model was trained on?

Models trained on one lab's smears fail on another lab's (README "Models that travel": the 4-class
classifier fell from ~0.8 to ~0.3 macro-F1 across sources) while their probabilities stay confident,
so calibration cannot warn. What differs between sources is the stain and the light (a yellowish vs
white background, pale pink vs purple nuclei). Training records in each checkpoint
(`data_info.appearance`) a profile of its training images: twelve colour measurements an image, their
mean and a shrunk inverse covariance (Ledoit-Wolf), and a distance threshold that `coverage` of the
validation images stay under; inference flags an image beyond it ("unlike the training images") and
every cell in it for review (wbc.review).

The measurements are the chromaticity (r, g of r+g+b) of five brightness bands of the image's pixels
(the darkest 5 %: nucleus stain; the brightest 20 %: background) and two brightness ratios, so a
brighter or darker exposure of the same slide (an exposure change x0.8-1.2) does not move them, while
another stain or white balance does. They describe a whole image as the training images were: a crop of
a cell compared with profiles of full fields (or the reverse) looks unlike them too. Pure numpy / OpenCV.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import cv2
import numpy as np

log = logging.getLogger("wbc")

# pixel brightness bands (fractions of the image's pixels, darkest first)
BANDS = (0.0, 0.05, 0.2, 0.5, 0.8, 1.0)
_BAND_NAMES = ("p0_5", "p5_20", "p20_50", "p50_80", "p80_100")
FEATURES: tuple[str, ...] = tuple(f"{c}_{b}" for b in _BAND_NAMES for c in ("r", "g")) + (
    "log_brightness_p0_5_vs_p80_100", "log_brightness_p20_50_vs_p80_100")
# images are measured at most this many px on their long side (the statistics do not need more)
MEASURE_SIDE = 256
# default share of validation images that stay under the threshold (train.yaml appearance_coverage)
COVERAGE = 0.99
# training images measured at most (a seeded sample of bigger training splits)
MAX_IMAGES = 2000


def image_features(rgb: np.ndarray) -> np.ndarray:
    """The FEATURES of one RGB uint8 image (HxWx3)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"image_features: expected an HxWx3 RGB image, got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    f = MEASURE_SIDE / max(h, w)
    if f < 1:
        rgb = cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    x = rgb.reshape(-1, 3).astype(np.float64) + 1.0  # +1: a black pixel has a defined chromaticity
    order = np.argsort(x.sum(1), kind="stable")
    n = len(order)
    parts = [x[order[int(a * n) : max(int(a * n) + 1, int(b * n))]] for a, b in zip(BANDS, BANDS[1:])]
    chroma = [(p.sum(0) / p.sum())[:2] for p in parts]
    brightest = parts[-1].sum(1).mean()
    ratios = [np.log(parts[0].sum(1).mean() / brightest), np.log(parts[2].sum(1).mean() / brightest)]
    return np.concatenate(chroma + [ratios])


@dataclass(frozen=True)
class AppearanceProfile:
    """Mean and precision (inverse shrunk covariance) of the training images' FEATURES, and the
    Mahalanobis distance beyond which an image is unlike them."""

    mean: np.ndarray
    precision: np.ndarray
    threshold: float
    images: int
    coverage: float

    @classmethod
    def fit(cls, train: np.ndarray, val: np.ndarray | None = None, coverage: float = COVERAGE) -> AppearanceProfile:
        """From the training images' feature rows; the threshold is the `coverage` quantile of the
        validation images' distances (the training ones' when there are none, which sit closer), and
        never below the chi quantile a Gaussian profile would give (tiny validation splits)."""
        from scipy.stats import chi2
        from sklearn.covariance import LedoitWolf

        if not 0 < coverage < 1:
            raise ValueError(f"appearance_coverage={coverage!r}: expected a share in (0, 1)")
        train = np.asarray(train, dtype=np.float64)
        if train.ndim != 2 or train.shape[1] != len(FEATURES) or len(train) < 2:
            raise ValueError(f"appearance: expected at least 2 rows of {len(FEATURES)} features, got shape {train.shape}")
        lw = LedoitWolf().fit(train)
        profile = cls(lw.location_, np.linalg.pinv(lw.covariance_), 0.0, len(train), float(coverage))
        held = np.asarray(val, dtype=np.float64) if val is not None and len(val) else train
        threshold = max(float(np.quantile(profile.distances(held), coverage)), float(np.sqrt(chi2.ppf(coverage, len(FEATURES)))))
        return cls(profile.mean, profile.precision, threshold, len(train), float(coverage))

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each feature row to the training images."""
        d = np.atleast_2d(features) - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.precision, d), 0.0))

    def distance(self, rgb: np.ndarray) -> float:
        return float(self.distances(image_features(rgb))[0])

    def to_dict(self) -> dict:
        """Plain lists and numbers: it travels in the checkpoint's data_info and export.json."""
        return {"features": list(FEATURES), "mean": self.mean.tolist(), "precision": self.precision.tolist(),
                "threshold": self.threshold, "images": self.images, "coverage": self.coverage}

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "data_info.appearance") -> AppearanceProfile:
        """Back from to_dict; a malformed entry is one error naming `where` (a profile measured with
        other features, from another version, asks for a retrain rather than a wrong distance)."""
        try:
            if list(d["features"]) != list(FEATURES):
                raise ValueError(f"features {list(d['features'])} are not this version's {list(FEATURES)}")
            mean = np.asarray(d["mean"], dtype=np.float64)
            precision = np.asarray(d["precision"], dtype=np.float64)
            threshold, images, coverage = float(d["threshold"]), int(d["images"]), float(d["coverage"])
            k = len(FEATURES)
            if mean.shape != (k,) or precision.shape != (k, k) or not (np.isfinite(mean).all() and np.isfinite(precision).all()):
                raise ValueError(f"expected a mean of {k} and a {k}x{k} precision of finite numbers")
            if not threshold > 0:
                raise ValueError(f"threshold={threshold!r}: expected a positive distance")
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: not an appearance profile ({err}); retrain, or leave the entry out to skip the check") from None
        return cls(mean, precision, threshold, images, coverage)


def profile_of(data_info: Mapping | None, where: str) -> AppearanceProfile | None:
    """The profile a checkpoint's data_info carries (None for checkpoints trained before it was recorded)."""
    entry = (data_info or {}).get("appearance")
    return AppearanceProfile.from_dict(entry, where) if entry else None


def fit_profile(train_images: Iterable[np.ndarray], val_images: Iterable[np.ndarray], coverage: float = COVERAGE) -> dict | None:
    """`data_info.appearance` of a training run: the profile of its training images, thresholded on its
    validation images; None (logged) with fewer than 2 training images."""
    train = [image_features(im) for im in train_images]
    if len(train) < 2:
        log.info("appearance: fewer than 2 training images; no appearance profile recorded")
        return None
    val = [image_features(im) for im in val_images]
    return AppearanceProfile.fit(np.array(train), np.array(val) if val else None, coverage).to_dict()


def training_appearance(datamodule, coverage: float = COVERAGE, seed: int = 0) -> dict | None:
    """fit_profile of a DataModule's training split (a seeded sample of MAX_IMAGES where bigger),
    thresholded on its validation split; the raw RGB images, before any preprocessing, since the check
    is about where an image comes from."""
    from wbc.data.imageio import read_rgb

    ids = datamodule.split_ids()
    by_id = datamodule.load_manifest().by_id()
    train = list(ids["train"])
    if len(train) > MAX_IMAGES:
        train = [train[i] for i in sorted(np.random.default_rng(seed).choice(len(train), MAX_IMAGES, replace=False))]

    def images(split_ids):
        for sid in split_ids:
            yield read_rgb(by_id[sid].image, by_id[sid].max_pixels)

    return fit_profile(images(train), images(ids.get("val") or []), coverage)
