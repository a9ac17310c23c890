"""Dataset manifests: one in-memory description for every on-disk layout, validated up front.

Two layouts are read:
- `csv`: a folder with `labels.csv` (columns `image`, `mask`, `class_name`; optional `group`
  = patient/slide id, `instances` = nucleus instance map, `image_id`) plus the files;
- `folders`: `images/<class>/x.png` and `masks/<class>/x.<ext>` with the same stem. Images sit
  directly in their class folder with one of IMAGE_EXTENSIONS; anything else there (a sub-folder, a
  .webp, a file beside the class folders) and a class folder without images are an error, not skipped
  (hidden files such as .DS_Store, Thumbs.db and desktop.ini are ignored).

Mask values are decoded through a `MaskEncoding` taken from config, into one label map with
0 = background, 1 = cytoplasm, 2 = nucleus. Every problem found is reported in one
`ManifestError` that names the file (or key) and says what was expected; nothing is dropped
silently.

Paths: every listed file must resolve (symlinks and `..` followed) inside the data root unless
`allow_outside_root` (data.allow_outside_root), and one real file listed twice (`images/x.png` and
`images/../images/x.png`) is an error: it would otherwise land on both sides of a split. Samples
carry the data config's pixel limit (data.max_pixels) and camera bit depth (data.bit_depth), so every
reader of a sample applies them.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from wbc.data.imageio import ImageReadError, decode_raw, palette_note, read_mask, read_rgb
from wbc.data.manifest_files import path_problems
from wbc.data.orientation import describe, orientation_of
from wbc.spreadsheet import unguard_row

BACKGROUND, CYTOPLASM, NUCLEUS = 0, 1, 2
LABEL_NAMES = ("background", "cytoplasm", "nucleus")
IMAGE_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")
REQUIRED_COLUMNS = ("image", "mask", "class_name")
# what file managers leave in folders: never an image, never reported
HIDDEN_NAMES = ("thumbs.db", "desktop.ini", "ehthumbs.db")
PATH_COLUMNS = ("image", "mask", "instances")
# every column the reader looks at: a header spelled otherwise ("Group", " group") would be skipped without a word
KNOWN_COLUMNS = (*REQUIRED_COLUMNS, "instances", "group", "image_id", "subset")


class ManifestError(ValueError):
    """The dataset on disk does not match what the config says it should be."""


@dataclass(frozen=True)
class Sample:
    """One image of a dataset (paths are absolute)."""

    id: str
    image: Path
    mask: Path | None
    class_name: str
    group: str | None = None
    instances: Path | None = None
    # data.max_pixels (None = wbc.data.imageio.DEFAULT_MAX_PIXELS): applied wherever the sample is decoded
    max_pixels: int | None = field(default=None, compare=False, repr=False)
    # data.bit_depth (auto | 8..16): how a 16-bit image of it becomes 8 bits (wbc.data.bitdepth)
    bit_depth: int | str = field(default="auto", compare=False, repr=False)


@dataclass(frozen=True)
class MaskEncoding:
    """How raw mask values map to background / cytoplasm / nucleus.

    `mode="grey"`: each label lists inclusive [lo, hi] value ranges (a user's 0/255 binary mask is
    `nucleus: [[255, 255]]`, `background: [[0, 0]]`). `mode="rgb"`: each label lists RGB colours.
    A label may be absent (binary masks have no cytoplasm). Values matching no label are an error.
    """

    mode: str = "grey"
    background: Sequence[Sequence[int]] = ((0, 0),)
    cytoplasm: Sequence[Sequence[int]] = ((128, 128),)
    nucleus: Sequence[Sequence[int]] = ((255, 255),)

    @classmethod
    def from_config(cls, cfg: Mapping | None) -> MaskEncoding:
        if cfg is None:
            return cls()
        unknown = set(cfg) - {"mode", "background", "cytoplasm", "nucleus"}
        if unknown:
            raise ManifestError(f"data.mask_encoding: unknown keys {sorted(unknown)}; expected mode/background/cytoplasm/nucleus")
        mode = cfg.get("mode", "grey")
        if mode not in ("grey", "rgb"):
            raise ManifestError(f"data.mask_encoding.mode must be 'grey' or 'rgb', got {mode!r}")
        width = 2 if mode == "grey" else 3
        parts = {}
        for name in ("background", "cytoplasm", "nucleus"):
            entries = [tuple(int(v) for v in e) for e in (cfg.get(name) or [])]
            for e in entries:
                if len(e) != width:
                    raise ManifestError(
                        f"data.mask_encoding.{name}: entry {list(e)} should have {width} numbers "
                        f"({'[lo, hi] range' if mode == 'grey' else '[R, G, B] colour'})"
                    )
            parts[name] = tuple(entries)
        if not parts["nucleus"]:
            raise ManifestError("data.mask_encoding.nucleus is empty; the nucleus must have at least one value")
        # a value two classes claim would take the last one's (nucleus over cytoplasm over background) without a word
        flat = [(n, e) for n, entries in parts.items() for e in entries]
        for i, (a, ea) in enumerate(flat):
            for b, eb in flat[i + 1 :]:
                same = max(ea[0], eb[0]) <= min(ea[1], eb[1]) if mode == "grey" else ea == eb
                if a != b and same:
                    raise ManifestError(f"data.mask_encoding: {a} {list(ea)} and {b} {list(eb)} claim the same mask values; "
                                        "expected each value in one class (disjoint ranges / distinct colours)")
        return cls(mode=mode, **parts)

    def decode(self, raw: np.ndarray, where: str = "mask") -> np.ndarray:
        """Raw mask -> uint8 label map (0 bg, 1 cytoplasm, 2 nucleus); error on unknown values."""
        if self.mode == "rgb":
            if raw.ndim == 2:
                # `read_mask` stores masks whose colours are all grey (R == G == B: e.g. a black/white
                # colour code) as HxW; they are still valid colour-coded masks.
                raw = np.repeat(raw[..., None], 3, axis=2)
            if raw.ndim != 3 or raw.shape[2] != 3:
                raise ManifestError(f"{where}: expected an RGB colour-coded mask (mask_encoding.mode=rgb), got shape {raw.shape}")
            hits = lambda c: np.all(raw == np.asarray(c, dtype=raw.dtype), axis=-1)  # noqa: E731
        else:
            if raw.ndim != 2:
                raise ManifestError(f"{where}: expected a grey mask (mask_encoding.mode=grey), got shape {raw.shape}")
            hits = lambda r: (raw >= r[0]) & (raw <= r[1])  # noqa: E731
        out = np.zeros(raw.shape[:2], dtype=np.uint8)
        known = np.zeros(raw.shape[:2], dtype=bool)
        for value, entries in ((BACKGROUND, self.background), (CYTOPLASM, self.cytoplasm), (NUCLEUS, self.nucleus)):
            for entry in entries:
                m = hits(entry)
                out[m] = value
                known |= m
        if not known.all():
            bad = raw[~known]
            examples = np.unique(bad.reshape(-1, raw.shape[2]) if raw.ndim == 3 else bad, axis=0)[:5]
            raise ManifestError(
                f"{where}: {int((~known).sum())} pixels have values outside data.mask_encoding "
                f"(e.g. {examples.tolist()}); expected {self.describe()}"
            )
        return out

    def describe(self) -> str:
        return ", ".join(f"{n}={list(map(list, getattr(self, n)))}" for n in LABEL_NAMES if getattr(self, n))


@dataclass
class Manifest:
    root: Path
    samples: list[Sample]
    classes: list[str]
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[s.class_name] for s in self.samples], dtype=np.int64)

    @property
    def groups(self) -> list[str] | None:
        groups = [s.group for s in self.samples]
        return None if all(g in (None, "") for g in groups) else [g or s.id for g, s in zip(groups, self.samples)]

    def by_id(self) -> dict[str, Sample]:
        return {s.id: s for s in self.samples}


def _read_csv(root: Path, csv_name: str, filters: Mapping[str, Any] | None = None, allow_outside_root: bool = False) -> list[Sample]:
    path = root / csv_name
    if not path.is_file():
        raise ManifestError(f"{path}: labels file not found; expected a CSV with columns {list(REQUIRED_COLUMNS)} (layout=csv)")
    with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: a BOM (Excel's UTF-8 CSV) is not part of 'image'
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        misspelt = {c: k for c in columns for k in KNOWN_COLUMNS if c != k and c.strip().casefold() == k}
        if misspelt:
            raise ManifestError(f"{path}: column(s) {list(misspelt)} would be ignored: did you mean {list(misspelt.values())}? "
                                f"Column names are lower case without spaces ({list(KNOWN_COLUMNS)}); rename them in the header line")
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ManifestError(f"{path}: missing columns {missing}; found {columns}, expected at least {list(REQUIRED_COLUMNS)}")
        rows = [(reader.line_num, unguard_row(row)) for row in reader]  # line numbers before filtering, as an editor shows them
    for column, wanted in (filters or {}).items():  # e.g. data.filters.subset=dataset1
        if column not in columns:
            raise ManifestError(f"data.filters.{column}: {path} has no column {column!r}; columns are {columns}")
        # any sequence (a YAML list arrives as OmegaConf's ListConfig) lists values; a scalar is one value
        many = isinstance(wanted, Sequence) and not isinstance(wanted, str | bytes)
        allowed = {str(w) for w in (wanted if many else [wanted])}
        rows = [(n, r) for n, r in rows if r[column] in allowed]
    if not rows:
        raise ManifestError(f"{path}: no rows{' after data.filters' if filters else ''}; expected one row per image")
    problems, samples, entries = [], [], []
    for line, row in rows:
        if None in row:  # csv.DictReader files the values past the header's last column under None
            problems.append(f"line {line}: {len(columns) + len(row[None])} values for the header's {len(columns)} columns "
                            f"(extra: {row[None]}); quote a value holding a comma, or name the column in the header")
            continue
        if not (row.get("image") or "").strip() or not (row.get("class_name") or "").strip():
            problems.append(f"line {line}: empty 'image' or 'class_name'")
            continue
        image = root / row["image"]
        sample_id = (row.get("image_id") or "").strip() or Path(row["image"]).with_suffix("").as_posix()
        if "subset" in row and row.get("subset") and row.get("image_id"):
            sample_id = f"{row['subset']}/{row['image_id']}"
        sample = Sample(
            id=sample_id,
            image=image,
            mask=(root / row["mask"]) if row.get("mask") else None,
            class_name=row["class_name"].strip(),
            group=(row.get("group") or "").strip() or None,
            instances=(root / row["instances"]) if row.get("instances") else None,
        )
        samples.append(sample)
        entries.append((f"line {line}", sample, {c: row.get(c) or "" for c in PATH_COLUMNS}))
    dupes, outside = path_problems(entries, root, allow_outside_root, PATH_COLUMNS)
    problems = dupes + problems + outside
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise ManifestError(f"{path}: " + "; ".join(shown))
    return samples


def _hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name.lower() in HIDDEN_NAMES


def _read_folders(root: Path, allow_outside_root: bool = False, drop: Iterable[str] = ()) -> list[Sample]:
    """images/<class>/<image> with masks/<class>/<same stem>.<ext>. Whatever else lies under images/
    (files in sub-folders of a class folder, other extensions, files beside the class folders) and
    class folders without images are one error, so no image or class is left out silently; hidden
    files are ignored, and so is what else lies in the folders of `drop` (data.drop_classes)."""
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir():
        raise ManifestError(f"{images_dir}: not found; layout=folders expects images/<class>/<file> and masks/<class>/<file>")
    drop = set(drop)
    samples, skipped, empty, ambiguous = [], [], [], []
    for entry in sorted(p for p in images_dir.iterdir() if not _hidden(p)):
        if not entry.is_dir():
            skipped.append(entry)
            continue
        found = 0
        masks: defaultdict[str, list[Path]] = defaultdict(list)  # by stem, any case of extension (a.PNG is a mask too)
        for m in sorted((masks_dir / entry.name).iterdir()) if (masks_dir / entry.name).is_dir() else []:
            masks[m.stem] += [m] if m.suffix.lower() in IMAGE_EXTENSIONS and not _hidden(m) else []
        for item in sorted(p for p in entry.iterdir() if not _hidden(p)):
            if item.is_dir() or item.suffix.lower() not in IMAGE_EXTENSIONS:
                if entry.name not in drop:  # a dropped class is left out anyway
                    skipped.append(item)
                continue
            own = masks.get(item.stem, [])
            if len(own) > 1:  # which one is the mask? Picking one would be a guess
                ambiguous.append(f"{[m.relative_to(root).as_posix() for m in own]} are {len(own)} masks for {item.relative_to(root).as_posix()}")
            mask = own[0] if own else masks_dir / entry.name / (item.stem + ".png")
            samples.append(Sample(id=f"{entry.name}/{item.stem}", image=item, mask=mask, class_name=entry.name))
            found += 1
        if not found and entry.name not in drop:
            empty.append(entry.name)
    if skipped or empty or ambiguous:
        problems = ambiguous[:5] + ([f"... and {len(ambiguous) - 5} more images with several masks"] if len(ambiguous) > 5 else [])
        if skipped:
            shown = [p.relative_to(root).as_posix() + ("/" if p.is_dir() else "") for p in skipped[:5]]
            problems.append(
                f"{len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} would be left out: {shown}"
                f"{' ...' if len(skipped) > 5 else ''}; expected images directly in images/<class>/ with extensions "
                f"{list(IMAGE_EXTENSIONS)} (sub-folders are not read: move their images up, convert other formats, "
                "or use layout=csv with a labels.csv, whose group column keeps a patient's images together)"
            )
        if empty:
            problems.append(f"class folder(s) {['images/' + c + '/' for c in empty]} hold no images (with those extensions, directly inside)")
        raise ManifestError(f"{images_dir} (layout=folders): " + "; ".join(problems))
    if not samples:
        raise ManifestError(f"{images_dir}: no images found in class sub-folders (extensions {list(IMAGE_EXTENSIONS)})")
    entries = [
        (str(s.image.relative_to(root)), s, {"image": str(s.image.relative_to(root)), "mask": str(s.mask.relative_to(root)), "instances": ""})
        for s in samples
    ]
    dupes, outside = path_problems(entries, root, allow_outside_root, PATH_COLUMNS)  # symlinked files and class folders
    if dupes or outside:
        problems = dupes + outside
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise ManifestError(f"{root} (folders layout): " + "; ".join(shown))
    return samples


def read_manifest(
    root: str | Path,
    layout: str = "csv",
    csv_name: str = "labels.csv",
    classes: Sequence[str] | None = None,
    drop_classes: Iterable[str] = (),
    require_masks: bool = True,
    filters: Mapping[str, Any] | None = None,
    allow_outside_root: bool = False,
    max_pixels: int | None = None,
    bit_depth: int | str = "auto",
) -> Manifest:
    """Read and check a dataset's listing (files are decoded later, by `load_sample`).

    `filters` keeps CSV rows whose column value is listed (e.g. `{"subset": ["dataset1"]}`);
    `allow_outside_root` accepts files outside `root`; `max_pixels` (None = imageio's default) is
    the pixel limit and `bit_depth` the camera depth every sample is decoded with."""
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"data.root={root}: folder not found; set data.root (or the WBC_DATA_DIR / WBC_SHARED_DATA env var)")
    drop = set(drop_classes)
    if layout == "csv":
        samples = _read_csv(root, csv_name, filters, allow_outside_root)
    elif layout == "folders":
        samples = _read_folders(root, allow_outside_root, drop)
    else:
        raise ManifestError(f"data.layout must be 'csv' or 'folders', got {layout!r}")
    dropped = Counter(s.class_name for s in samples if s.class_name in drop)
    samples = [replace(s, max_pixels=max_pixels, bit_depth=bit_depth) for s in samples if s.class_name not in drop]
    found = sorted({s.class_name for s in samples})
    if classes is None:
        classes = found
    classes = [c for c in classes if c not in drop]  # dropping a class removes it from the label set too
    problems = []
    unknown = sorted(set(found) - set(classes))
    if unknown:
        problems.append(f"unknown class(es) {unknown}: not in data.classes={classes} (add them, or list them in data.drop_classes)")
    empty = [c for c in classes if c not in found]
    if empty:
        problems.append(f"class(es) {empty} in data.classes have no images")
    ids = Counter(s.id for s in samples)
    if any(n > 1 for n in ids.values()):
        problems.append(f"duplicate image ids {[k for k, n in ids.items() if n > 1][:5]}")
    for s in samples:
        if not s.image.is_file():
            problems.append(f"{s.image}: image file not found")
        if require_masks and (s.mask is None or not s.mask.is_file()):
            problems.append(f"{s.mask or s.image}: mask file not found for image {s.image.name}")
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise ManifestError(f"dataset at {root} ({layout} layout): " + "; ".join(shown))
    return Manifest(root=root, samples=samples, classes=classes, dropped=dict(dropped))


def load_sample(sample: Sample, encoding: MaskEncoding) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode one sample -> (RGB uint8 image, label map uint8 or None); errors name the file. Both are
    read upright (their Orientation tags applied); a palette mask gives its indices to a grey encoding."""
    try:
        image = read_rgb(sample.image, sample.max_pixels, bit_depth=sample.bit_depth)
        if sample.mask is None:
            return image, None
        raw = read_mask(sample.mask, sample.max_pixels, palette_indices=encoding.mode == "grey")
    except ImageReadError as err:
        raise ManifestError(str(err)) from err
    if raw.shape[:2] != image.shape[:2]:
        raise ManifestError(_size_mismatch(sample, raw.shape[:2], image.shape[:2]))
    try:
        return image, encoding.decode(raw, where=str(sample.mask))
    except ManifestError as err:
        note = palette_note(sample.mask)
        if note is None:
            raise
        raise ManifestError(f"{err}; {note}") from err


def _size_mismatch(sample: Sample, mask_hw: tuple[int, ...], image_hw: tuple[int, ...]) -> str:
    """The mask/image size error; names an Orientation tag of either file (both are read turned by it,
    as viewers show them), since a mask drawn on the stored pixels differs by exactly that turn."""
    text = (f"{sample.mask}: mask size {mask_hw[1]}x{mask_hw[0]} differs from image {sample.image.name} "
            f"size {image_hw[1]}x{image_hw[0]} (width x height); they must be equal")
    tags = [(name, path, orientation_of(path)) for name, path in (("image", sample.image), ("mask", sample.mask))]
    turned = [f"the {name} {path.name} has {describe(o)}" for name, path, o in tags if o != 1]
    if turned:
        text += "; " + " and ".join(turned) + " and is read turned by it, as image viewers show it"
        if tuple(mask_hw) == tuple(image_hw)[::-1]:
            text += (f" (the swapped size {mask_hw[0]}x{mask_hw[1]} would match: one file's pixels are turned relative to the "
                     "other's; turn the mask to match the image as viewers show it, or save the file without the tag)")
    return text


def load_instances(sample: Sample) -> np.ndarray | None:
    """Ground-truth nucleus instance ids (0 = none) if the dataset provides them."""
    if sample.instances is None:
        return None
    try:
        arr = decode_raw(sample.instances, sample.max_pixels)
    except ImageReadError as err:
        raise ManifestError(str(err)) from err
    if arr.ndim != 2:
        raise ManifestError(f"{sample.instances}: instance map must be a single-channel image, got shape {arr.shape}")
    return arr.astype(np.int32)
