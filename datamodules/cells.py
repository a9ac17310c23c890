"""From an image and a nucleus mask (true or predicted) to one fixed-size crop per cell.

Shared by the classification DataModule (ground-truth masks), the pipeline scoring and
predict.py (predicted masks), so a crop is made the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from datamodules.nuclei import (
    Instance,
    InstanceParams,
    extract_instances,
    instance_crops,
    instances_from_labels,
    union_instance,
)


@dataclass(frozen=True)
class CropSpec:
    """How cells are cut out. `mode`: `instances` (one crop per nucleus; fields with several
    cells) or `single` (one crop around all nucleus pixels; single-cell datasets whose nucleus
    lobes may be disconnected). `size` is the ROI side in original pixels (None = whole image)."""

    size: int | None = 96
    image_size: int = 64
    mode: str = "instances"
    masked: bool = False
    center: str = "bbox"
    instance_params: InstanceParams = field(default_factory=InstanceParams)

    @classmethod
    def from_config(cls, cfg: Mapping | None) -> CropSpec:
        cfg = dict(cfg or {})
        cfg.pop("transforms", None)
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"data.crops: unknown keys {sorted(unknown)}; expected {sorted(cls.__dataclass_fields__)}")
        params = cfg.pop("instance_params", None) or {}
        if not isinstance(params, InstanceParams):
            bad = set(params) - set(InstanceParams.__dataclass_fields__)
            if bad:
                raise ValueError(f"data.crops.instance_params: unknown keys {sorted(bad)}; expected {sorted(InstanceParams.__dataclass_fields__)}")
            params = InstanceParams(**params)
        spec = cls(instance_params=params, **cfg)
        if spec.mode not in ("instances", "single"):
            raise ValueError(f"data.crops.mode must be 'instances' or 'single', got {spec.mode!r}")
        return spec

    def to_dict(self) -> dict:
        return asdict(self)


def find_cells(nucleus: np.ndarray, spec: CropSpec, instance_map: np.ndarray | None = None) -> tuple[np.ndarray, list[Instance]]:
    """Label map + instances: from a given instance map, or by opening/watershed of the mask."""
    if instance_map is not None and spec.mode == "instances":
        return instances_from_labels(instance_map, spec.instance_params.min_area)
    if spec.mode == "single":
        return union_instance(nucleus, spec.instance_params)
    return extract_instances(nucleus, spec.instance_params)


def cell_crops(image: np.ndarray, nucleus: np.ndarray, spec: CropSpec, instance_map: np.ndarray | None = None) -> tuple[np.ndarray, list[Instance], list[np.ndarray]]:
    """(label map, instances, crops) for one image; crops are uint8 at the ROI size (resized later)."""
    labels, instances = find_cells(nucleus, spec, instance_map)
    if not instances:
        return labels, instances, []
    size = spec.size or max(image.shape[:2])
    crops = instance_crops(image, labels, instances, size, masked=spec.masked, center=spec.center)
    return labels, instances, crops
