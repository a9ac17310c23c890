"""Write what predict.py promises per image: mask PNG, labelled overlay, crops, CSV + JSON rows.

A file that cannot be read (corrupt, not an image, too large) is reported and skipped; the rest
are processed. All outputs are written atomically.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wbc.data.imageio import ImageReadError, read_rgb
from wbc.data.manifest import IMAGE_EXTENSIONS
from wbc.inference import CellPipeline
from wbc.io import atomic_write, write_json, write_png
from wbc.overlay import label_cells

log = logging.getLogger("wbc")

MAGIC = (b"\x89PNG", b"BM", b"II*\x00", b"MM\x00*", b"\xff\xd8\xff")


def list_inputs(path: str | Path) -> list[Path]:
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise FileNotFoundError(f"input={path}: folder contains no images (extensions {list(IMAGE_EXTENSIONS)})")
        return files
    raise FileNotFoundError(f"input={path}: no such file or folder")


def check_file(path: Path, max_file_mb: float, max_pixels: int | None = None) -> None:
    """Refuse empty and oversized files, non-images and images with too many pixels before decoding
    them (file size, magic bytes, then the width x height PIL reads from the header alone)."""
    size = path.stat().st_size
    if size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes); expected an image")
    if size > max_file_mb * 2**20:
        raise ImageReadError(f"{path}: {size} bytes exceeds the limit max_file_mb={max_file_mb:g} (predict.max_file_mb)")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not head.startswith(MAGIC):
        raise ImageReadError(f"{path}: not an image file (no PNG/BMP/TIFF/JPEG header)")
    if max_pixels:
        w, h = image_size(path)
        if w * h > max_pixels:
            raise ImageReadError(
                f"{path}: {w}x{h} = {w * h} pixels exceeds the limit max_pixels={max_pixels} (predict.max_pixels); "
                "tile or downscale the image first"
            )


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header; nothing is decoded."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.size
    except Image.DecompressionBombError as err:  # beyond PIL's own bomb limit: certainly too large
        raise ImageReadError(f"{path}: {err} (predict.max_pixels)") from err
    except Exception as err:  # noqa: BLE001 - an unreadable header is reported like any bad file
        if path.suffix.lower() in (".tif", ".tiff"):  # TIFFs PIL cannot open are read by tifffile later
            try:
                import tifffile

                with tifffile.TiffFile(path) as tif:
                    shape = tif.pages[0].shape
                return int(shape[1]), int(shape[0])
            except Exception:  # noqa: BLE001 - report PIL's message below
                pass
        raise ImageReadError(f"{path}: cannot read the image header ({err}); truncated or not an image file") from err


def predict_images(
    pipe: CellPipeline, files: Sequence[Path], out_dir: Path, max_file_mb: float = 50, save_crops: bool = True, max_pixels: int | None = None
) -> tuple[list[dict], list[dict]]:
    """Returns (rows, failures); writes predictions.csv/.json into out_dir."""
    rows, failures = [], []
    for f in files:
        try:
            check_file(f, max_file_mb, max_pixels)
            rgb = read_rgb(f)
        except (ImageReadError, OSError) as err:
            log.error("skipped %s: %s", f, err)
            failures.append({"image": str(f), "error": str(err)})
            continue
        res = pipe(rgb)
        stem = f.stem
        write_png(out_dir / "masks" / f"{stem}.png", (res.labels > 0).astype(np.uint8) * 255)
        texts, boxes = [], []
        for k, inst in enumerate(res.instances):
            row = {"image": str(f), "cell": inst.label, "bbox_y0": inst.bbox[0], "bbox_x0": inst.bbox[1], "bbox_y1": inst.bbox[2], "bbox_x1": inst.bbox[3], "area": inst.area}
            if np.size(res.class_probs):  # no classifier: (n_cells, 0) probabilities
                p = res.class_probs[k]
                row["class"] = pipe.classes[int(np.argmax(p))]
                row["probability"] = float(np.max(p))
                row.update({f"p_{c}": float(v) for c, v in zip(pipe.classes, p)})
                texts.append(f"{inst.label}:{row['class'][:5]} {row['probability']:.2f}")
            else:
                texts.append(str(inst.label))
            boxes.append(inst.bbox)
            rows.append(row)
            if save_crops:
                write_png(out_dir / "crops" / f"{stem}_cell{inst.label:02d}.png", res.crops[k])
        write_png(out_dir / "overlays" / f"{stem}.png", label_cells(rgb, res.labels, texts, boxes))
    write_json(out_dir / "predictions.json", {"cells": rows, "failed": failures, "classes": pipe.classes})
    columns = ["image", "cell", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "area", "class", "probability"] + [f"p_{c}" for c in pipe.classes]
    lines = [",".join(columns)] + [",".join(_fmt(r.get(c, "")) for c in columns) for r in rows]
    atomic_write(out_dir / "predictions.csv", lambda p: p.write_text("\n".join(lines) + "\n"))
    return rows, failures


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.5f}"
    s = str(v)
    return f'"{s}"' if "," in s else s
