"""Write what predict.py promises per image: mask PNG, 16-bit instance label PNG, QuPath GeoJSON,
labelled overlay, crops, CSV + JSON rows (the per-cell writers are wbc.cell_outputs, shared with the
web app).

A file that cannot be read (corrupt, not an image, too large) is reported and skipped; the rest
are processed. Image files and predictions.json are written atomically.

Output names: an input's `masks/<stem>.png`, `labels/<stem>.png`, `geojson/<stem>.geojson`,
`overlays/<stem>.png` and `crops/<stem>_cellNN.png`
use its file stem when no other input of the run has the same stem (compared case-insensitively,
so the names also stay apart on macOS/Windows file systems). Inputs that share a stem get
stem + "_" + extension (`dup.png` -> `dup_png`, `dup.jpg` -> `dup_jpg`), plus `_2`, `_3`, ... should
that name be taken too. A stem over STEM_MAX_BYTES of UTF-8 keeps its head and its tail (lab names differ at
the end, `..._Field_0001`): a file name may hold 255 bytes, and the crops add `_cellNN.png` to it. Every row of predictions.csv/.json names its input (`image` as given,
`source` its absolute path) and the `output_stem` its files were written under.

Nothing is lost or silently replaced: predictions.csv gets each image's rows appended and flushed
as soon as its files are written, so an error or a full disk at image N keeps the rows of the
images before it, and the run says "stopped after N-1 of M images: <error>" (logged, in
predictions.json's `status`, and as a note on the re-raised exception). predictions.json is
written at the end, or when stopping. While running, the output dir holds `predict.lock` (created
with O_EXCL: a second run into the same dir is refused), and a dir that already holds results is
refused unless `overwrite=True`, which also empties predict's own per-image folders (IMAGE_DIRS): an
earlier run's files there (crops of cells that no longer exist, images not in this run) would pass for this
run's.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TextIO

import numpy as np

from wbc import cell_outputs as co
from wbc.cells import shown
from wbc.data.bitdepth import AUTO
from wbc.data.formats import IMAGE_LIKE_SUFFIXES, check_magic
from wbc.data.imageio import IMAGE_MAGIC, ImageReadError, check_image_size, read_rgb
from wbc.data.manifest import IMAGE_EXTENSIONS
from wbc.inference import CellPipeline
from wbc.io import atomic_write, write_json
from wbc.morphology import cell_measurements

log = logging.getLogger("wbc")

MAGIC = IMAGE_MAGIC  # PNG, BMP, TIFF/BigTIFF, JPEG (wbc.data.imageio)
LOCK_FILE = "predict.lock"
RESULTS = ("predictions.csv", "predictions.json")
# the per-image folders predict writes (and nothing else does)
IMAGE_DIRS = ("masks", "labels", "geojson", "crops", "overlays")
# an output stem's longest UTF-8 form: 255-byte file names less `_cell9999.png` and atomic_write's temp part
STEM_MAX_BYTES = 200
CSV_COLUMNS = [
    "image", "cell", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "area", "centroid_x", "centroid_y", "class", "probability",
    "review", "review_reasons", *co.MEASUREMENTS,
]


def list_inputs(path: str | Path) -> list[Path]:
    """The images predict reads: the file, or a folder's files with IMAGE_EXTENSIONS; image files in
    other formats (.webp, .gif: IMAGE_LIKE_SUFFIXES) it skips are named in a warning, never left out silently."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        skipped = sorted(f.name for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_LIKE_SUFFIXES)
        if skipped:
            log.warning("input=%s: skipped %d image file(s) in formats predict does not read: %s%s; expected %s "
                        "(convert them, e.g. to PNG)", path, len(skipped), skipped[:10], " ..." if len(skipped) > 10 else "",
                        list(IMAGE_EXTENSIONS))
        if not files:
            raise FileNotFoundError(f"input={path}: folder contains no images (extensions {list(IMAGE_EXTENSIONS)})")
        return files
    raise FileNotFoundError(f"input={path}: no such file or folder")


def check_file(path: Path, max_file_mb: float, max_pixels: int | None = None) -> None:
    """Refuse empty and oversized files, non-images and images with too many pixels before decoding
    them (file size, magic bytes, then the width x height read from the header alone: the same
    check as training's, wbc.data.imageio.check_image_size; max_pixels None = its default)."""
    size = path.stat().st_size
    if size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes); expected an image")
    if size > max_file_mb * 2**20:
        raise ImageReadError(f"{path}: {size} bytes exceeds the limit max_file_mb={max_file_mb:g} (predict.max_file_mb)")
    with open(path, "rb") as fh:
        head = fh.read(16)
    check_magic(head, path)  # the rule training and the web app apply (wbc.data.formats)
    check_image_size(path, max_pixels, "predict.max_pixels")


def short_stem(stem: str, limit: int = STEM_MAX_BYTES) -> str:
    """`stem` when it fits `limit` bytes of UTF-8, else its head and tail joined by `~` (whole characters)."""
    if len(stem.encode("utf-8")) <= limit:
        return stem
    head, tail = stem, stem
    while len(head.encode("utf-8")) > limit // 2:
        head = head[:-1]
    while len(tail.encode("utf-8")) > limit - limit // 2 - 1:
        tail = tail[1:]
    return f"{head}~{tail}"


