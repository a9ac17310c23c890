"""Segmentation data: (image, nucleus or 3-class mask) pairs on the shared data layer."""

from __future__ import annotations

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.base import CachedSample, WBCDataModule
from datamodules.sampling import SeededAugmentation
from wbc.data.manifest import NUCLEUS
from wbc.data.transforms import build_pipeline, to_tensor


class SegmentationDataset(SeededAugmentation, Dataset):
    """Items: image float CxHxW in [0,1]; mask float 1xHxW (nucleus) or long HxW (3 classes)."""

    def __init__(self, items: list[CachedSample], transforms, image_size: int, target: str = "nucleus", seed: int = 0, crop: int | None = None) -> None:
        self.items = items
        self.pipeline = build_pipeline(transforms, image_size)
        if crop:  # patch training (nnU-Net style): full-resolution detail at the cost of a small input
            self.pipeline = A.Compose([*self.pipeline.transforms, A.RandomCrop(crop, crop)])
        self.augment = bool(transforms) or bool(crop)  # the crop alone is random too: seeded like the rest
        self.seed = seed
        self.target = target
        self.class_labels = [it.label for it in items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> dict:
        i = self.resolve(idx)
        it = self.items[i]
        out = self.pipeline(image=it.image, mask=it.labels)
        labels = out["mask"]
        if self.target == "nucleus":
            mask = torch.from_numpy((labels == NUCLEUS).astype(np.float32))[None]
        else:
            mask = torch.from_numpy(labels.astype(np.int64))
        return {"image": to_tensor(out["image"]), "mask": mask, "label": it.label, "index": i}


class SegmentationDataModule(WBCDataModule):
    """Augmentation is applied to the training split only; val/test only resize.

    `train_crop`: train on random square patches of this side cut from the `image_size` image
    (a U-Net is fully convolutional); validation, test and prediction see the whole image. On CPU
    this keeps the resolution of 256 px inputs at the per-step cost of 128 px ones."""

    def __init__(self, *args, train_crop: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if train_crop is not None and not 0 < int(train_crop) <= int(self.image_size):
            raise ValueError(f"data.train_crop={train_crop}: must be between 1 and data.image_size={self.image_size}")
        self.train_crop = int(train_crop) if train_crop else None

    def make_dataset(self, split: str, items: list[CachedSample]) -> Dataset:
        transforms = self.train_transforms if split == "train" else None
        crop = self.train_crop if split == "train" else None
        return SegmentationDataset(items, transforms, self.image_size, self.target, self.sampler_seed, crop)
