"""Preprocessing (deterministic, cached once per image) and augmentation (random, training only).

`Preprocess` is the source study's grayscale + CLAHE step, plus an optional background white
balance (smears from other labs and cameras differ first in their background's colour) and an
optional Reinhard colour normalisation, each part switchable. The same object
is stored in every checkpoint so training, evaluation and prediction see identical inputs.
Augmentation pipelines are albumentations objects built from config; image and mask always pass
through the same call, so they stay aligned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import albumentations as A
import cv2
import numpy as np
import torch


@dataclass(frozen=True)
class Preprocess:
    grayscale: bool = False
    clahe: bool = True
    clip_limit: float = 2.0
    tile_grid: int = 8
    # scale each channel so the background (the brightest white_balance_share of pixels) becomes neutral
    # grey-white at white_balance_level
    white_balance: bool = False
    white_balance_share: float = 0.1
    white_balance_level: float = 235.0
    # colour normalisation: null or `reinhard` (each image's LAB mean / std mapped to stain_target:
    # ((L mean, L std), (a mean, a std), (b mean, b std)) in OpenCV's 8-bit LAB)
    stain_norm: str | None = None
    stain_target: tuple[tuple[float, float], ...] = ((198.0, 54.0), (138.0, 15.0), (141.0, 17.0))

    @classmethod
    def from_config(cls, cfg: Mapping | None) -> Preprocess:
        if cfg is None:
            return cls()
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"data.preprocess: unknown keys {sorted(unknown)}; expected {sorted(cls.__dataclass_fields__)}")
        values = dict(cfg)
        if "stain_target" in values:  # a config's / JSON's nested lists: the tuples the dataclass compares and hashes
            try:
                values["stain_target"] = tuple((float(m), float(sd)) for m, sd in values["stain_target"])
            except (TypeError, ValueError) as err:
                raise ValueError(f"data.preprocess.stain_target={values['stain_target']!r}: expected three [mean, std] pairs "
                                 "(L, a, b)") from err
        out = cls(**values)
        out.check()
        return out

    def check(self) -> None:
        """One error naming the key, before any image is read."""
        if self.stain_norm not in STAIN_NORMS:
            raise ValueError(f"data.preprocess.stain_norm={self.stain_norm!r}: expected one of {list(STAIN_NORMS)}")
        if not 0.0 < float(self.white_balance_share) <= 1.0:
            raise ValueError(f"data.preprocess.white_balance_share={self.white_balance_share!r}: expected a share in (0, 1]")
        if not 0.0 < float(self.white_balance_level) <= 255.0:
            raise ValueError(f"data.preprocess.white_balance_level={self.white_balance_level!r}: expected a level in (0, 255]")
        target = self.stain_target
        if len(target) != 3 or not all(0.0 <= m <= 255.0 and 0.0 < sd <= 255.0 for m, sd in target):
            raise ValueError(f"data.preprocess.stain_target={target!r}: expected three [mean, std] pairs (L, a, b) in "
                             "OpenCV's 8-bit LAB: means in [0, 255], spreads in (0, 255]")

    def to_dict(self) -> dict:
        """Plain values (lists, not tuples) for a checkpoint's data_info, hparams.yaml and export.json."""
        return {**asdict(self), "stain_target": [list(p) for p in self.stain_target]}

    @classmethod
    def same(cls, a: Mapping | None, b: Mapping | None) -> bool:
        """Whether two `data.preprocess` nodes do the same thing: a key a checkpoint predates (e.g.
        `stain_norm`) counts as its default, so older checkpoints are not reported as different."""
        try:
            return cls.from_config(a) == cls.from_config(b)
        except (TypeError, ValueError):
            return a == b

    @classmethod
    def same_setting(cls, key: str, a: object, b: object) -> bool:
        """Whether a checkpoint's input setting (`data_info[key]`) matches another's: `preprocess`
        through `same`, anything else as is. One comparison for evaluate's data check and init_from."""
        return cls.same(a, b) if key == "preprocess" else a == b

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """RGB uint8 HxWx3 -> uint8 HxWxC (C = 1 after grayscale, else 3)."""
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"Preprocess expects HxWx3 uint8 RGB, got {rgb.dtype} {rgb.shape}")
        if self.white_balance:
            rgb = white_balance(rgb, self.white_balance_share, self.white_balance_level)
        if self.stain_norm == "reinhard":
            rgb = reinhard(rgb, self.stain_target)
        clahe = cv2.createCLAHE(clipLimit=float(self.clip_limit), tileGridSize=(self.tile_grid, self.tile_grid)) if self.clahe else None
        if self.grayscale:
            grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
            if clahe is not None:
                grey = clahe.apply(grey)
            return grey[..., None]
        if clahe is None:
            return rgb
        # CLAHE on lightness only, so stain colour (hue) is kept
        lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
        lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
        return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


