"""Classification data: one crop per ground-truth nucleus, on the shared data layer.

A crop inherits its image's split, class and group, so no crop of a test image reaches
training. Imbalance: class-balanced sampling (`data.sampler=balanced`) and/or class weights
(`class_weights()`, used by the weighted/focal losses).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from datamodules.base import CachedSample, WBCDataModule
from datamodules.sampling import SeededAugmentation
from wbc.cells import CropSpec, cell_crops
from wbc.data.manifest import NUCLEUS, load_instances
from wbc.data.transforms import build_pipeline, check_colour_transforms, to_tensor


@dataclass(frozen=True)
class Crop:
    image: np.ndarray  # uint8 ROI
    label: int
    sample_id: str
    group: str | None
    cell: int  # instance label within its image


class CropDataset(SeededAugmentation, Dataset):
    def __init__(self, crops: list[Crop], transforms, image_size: int, seed: int = 0) -> None:
        self.crops = crops
        self.pipeline = build_pipeline(transforms, image_size)
        self.augment = bool(transforms)
        self.seed = seed
        self.class_labels = [c.label for c in crops]

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        i = self.resolve(idx)
        c = self.crops[i]
        return {"image": to_tensor(self.pipeline(image=c.image)["image"]), "label": c.label, "index": i}


class ClassificationDataModule(WBCDataModule):
    def __init__(self, *args: Any, train_crop: int | None = None, **kwargs: Any) -> None:
        if train_crop is not None:  # a segmentation setting: taking it silently would mean nothing
            raise ValueError(f"data.train_crop={train_crop}: random patches are for segmentation training; "
                             "a classifier's input is the cell crop (data.crops.size / diameters / image_size)")
        super().__init__(*args, **kwargs)
        transforms = self.crops_cfg.get("transforms")
        self.crop_spec = CropSpec.from_config(self.crops_cfg)
        check_colour_transforms(transforms or [], self.preprocess.grayscale, "data.crops.transforms")
        if isinstance(transforms, Mapping):
            transforms = [t for t in transforms.values() if t is not None]
        self.crop_transforms = list(transforms or [])

    def crops_for(self, items: list[CachedSample]) -> list[Crop]:
        out = []
        for it in items:
            inst = load_instances(it.sample)
            _, instances, crops = cell_crops(it.image, it.labels == NUCLEUS, self.crop_spec, self.postprocess, inst)
            if not crops:
                raise ValueError(f"{it.sample.mask}: no nucleus found after opening/min-area filtering; cannot crop a cell from {it.sample.image}")
            out.extend(Crop(c, it.label, it.sample.id, it.sample.group, ins.label) for c, ins in zip(crops, instances))
        return out

    def make_dataset(self, split: str, items: list[CachedSample]) -> Dataset:
        transforms = self.crop_transforms if split == "train" else None
        return CropDataset(self.crops_for(items), transforms, self.crop_spec.image_size, self.sampler_seed)

    def class_weights(self) -> list[float]:
        """Inverse-frequency weights over training crops, normalised to mean 1."""
        self.setup()
        counts = np.bincount(self.dataset_labels("train"), minlength=len(self.classes or []))
        weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max(1, len(counts)), 0.0)
        return weights.tolist()

    def data_info(self) -> dict:
        info = super().data_info()
        info["crops"] = self.crop_spec.to_dict()
        info["image_size"] = self.crop_spec.image_size
        return info

