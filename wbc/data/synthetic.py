"""Embedded synthetic blood-smear dataset: RGB fields, cytoplasm/nucleus masks, nucleus instances.

Why: the framework must train, test and demo end to end without the (private) real data. The
generator mimics the source study's three classes and their imbalance, and keeps the classes
separable only through nucleus shape, size and texture (stain hue/intensity is drawn per slide,
not per class), so what a model learns here is morphology rather than a colour shortcut.
Everything is deterministic: image i comes from its own child RNG seeded by (seed, i). The image
model itself (stain, cell shapes, colour) lives in wbc.data.smear_drawing; this module is the
dataset around it: spec, class counts, labels.csv/masks/instances files and the CLI.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from wbc.data.smear_drawing import CLASS_NAMES, fill_polygons, make_slide_stain, paint_smear, place_cells

DEFAULT_CLASS_RATIOS: dict[str, int] = {"lymphoblast": 768, "neutrophil": 445, "promyelocyte": 175}
MASK_VALUES = {"background": 0, "cytoplasm": 128, "nucleus": 255}
GENERATOR_VERSION = 1
META_NAME = "synthetic_meta.json"
LABEL_COLUMNS = ("image", "mask", "instances", "class_name", "group")


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines the generated dataset (recorded in synthetic_meta.json)."""

    n_images: int = 300
    image_size: int = 256
    seed: int = 0
    class_ratios: dict[str, int] | None = None  # None -> DEFAULT_CLASS_RATIOS
    images_per_slide: int = 10
    clump_prob: float = 0.25
    border_prob: float = 0.25

    def __post_init__(self) -> None:
        if self.class_ratios is not None:  # plain dict (Hydra may pass a DictConfig) so it is JSON-able
            object.__setattr__(self, "class_ratios", {str(k): int(v) for k, v in self.class_ratios.items()})
        if self.n_images < 1 or self.image_size < 32 or self.seed < 0 or self.images_per_slide < 1:
            raise ValueError(f"invalid SyntheticSpec {self}: need n_images>=1, image_size>=32, seed>=0, images_per_slide>=1")
        if not (0 <= self.clump_prob <= 1 and 0 <= self.border_prob <= 1):
            raise ValueError(f"clump_prob/border_prob must be in [0, 1], got {self.clump_prob}/{self.border_prob}")


def class_counts(n_images: int, ratios: dict[str, int] | None = None) -> dict[str, int]:
    """Images per class: largest-remainder rounding of the ratios, at least 2 per class when possible."""
    ratios = dict(DEFAULT_CLASS_RATIOS if ratios is None else ratios)
    total = sum(ratios.values())
    if n_images < 0 or total <= 0 or min(ratios.values()) < 0:
        raise ValueError(f"need n_images >= 0 and non-negative ratios with a positive sum, got {n_images}, {ratios}")
    quot = {c: divmod(n_images * r, total) for c, r in ratios.items()}
    counts = {c: q for c, (q, _) in quot.items()}
    by_remainder = sorted(ratios, key=lambda c: (-quot[c][1], -ratios[c]))
    for c in by_remainder[: n_images - sum(counts.values())]:
        counts[c] += 1
    active = [c for c in ratios if ratios[c] > 0]
    floor = 2 if n_images >= 2 * len(active) else int(n_images >= len(active))
    for c in active:
        while counts[c] < floor:  # take from the currently largest class
            donor = max(active, key=lambda d: counts[d])
            counts[donor] -= 1
            counts[c] += 1
    return counts