@dataclass(frozen=True)
class StackedPreprocess:
    """Several preprocessings of one image, stacked along the channels (RGB 3 + grey 1 = 4): the input of a
    segmentation ensemble whose members were trained on different inputs (wbc.ensemble), so resizing, tiling
    and scale search treat it as one image and the ensemble hands each member its own channels."""

    parts: tuple[Preprocess, ...]

    @property
    def channels(self) -> int:
        return sum(p.channels for p in self.parts)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return np.concatenate([p(rgb) for p in self.parts], axis=-1)


def model_input(info: Mapping) -> Preprocess | StackedPreprocess:
    """What a model takes from an RGB image, from its data_info: its preprocessing, or for an ensemble of members
    trained on different inputs (data_info.input_groups) every one of them stacked."""
    groups = info.get("input_groups")
    return StackedPreprocess(tuple(Preprocess.from_config(g) for g in groups)) if groups else Preprocess.from_config(info.get("preprocess"))


def white_balance(rgb: np.ndarray, share: float = Preprocess.white_balance_share, level: float = Preprocess.white_balance_level) -> np.ndarray:
    """Von Kries / white-patch balance on the background: each channel is scaled so that the mean of
    the brightest `share` of pixels (by luminance: slide background in a smear or a cell crop) becomes
    `level` in every channel. A yellowish or lavender background turns neutral while the stain's
    contrast between nucleus and cytoplasm is kept."""
    lum = rgb.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])
    cut = np.quantile(lum, 1.0 - share)
    bright = rgb[lum >= cut].astype(np.float32)
    bg = np.maximum(bright.mean(axis=0), 1.0)
    out = rgb.astype(np.float32) * (level / bg)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


STAIN_NORMS = (None, "reinhard")
# per-image (mean, std) of OpenCV's 8-bit L, a, b, averaged over segmentation_wbc dataset1 (yellowish)
# and dataset2 (pink): a middle colour rather than one lab's (data.preprocess.stain_target's default)
REINHARD_TARGET = Preprocess.stain_target


def reinhard(rgb: np.ndarray, target: Sequence[Sequence[float]] = REINHARD_TARGET) -> np.ndarray:
    """Reinhard et al. (2001) colour transfer: each LAB channel's mean and spread mapped to the
    target's, so a smear's overall colour cast and contrast match whatever the lab or camera. A flat
    channel (std 0) is only shifted."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    for c, (mean, std) in enumerate(target):
        ch = lab[..., c]
        s = float(ch.std())
        lab[..., c] = (ch - float(ch.mean())) * (std / s if s > 1e-3 else 1.0) + mean
    return cv2.cvtColor(np.clip(lab + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


# albumentations transforms that need three colour channels (they fail deep inside on grey input)
COLOUR_ONLY = frozenset({"HEStain", "RGBShift", "HueSaturationValue", "ChannelShuffle", "ToSepia", "ChromaticAberration"})


def check_colour_transforms(named: Mapping[str, object] | Sequence[object], grayscale: bool, key: str) -> None:
    """One clear error for a colour-only augmentation (e.g. the robust preset's Macenko `stain`)
    on grey input, naming the entry to drop."""
    if not grayscale:
        return
    items = named.items() if isinstance(named, Mapping) else enumerate(named)
    for name, t in items:
        if t is not None and type(t).__name__ in COLOUR_ONLY:
            raise ValueError(
                f"{key}.{name} ({type(t).__name__}) needs RGB input, but data.preprocess.grayscale=true: "
                f"drop it (~{key}.{name}) or keep colour"
            )


def study_rotation(angles: Sequence[float] = (30, 45, 60), p: float = 0.5, border_mode: int = cv2.BORDER_REFLECT_101) -> A.BasicTransform:
    """The source study's rotation: one of +-30/45/60 degrees (not a continuous range)."""
    choices = [A.Rotate(limit=(s * a, s * a), border_mode=border_mode, p=1.0) for a in angles for s in (-1, 1)]
    return A.OneOf(choices, p=p)


def study_zoom(zoom: float = 0.25, p: float = 0.5, border_mode: int = cv2.BORDER_REFLECT_101) -> A.BasicTransform:
    """Keras-style `zoom_range=0.25`: scale in [1 - zoom, 1 + zoom]."""
    return A.Affine(scale=(1.0 - zoom, 1.0 + zoom), border_mode=border_mode, p=p)


def build_pipeline(transforms: Sequence[A.BasicTransform] | None, image_size: int | Sequence[int] | None) -> A.Compose:
    """Augmentations (may be empty) followed by the resize every split shares."""
    ops = list(transforms or [])
    if image_size is not None:
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        ops.append(A.Resize(h, w, interpolation=cv2.INTER_AREA, mask_interpolation=cv2.INTER_NEAREST))
    return A.Compose(ops)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWxC -> float CxHxW in [0, 1]."""
    if image.ndim == 2:
        image = image[..., None]
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)
