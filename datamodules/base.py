"""Shared data layer for every stage: manifest -> validated samples -> persisted splits -> cache.

The segmentation and classification DataModules differ only in what an item is; reading,
validation, splitting and the once-per-image deterministic preprocessing live here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.parts import DataParts, refuse_node_reads
from datamodules.sampling import DistributedEpochSampler, EpochSampler, ShardSampler, balanced_weights
from wbc.data.bitdepth import check_bit_depth
from wbc.data.imageio import pixel_limit
from wbc.data.manifest import Manifest, ManifestError, MaskEncoding, Sample, load_sample, read_manifest
from wbc.data.splits import SplitError, fold_ids, load_or_make_splits
from wbc.data.transforms import Preprocess, check_colour_transforms
from wbc.postprocess import PostprocessParams

log = logging.getLogger(__name__)


@dataclass
class CachedSample:
    """A sample after the deterministic part (decode, preprocess), kept in memory once."""

    sample: Sample
    label: int
    image: np.ndarray  # uint8 HxWxC, preprocessed, original resolution
    labels: np.ndarray | None  # uint8 HxW: 0 bg, 1 cytoplasm, 2 nucleus


class WBCDataModule(L.LightningDataModule):
    """Base DataModule; subclasses implement `make_dataset(split, items)`."""

    def __init__(
        self,
        root: str,
        name: str = "dataset",
        layout: str = "csv",
        csv_name: str = "labels.csv",
        classes: Sequence[str] | None = None,
        drop_classes: Sequence[str] = (),
        mask_encoding: Mapping | None = None,
        preprocess: Mapping | None = None,
        image_size: int = 128,
        target: str = "nucleus",
        train_transforms: Mapping[str, Any] | Sequence[Any] | None = None,
        splits: Mapping | None = None,
        fold: int = 0,
        train_per_class: int | None = None,
        pseudo_labels: Mapping | None = None,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        sampler: str = "none",
        sampler_seed: int = 0,
        generator: Any = None,
        require_masks: bool = True,
        crops: Mapping | None = None,
        filters: Mapping | None = None,
        postprocess: Mapping | PostprocessParams | None = None,
        single_cell: bool = False,
        max_pixels: int | None = None,
        bit_depth: int | str = "auto",
        allow_outside_root: bool = False,
        pixel_size_um: float | None = None,
        parts: Mapping[str, Mapping] | None = None,
        holdout: str | None = None,
        holdout_split: str = "test",
        part_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        if sampler not in ("none", "balanced"):
            raise ValueError(f"data.sampler must be 'none' or 'balanced', got {sampler!r}")
        if target not in ("nucleus", "multiclass"):
            raise ValueError(f"data.target must be 'nucleus' or 'multiclass', got {target!r}")
        self.root = Path(root)
        self.name = name
        self.layout, self.csv_name = layout, csv_name
        self.classes = list(classes) if classes is not None else None
        self.drop_classes = list(drop_classes or [])
        self.encoding = MaskEncoding.from_config(mask_encoding)
        self.preprocess = Preprocess.from_config(preprocess)
        self.image_size = image_size
        self.target = target
        check_colour_transforms(train_transforms or [], self.preprocess.grayscale, "data.train_transforms")
        if isinstance(train_transforms, Mapping):  # named entries from conf/augment/*.yaml
            train_transforms = [t for t in train_transforms.values() if t is not None]
        self.train_transforms = list(train_transforms or [])
        self.splits_cfg = dict(splits or {})
        self.fold = fold
        if train_per_class is not None and (isinstance(train_per_class, bool) or not isinstance(train_per_class, int) or train_per_class < 1):
            raise ValueError(f"data.train_per_class must be a positive whole number of images or null, got {train_per_class!r}")
        self.train_per_class = train_per_class
        self._budget_train: list[str] | None = None  # the drawn subset, drawn once (split_ids is called more than once)
        # self-training (wbc.data.pseudo_labels): {file: a predictions CSV, per_class: K}; labels the model's own
        self.pseudo_cfg = dict(pseudo_labels or {})
        if self.pseudo_cfg and (set(self.pseudo_cfg) != {"file", "per_class"} or train_per_class is not None):
            raise ValueError("data.pseudo_labels must be {file: <predictions CSV>, per_class: <K>} and not set together with "
                             f"data.train_per_class, got {self.pseudo_cfg!r} (train_per_class={train_per_class!r})")
        self._pseudo: dict[str, str] | None = None
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.sampler = sampler
        self.sampler_seed = sampler_seed
        self.generator = generator
        self.require_masks = require_masks
        self.crops_cfg = dict(crops or {})  # used by the classification stage
        self.filters = dict(filters or {})
        # how nucleus masks become cells (the classification stage's ground-truth crops); travels in data_info
        self.postprocess = PostprocessParams.from_config(postprocess)
        self.single_cell = bool(single_cell)
        if pixel_size_um is not None and not float(pixel_size_um) > 0:
            raise ValueError(f"data.pixel_size_um must be a positive number (µm per pixel) or null, got {pixel_size_um!r}")
        self.pixel_size_um = float(pixel_size_um) if pixel_size_um is not None else None
        self.max_pixels = pixel_limit(max_pixels, "data.max_pixels")  # null -> imageio's default; bad values fail here
        # the camera's bits per pixel (wbc.data.bitdepth); one for all parts, recorded in data_info for inference
        self.bit_depth = check_bit_depth(bit_depth, "data.bit_depth")
        self.allow_outside_root = bool(allow_outside_root)
        self.manifest: Manifest | None = None
        self.splits: dict | None = None
        # several datasets as one (datamodules.parts): each part reads itself
        if parts:  # what only a part reads, set on the combined node, would be ignored
            refuse_node_reads({"classes": classes, "filters": filters, "max_pixels": max_pixels, "allow_outside_root": allow_outside_root}, parts)
        self.parts = (DataParts(type(self), parts, holdout, fold, self.drop_classes, holdout_split, part_weights, self.splits_cfg,
                                self.bit_depth) if parts else None)
        self.cache: dict[str, CachedSample] = {}
        self.datasets: dict[str, Dataset] = {}

    # ----------------------------------------------------------------- data preparation
    def prepare_data(self) -> None:
        """Generate the embedded synthetic dataset on first use (rank 0 only)."""
        if self.parts is not None:
            self.parts.prepare_data()
            return
        if self.generator is not None:
            from wbc.data.synthetic import ensure_synthetic

            ensure_synthetic(self.root, self.generator)

    def splits_path(self) -> Path:
        cfg = self.splits_cfg
        k, seed, tf = cfg.get("k", 5), cfg.get("seed", 0), cfg.get("test_fraction", 0.3)
        folder = Path(cfg.get("dir") or self.root)
        subset = ""
        if self.drop_classes or self.filters:  # a different sample set gets its own split file
            import hashlib

            key = repr((sorted(self.drop_classes), sorted((k, str(v)) for k, v in self.filters.items())))
            subset = "_" + hashlib.sha1(key.encode()).hexdigest()[:8]
        dedup = "_dedup" if cfg.get("group_duplicates") else ""  # another split: its own file
        return folder / f"splits_{self.name}{subset}_seed{seed}_k{k}_test{round(tf * 100)}{dedup}.json"

    def load_manifest(self) -> Manifest:
        if self.manifest is None and self.parts is not None:
            self.manifest = self.parts.manifest()
            self.classes = self.manifest.classes
        if self.manifest is None:
            self.manifest = read_manifest(
                self.root, self.layout, self.csv_name, self.classes, self.drop_classes, self.require_masks, self.filters,
                allow_outside_root=self.allow_outside_root, max_pixels=self.max_pixels, bit_depth=self.bit_depth,
            )
            if self.manifest.dropped:
                log.info("data.drop_classes excluded %s", self.manifest.dropped)
            self.classes = self.manifest.classes
        return self.manifest

    def load_splits(self) -> dict:
        if self.splits is None and self.parts is not None:
            self.load_manifest()  # the merged manifest, once: it refuses parts that share an image file
            self.splits = self.parts.splits()
        if self.splits is None:
            m = self.load_manifest()
            cfg = self.splits_cfg
            names = dict(enumerate(m.classes))
            try:
                self.splits = self._load_or_make(m, cfg)
            except SplitError as err:
                raise SplitError(f"{err} (class indices: {names})") from err
            for note in self.splits.get("meta", {}).get("notes", []):
                log.warning("splits: %s (class indices: %s)", note, names)
        return self.splits

    def _load_or_make(self, m: Manifest, cfg: dict) -> dict:
        return load_or_make_splits(
            self.splits_path(),
            [s.id for s in m.samples],
            m.labels,
            m.groups if cfg.get("use_groups", True) else None,
            test_fraction=cfg.get("test_fraction", 0.3),
            k=cfg.get("k", 5),
            seed=cfg.get("seed", 0),
            user_file=cfg.get("file"),
            duplicates=self._duplicate_clusters if cfg.get("group_duplicates") else None,
        )

    def _duplicate_clusters(self) -> list[list[str]]:
        """Copies of one field (wbc.audit), kept on one side of the split (data.splits.group_duplicates)."""
        from wbc.audit.core import duplicate_clusters

        samples = self.load_manifest().by_id()
        found = duplicate_clusters(list(samples.values()))
        if found:
            log.info("splits: %d clusters of duplicate images kept on one side: %s", len(found), found)
        mixed = [{i: samples[i].class_name for i in c} for c in found if len({samples[i].class_name for i in c if i in samples}) > 1]
        if mixed:  # copies of one field under two classes: one label is wrong, and training sees both
            log.warning("splits: %d cluster(s) of copies of one field carry different classes (one label is wrong): %s", len(mixed), mixed)
        return found

    def split_ids(self) -> dict[str, list[str]]:
        train, val, test = fold_ids(self.load_splits(), self.fold)
        if self.train_per_class is not None:
            if self._budget_train is None:
                self._budget_train = self._few_per_class(train)
            train = self._budget_train
        if self.pseudo_cfg:
            if self._pseudo is None:
                from wbc.data.pseudo_labels import load_pseudo_labels

                self._pseudo = load_pseudo_labels(self.pseudo_cfg["file"], train, self.load_manifest().classes, self.pseudo_cfg["per_class"])
                log.info("data.pseudo_labels: %d of %d training images kept, labelled by %s (%s)", len(self._pseudo), len(train),
                         self.pseudo_cfg["file"], ", ".join(f"{c} {list(self._pseudo.values()).count(c)}" for c in self.load_manifest().classes))
            train = [sid for sid in train if sid in self._pseudo]
        return {"train": train, "val": val, "test": test}

    def _few_per_class(self, train: list[str]) -> list[str]:
        """data.train_per_class: that many training images per class at most, the same ones for a
        given split seed whatever the training seed (a label budget, not a training choice)."""
        by_id = self.load_manifest().by_id()
        by_class: dict[str, list[str]] = {}
        for sid in sorted(train):
            by_class.setdefault(by_id[sid].class_name, []).append(sid)
        rng = np.random.default_rng(int(self.splits_cfg.get("seed", 0)))
        kept = {c: [ids[i] for i in sorted(rng.permutation(len(ids))[: self.train_per_class])] for c, ids in sorted(by_class.items())}
        log.info("data.train_per_class=%d: %d of %d training images kept (%s)", self.train_per_class, sum(map(len, kept.values())),
                 len(train), ", ".join(f"{c} {len(v)}" for c, v in kept.items()))
        keep = {sid for ids in kept.values() for sid in ids}
        return [sid for sid in train if sid in keep]

    def encoding_of(self, sample_id: str) -> MaskEncoding:
        """The mask encoding a sample is read with: its own part's when several datasets are combined."""
        return self.parts.encoding_of(sample_id) if self.parts else self.encoding

    def source_of(self, sample_id: str) -> str:
        """Where a sample comes from, for what training records per source (the appearance profile's
        components, the training scale's entries): its part of a combined data config, else the dataset's
        name. (Splitting one dataset by its manifest `subset` as well was measured for segmentation_wbc's
        profile and not adopted: README "Appearance".)"""
        return sample_id.split("/", 1)[0] if self.parts is not None else str(self.name)

    def cached(self, ids: Sequence[str]) -> list[CachedSample]:
        """Decode + preprocess each image once; later calls reuse the arrays."""
        m = self.load_manifest()
        by_id = m.by_id()
        index = {c: i for i, c in enumerate(m.classes)}
        problems = []
        for sid in ids:
            if sid in self.cache:
                continue
            s = by_id[sid]
            try:
                rgb, labels = load_sample(s, self.encoding_of(sid))
            except ManifestError as err:
                problems.append(str(err))
                continue
            self.cache[sid] = CachedSample(s, index[s.class_name], self.preprocess(rgb), labels)
        if problems:
            shown = problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else [])
            raise ManifestError(f"{len(problems)} bad file(s) in dataset {self.name} at {self.root}: " + " | ".join(shown))
        return [self.cache[sid] for sid in ids]

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        ids = self.split_ids()
        self.cached(ids["train"] + ids["val"] + ids["test"])  # validate everything up front, one error
        for split, split_ids in ids.items():
            items = self.cached(split_ids)
            if split == "train" and self._pseudo is not None:  # the model's labels, not the manifest's
                index = {c: i for i, c in enumerate(self.load_manifest().classes)}
                items = [replace(it, label=index[self._pseudo[it.sample.id]]) for it in items]
            self.datasets[split] = self.make_dataset(split, items)

    def make_dataset(self, split: str, items: list[CachedSample]) -> Dataset:  # pragma: no cover - abstract
        raise NotImplementedError

    # ----------------------------------------------------------------- loaders
    def item_ids(self, split: str) -> list[str]:
        """The sample id of each item of a split's dataset (a crop's image, or the image itself)."""
        ds = self.datasets[split]
        if hasattr(ds, "crops"):
            return [c.sample_id for c in ds.crops]
        return [it.sample.id for it in ds.items]  # type: ignore[attr-defined]

    def dataset_labels(self, split: str) -> list[int]:
        return list(self.datasets[split].class_labels)  # type: ignore[attr-defined]

    def replicas(self) -> tuple[int, int]:
        """(world size, rank) of the attached Trainer's data-parallel strategy; (1, 0) otherwise."""
        trainer = getattr(self, "trainer", None)
        kwargs = trainer.distributed_sampler_kwargs if trainer is not None else None
        if not kwargs:
            return 1, 0
        return int(kwargs.get("num_replicas", 1)), int(kwargs.get("rank", 0))

    def draw_weights(self, split: str) -> np.ndarray | None:
        """The training draw weights: classes uniform (sampler=balanced), parts at their data.part_weights
        shares, or both: classes balanced inside each part (`balanced_weights` says why), None for neither."""
        balanced = self.sampler == "balanced"
        if self.parts is None or not self.parts.weights:
            return balanced_weights(self.dataset_labels(split)) if balanced else None
        if not balanced:
            return self.parts.item_weights(self.item_ids(split))
        parts = [self.source_of(i) for i in self.item_ids(split)]
        return balanced_weights(self.dataset_labels(split), parts, self.parts.weights)

    def _loader(self, split: str, train: bool, shard: bool = False) -> DataLoader:
        """`train`: the epoch-keyed order (a rank's shard of it under DDP). `shard`: under DDP each
        rank gets its own items, each exactly once (test, predict). Validation under DDP is left to
        Lightning's padded DistributedSampler: equal shards, which the classifier's calibration
        gathers (its full-resolution / per-crop scoring runs on rank zero over the whole split)."""
        if split not in self.datasets:
            self.setup()
        ds = self.datasets[split]
        world, rank = self.replicas()
        sampler: Sampler | None = None
        if train:  # order and augmentation keyed by (seed, epoch): reproducible and exactly resumable
            weights = self.draw_weights(split)
            if world > 1:
                sampler = DistributedEpochSampler(len(ds), world, rank, self.sampler_seed, weights)
            else:
                sampler = EpochSampler(len(ds), self.sampler_seed, weights)
        elif shard and world > 1:
            sampler = ShardSampler(len(ds), world, rank)
        return DataLoader(
            ds,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            drop_last=train and len(sampler) > self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False, shard=True)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", train=False, shard=True)

    def data_info(self) -> dict:
        """What a checkpoint must carry so prediction sees the same inputs as training."""
        return {
            "name": self.name,
            "classes": list(self.classes or []),
            "preprocess": self.preprocess.to_dict(),
            "image_size": self.image_size,
            "target": self.target,
            "single_cell": self.single_cell,
            "postprocess": self.postprocess.to_dict(),
            "bit_depth": self.bit_depth,  # predict/serve/ONNX read new images at it (wbc.inference)
        }