def render_image(spec: SyntheticSpec, index: int, class_name: str, slide_stain: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (rgb uint8 HxWx3, mask uint8 HxW in {0,128,255}, instances uint16 HxW).

    Depends only on (spec.seed, index, class_name, image_size, probabilities, stain), never on
    n_images, so image i is the same in a small and a large dataset.
    """
    if class_name not in CLASS_NAMES:
        raise ValueError(f"unknown class {class_name!r}; expected one of {CLASS_NAMES}")
    size = spec.image_size
    k = size / 256
    stain = slide_stain if slide_stain is not None else make_slide_stain(spec.seed, index // spec.images_per_slide)
    rng = np.random.default_rng([spec.seed, 1, index])
    clump, border = rng.random() < spec.clump_prob, rng.random() < spec.border_prob
    s = k * rng.uniform(0.85, 1.15)
    cells = place_cells(rng, class_name, s, k, size, clump, border)

    # masks: all cytoplasm first, then nuclei on top (later cell wins), so mask and instances agree
    cell_masks = [fill_polygons([c.cell_poly, *c.nuc_polys], c.centre, size) for c in cells]
    nuc_masks = [fill_polygons(c.nuc_polys, c.centre, size) for c in cells]
    mask = np.zeros((size, size), np.uint8)
    inst = np.zeros((size, size), np.uint16)
    for cm in cell_masks:
        mask[cm] = MASK_VALUES["cytoplasm"]
    for i, nm in enumerate(nuc_masks, 1):
        mask[nm] = MASK_VALUES["nucleus"]
        inst[nm] = i
    lut = np.zeros(len(cells) + 1, np.uint16)
    present = np.unique(inst)[1:] if inst.any() else np.zeros(0, int)
    lut[present] = np.arange(1, len(present) + 1)  # renumber 1..n, dropping fully hidden nuclei
    inst = lut[inst]

    rgb = paint_smear(rng, cells, cell_masks, nuc_masks, stain, size, s, k)
    return rgb, mask, inst


def render_field(spec: SyntheticSpec, index: int, grid: tuple[int, int] = (4, 4), scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A full microscope field for full-field inference tests and benchmarks: a rows x cols mosaic
    of consecutive synthetic images (classes cycling), each resized by `scale` (0.5 = cells half the
    training size), as the issue's "smear fields tiled into one image". -> (rgb, mask, instances)
    like :func:`render_image`, instance ids unique over the field."""
    rows, cols = grid
    if rows < 1 or cols < 1 or not scale > 0:
        raise ValueError(f"grid must be >= (1, 1) and scale > 0, got {grid}, {scale}")
    side = max(8, round(spec.image_size * scale))
    rgb = np.zeros((rows * side, cols * side, 3), np.uint8)
    mask = np.zeros(rgb.shape[:2], np.uint8)
    inst = np.zeros(rgb.shape[:2], np.uint32)
    next_id = 0
    for t in range(rows * cols):
        i = index + t
        img, m, ins = render_image(spec, i, CLASS_NAMES[i % len(CLASS_NAMES)])
        if side != spec.image_size:
            img = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
            m = cv2.resize(m, (side, side), interpolation=cv2.INTER_NEAREST)
            ins = cv2.resize(ins.astype(np.uint16), (side, side), interpolation=cv2.INTER_NEAREST)
        y, x = (t // cols) * side, (t % cols) * side
        rgb[y : y + side, x : x + side] = img
        mask[y : y + side, x : x + side] = m
        ins = ins.astype(np.uint32)
        inst[y : y + side, x : x + side] = np.where(ins > 0, ins + next_id, 0)
        next_id += int(ins.max())
    return rgb, mask, inst


# ----------------------------------------------------------------------------- files
def _spec_dict(spec: SyntheticSpec) -> dict:
    return json.loads(json.dumps(asdict(spec)))


def _is_current(out: Path, spec: SyntheticSpec) -> bool:
    """True when out holds a complete dataset generated from exactly this spec."""
    try:
        meta = json.loads((out / META_NAME).read_text())
        if meta.get("spec") != _spec_dict(spec) or meta.get("generator_version") != GENERATOR_VERSION:
            return False
        with open(out / "labels.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        return len(rows) == spec.n_images and all((out / r[c]).is_file() for r in rows for c in LABEL_COLUMNS[:3])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _write_dataset(root: Path, spec: SyntheticSpec) -> dict[str, int]:
    counts = class_counts(spec.n_images, spec.class_ratios)
    labels = [c for c, n in counts.items() for _ in range(n)]
    labels = [labels[i] for i in np.random.default_rng([spec.seed, 3]).permutation(len(labels))]
    for sub in ("images", "masks", "instances"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rows, stains = [], {}
    for i, cls in enumerate(labels):
        slide = i // spec.images_per_slide
        if slide not in stains:
            stains[slide] = make_slide_stain(spec.seed, slide)
        rgb, mask, inst = render_image(spec, i, cls, stains[slide])
        name = f"img_{i:04d}.png"
        row = {"image": f"images/{name}", "mask": f"masks/{name}", "instances": f"instances/{name}", "class_name": cls, "group": f"slide_{slide:03d}"}
        for col, arr in (("image", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)), ("mask", mask), ("instances", inst)):
            if not cv2.imwrite(str(root / row[col]), arr):
                raise OSError(f"could not write {root / row[col]}")
        rows.append(row)
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LABEL_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    meta = {"spec": _spec_dict(spec), "counts": counts, "generator_version": GENERATOR_VERSION}
    (root / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return counts


def generate(out_dir: str | Path, spec: SyntheticSpec = SyntheticSpec(), overwrite: bool = False) -> Path:
    """Write the dataset and return out_dir; built in a temporary sibling and renamed into place,
    so an interrupted run never leaves a half-written dataset. Never replaces a folder that is not
    a synthetic dataset."""
    out = Path(out_dir)
    unknown = set(class_counts(spec.n_images, spec.class_ratios)) - set(CLASS_NAMES)
    if unknown:
        raise ValueError(f"class_ratios has unknown classes {sorted(unknown)}; known: {CLASS_NAMES}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (out / META_NAME).is_file():
            raise FileExistsError(f"{out} exists, is not empty and is not a synthetic dataset (no {META_NAME}); refusing to overwrite it")
        if not overwrite:
            raise FileExistsError(f"{out} already holds a synthetic dataset; pass overwrite=True (CLI: --overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        _write_dataset(tmp, spec)
        if out.exists():
            shutil.rmtree(out) if (out / META_NAME).is_file() else out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def ensure_synthetic(out_dir: str | Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Generate on first use, reuse afterwards; regenerate when the recorded spec differs.

    Call from one process (Lightning's prepare_data); a concurrent writer that finished first is
    accepted if its result matches the spec."""
    out = Path(out_dir)
    if _is_current(out, spec):
        return out
    try:
        return generate(out, spec, overwrite=True)
    except OSError:
        if _is_current(out, spec):
            return out
        raise


def main(argv: list[str] | None = None) -> int:
    """CLI: write (or reuse) the synthetic dataset and print a short summary."""
    p = argparse.ArgumentParser(prog="python -m wbc.data.synthetic", description="Generate the embedded synthetic blood-smear dataset.")
    p.add_argument("--out", type=Path, default=Path("data/synthetic"), help="output folder (default: data/synthetic)")
    p.add_argument("--n-images", type=int, default=SyntheticSpec.n_images)
    p.add_argument("--image-size", type=int, default=SyntheticSpec.image_size)
    p.add_argument("--seed", type=int, default=SyntheticSpec.seed)
    p.add_argument("--overwrite", action="store_true", help="replace an existing synthetic dataset in --out")
    args = p.parse_args(argv)
    spec = SyntheticSpec(n_images=args.n_images, image_size=args.image_size, seed=args.seed)
    start = time.perf_counter()
    if not args.overwrite and _is_current(args.out, spec):
        status = "already up to date (reused)"
    else:
        try:
            generate(args.out, spec, overwrite=args.overwrite)
        except FileExistsError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        status = f"generated in {time.perf_counter() - start:.1f} s"
    counts = class_counts(spec.n_images, spec.class_ratios)
    print(f"synthetic dataset {status}: {args.out}")
    print(f"  {spec.n_images} images of {spec.image_size}x{spec.image_size}, seed {spec.seed}, " + ", ".join(f"{c}={n}" for c, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