def output_stems(files: Sequence[Path]) -> list[str]:
    """One distinct, readable output stem per input (the naming rule of the module docstring)."""
    own = [short_stem(f.stem) for f in files]
    counts = Counter(s.casefold() for s in own)
    taken = {s.casefold() for s in own if counts[s.casefold()] == 1}
    stems = []
    for f, s in zip(files, own):
        if counts[s.casefold()] == 1:
            stems.append(s)
            continue
        base = f"{s}_{f.suffix.lstrip('.')}"
        stem, n = base, 1
        while stem.casefold() in taken:
            n += 1
            stem = f"{base}_{n}"
        taken.add(stem.casefold())
        stems.append(stem)
    return stems


def check_output_dir(out_dir: Path, overwrite: bool = False) -> list[str]:
    """The result files out_dir already holds (refused unless overwrite), after refusing a dir that
    another predict is writing into."""
    out_dir = Path(out_dir)
    lock = out_dir / LOCK_FILE
    if lock.exists():
        _refuse_locked(lock)
    return _existing_results(out_dir, overwrite)


def _image_files(out_dir: Path) -> list[Path]:
    """The files in predict's per-image folders of out_dir."""
    return [f for d in IMAGE_DIRS if (out_dir / d).is_dir() for f in sorted((out_dir / d).iterdir()) if not f.is_dir()]


def _existing_results(out_dir: Path, overwrite: bool) -> list[str]:
    files = _image_files(out_dir)
    existing = [n for n in RESULTS if (out_dir / n).exists()]
    existing += [f"{len(files)} file(s) in {'/, '.join(sorted({f.parent.name for f in files}))}/"] if files else []
    if existing and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds {', '.join(existing)} of an earlier predict; choose another output dir "
            "or pass overwrite=true to replace them"
        )
    return existing


def _refuse_locked(lock: Path) -> NoReturn:
    try:
        holder = lock.read_text().strip() or "starting"
    except OSError:
        holder = "unknown"
    raise FileExistsError(
        f"{lock}: another predict is writing into {lock.parent} ({holder}); choose another output dir, "
        "or delete the lock file if no predict is running there (a killed run leaves it)"
    )


@contextmanager
def output_lock(out_dir: Path, overwrite: bool = False) -> Iterator[Path]:
    """Hold `<out_dir>/predict.lock` (O_EXCL) while writing, and refuse a dir that already holds
    results unless overwrite: two runs never write into one dir, nothing is silently replaced."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = out_dir / LOCK_FILE
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        _refuse_locked(lock)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        existing = _existing_results(out_dir, overwrite)  # checked again under the lock: no race
        if existing:
            log.warning("overwrite=true: replacing %s in %s", ", ".join(existing), out_dir)
            (out_dir / "predictions.json").unlink(missing_ok=True)  # stale until this run writes its own
            for f in _image_files(out_dir):  # an earlier run's crops, masks, ... would pass for this run's
                f.unlink()
        yield lock
    finally:
        lock.unlink(missing_ok=True)


def predict_images(
    pipe: CellPipeline, files: Sequence[Path], out_dir: Path, max_file_mb: float = 50, save_crops: bool = True,
    max_pixels: int | None = None, overwrite: bool = False,
) -> tuple[list[dict], list[dict]]:
    """Returns (rows, failures); writes the images' files and predictions.csv/.json into out_dir,
    each image's rows as soon as it is done (see the module docstring)."""
    out_dir, files = Path(out_dir), [Path(f) for f in files]
    columns = [*CSV_COLUMNS, *(f"p_{c}" for c in pipe.classes), "source", "output_stem"]
    rows: list[dict] = []
    failures: list[dict] = []
    images: list[dict] = []
    with output_lock(out_dir, overwrite), open(out_dir / "predictions.csv", "w", newline="", encoding="utf-8") as fh:
        _append_csv(fh, [columns])
        for done, (f, stem) in enumerate(zip(files, output_stems(files))):
            try:
                done_one = _predict_one(pipe, f, stem, out_dir, max_file_mb, save_crops, max_pixels, failures)
                if done_one is not None:
                    new, appearance = done_one
                    _append_csv(fh, co.csv_records(new, columns))
                    rows.extend(new)
                    scale = pipe.last_scale.to_dict() if getattr(pipe, "last_scale", None) is not None else None
                    images.append({"image": str(f), "source": str(f.absolute()), "output_stem": stem, "cells": len(new), "scale": scale,
                                   "appearance": appearance})
            except BaseException as err:
                status = f"stopped after {done} of {len(files)} images: {type(err).__name__}: {err}"
                log.error("predict %s (the rows of those %d are in %s)", status, done, out_dir / "predictions.csv")
                err.add_note(f"predict {status}; the rows of those {done} images are in {out_dir / 'predictions.csv'}")
                try:
                    _write_report(out_dir, pipe, rows, failures, images, status)
                except Exception as json_err:  # noqa: BLE001 - e.g. the disk is full: the CSV holds the rows
                    log.error("could not write %s: %s", out_dir / "predictions.json", json_err)
                raise
        _write_report(out_dir, pipe, rows, failures, images, "complete")
    unlike = unlike_training(images)
    if unlike:
        model = getattr(pipe, "appearance_model", "model")
        log.warning("%d of %d image(s) look unlike the %s's training images (stain, light or camera: wbc.appearance), e.g. %s: "
                    "their cells are flagged for review; a model trained on other smears is often confidently wrong there "
                    "(README: Models that travel; fine-tune on a few labelled cells of these images)",
                    len(unlike), len(images), model, Path(unlike[0]).name)
    return rows, failures


def _predict_one(
    pipe: CellPipeline, f: Path, stem: str, out_dir: Path, max_file_mb: float, save_crops: bool,
    max_pixels: int | None, failures: list[dict],
) -> tuple[list[dict], dict | None] | None:
    """One image's files (wbc.cell_outputs, the writers the web app uses); (its rows, its appearance
    check) or None when the file is unreadable (skipped)."""
    try:
        rgb = read_image(f, max_file_mb, max_pixels, getattr(pipe, "bit_depth", AUTO))
    except (ImageReadError, OSError) as err:
        log.error("skipped %s: %s", f, err)
        failures.append({"image": str(f), "source": str(f.absolute()), "error": str(err)})
        return None
    res = pipe(rgb)
    measured = cell_measurements(rgb, res.labels, res.instances)
    cells = co.cell_rows(res.instances, pipe.classes, res.class_probs, getattr(res, "review", None) or None, measured)
    rows = [{"image": str(f), **row, "source": str(f.absolute()), "output_stem": stem} for row in cells]
    try:  # before any of its files: an image is written whole or not at all
        labels_png = co.label_png(res.labels)
    except ValueError as err:  # more cells than a 16-bit label PNG holds: this image only, the run goes on
        log.error("skipped %s: %s", f, err)
        failures.append({"image": str(f), "source": str(f.absolute()), "error": f"{err}; split the image into smaller fields"})
        return None
    _write_bytes(out_dir / "masks" / f"{stem}.png", co.mask_png(res.labels))
    _write_bytes(out_dir / "labels" / f"{stem}.png", labels_png)
    geo = co.cells_geojson(res.labels, res.instances, cells, pipe.classes, str(f))
    _write_bytes(out_dir / "geojson" / f"{stem}.geojson", json.dumps(geo).encode("utf-8"))
    if save_crops:
        for row, crop in zip(cells, res.crops):
            _write_bytes(out_dir / "crops" / co.crop_name(stem, row["cell"]), co.png_bytes(shown(crop, getattr(pipe, "shown_channels", None))))
    _write_bytes(out_dir / "overlays" / f"{stem}.png", co.png_bytes(co.overlay_image(rgb, res.labels, res.instances, cells)))
    return rows, getattr(res, "appearance", None)


def read_image(f: Path, max_file_mb: float, max_pixels: int | None, bit_depth: int | str = AUTO) -> np.ndarray:
    """One input's RGB array, after the size and format checks (ImageReadError / OSError if not);
    16-bit files at `bit_depth` (the pipeline's: the checkpoint's or predict's bit_depth)."""
    check_file(Path(f), max_file_mb, max_pixels)
    return read_rgb(Path(f), max_pixels, "predict.max_pixels", bit_depth=bit_depth, depth_setting="bit_depth")


def readable_images(
    files: Sequence[Path], max_file_mb: float = 50, max_pixels: int | None = None, bit_depth: int | str = "auto",
) -> Iterator[np.ndarray]:
    """The RGB arrays of the files predict_images would read (unreadable ones left to it to report)."""
    for f in files:
        try:
            yield read_image(f, max_file_mb, max_pixels, bit_depth)
        except (ImageReadError, OSError):
            continue


def _write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda p: p.write_bytes(data))


def _append_csv(fh: TextIO, records: list[list[Any]]) -> None:
    """Rows through the csv module (commas, quotes, newlines in names stay one field), written in
    one call and flushed, so a crash leaves whole images' rows behind."""
    buf = io.StringIO()
    csv.writer(buf).writerows(records)
    fh.write(buf.getvalue())
    fh.flush()


def _write_report(out_dir: Path, pipe: CellPipeline, rows: list[dict], failures: list[dict], images: list[dict], status: str) -> None:
    report = {"status": status, "cells": rows, "failed": failures, "images": images, "classes": pipe.classes,
              "adapt_bn_images": getattr(pipe, "adapted_on", 0), "adapt_bn_models": list(getattr(pipe, "adapted_models", ())),
              "morphology": getattr(pipe, "morphology_source", None), "unlike_training_images": unlike_training(images),
              "bit_depth": getattr(pipe, "bit_depth", AUTO)}
    write_json(out_dir / "predictions.json", report)


def unlike_training(images: list[dict]) -> list[str]:
    """The images whose appearance check found them unlike the model's training images."""
    return [im["image"] for im in images if (im.get("appearance") or {}).get("unlike_training")]


