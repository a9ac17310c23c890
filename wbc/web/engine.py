"""The web app's steps on one image, each run on a worker thread (wbc.web.jobs): decode an upload,
segment (nucleus probability -> cells, outlines, crops), classify (the stored crops: Classify never
segments again), and the downloads (wbc.cell_outputs, the writers predict.py uses).

The loaded pipeline is shared by all jobs; each job works on a shallow copy of it, so the per-image
state the pipeline keeps (`last_scale`) never leaks between two images processed at the same time.

What a GET answers about an image (its state, a cell's crop) is the record's `view`: a snapshot that
each step builds inside the image's lock at its end and publishes in one assignment (`publish`). A
GET reads it without the lock. Taking the lock instead (through the job pool, so the event loop never
waits) would make every click on an image that is being segmented wait for the model, take a worker
from the other users' jobs meanwhile, and answer "busy" under load; the snapshot is simpler and still
never mixes two runs: it always shows the last finished step, whole.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from wbc import cell_outputs as co
from wbc.cells import cell_crops, shown
from wbc.data.bitdepth import AUTO
from wbc.data.imageio import IMAGE_MAGIC, ImageReadError, as_rgb, decode_bytes
from wbc.morphology import cell_measurements
from wbc.web.store import ImageRecord, View

# PNG, BMP, TIFF (both byte orders), JPEG: the type is decided by these bytes, never by the name
MAGIC = IMAGE_MAGIC  # wbc.data.imageio: BigTIFF too
DOWNLOADS = {
    "mask.png": "image/png",
    "labels.png": "image/png",
    "overlay.png": "image/png",
    "cells.csv": "text/csv; charset=utf-8",
    "cells.geojson": "application/geo+json",
    "crops.zip": "application/zip",
    "all.zip": "application/zip",
}


class StepError(ValueError):
    """A request the image's state does not allow (classify before segment): 409."""


class NotFound(LookupError):
    """A download kind or a cell that does not exist (the message names what does): 404."""


class TooLarge(ImageReadError):
    """A file over max_file_mb: 413, like an upload refused while it arrives."""


@dataclass(frozen=True)
class Limits:
    max_file_mb: float = 50.0
    max_pixels: int | None = None  # None = wbc.data.imageio.DEFAULT_MAX_PIXELS

    @property
    def max_bytes(self) -> int:
        return int(self.max_file_mb * 2**20)


def _ms(t0: float) -> float:
    return round(1e3 * (time.perf_counter() - t0), 2)


class Engine:
    def __init__(self, pipe: Any, limits: Limits | None = None) -> None:
        self.pipe = pipe
        self.limits = limits or Limits()

    @property
    def classes(self) -> list[str]:
        return list(self.pipe.classes)

    @property
    def has_classifier(self) -> bool:
        classifies = getattr(self.pipe, "classifier", None) is not None or getattr(self.pipe, "morphology", None) is not None
        return classifies and bool(self.classes)

    # ------------------------------------------------------------------------- steps
    def check_upload(self, data: bytes, name: str) -> None:
        """Size and type from the bytes, before anything is decoded (ImageReadError naming the file)."""
        if not data:
            raise ImageReadError(f"{name}: file is empty (0 bytes); expected an image")
        if len(data) > self.limits.max_bytes:
            raise TooLarge(f"{name}: {len(data)} bytes exceeds the limit max_file_mb={self.limits.max_file_mb:g}")
        if not data.startswith(MAGIC):
            raise ImageReadError(f"{name}: not an image file (expected PNG, JPEG, TIFF or BMP content)")

    def decode(self, data: bytes, name: str) -> tuple[np.ndarray, float]:
        """(RGB uint8, ms): the pixel limit is checked from the header before decoding; 16-bit images
        are read at the pipeline's bit depth (the checkpoint's, or serve's bit_depth)."""
        t0 = time.perf_counter()
        self.check_upload(data, name)
        rgb = as_rgb(decode_bytes(data, name, self.limits.max_pixels, "max_pixels"), name, getattr(self.pipe, "bit_depth", AUTO), "bit_depth")
        return rgb, _ms(t0)

    def segment(self, rec: ImageRecord) -> dict:
        """Nucleus probability -> cells, outlines and crops; any earlier classification is dropped."""
        with rec.lock:
            pipe = copy.copy(self.pipe)
            t0 = time.perf_counter()
            prob = pipe.segment(rec.rgb)
            seg_ms, t1 = _ms(t0), time.perf_counter()
            spec, post = pipe.scaled_for_image()
            labels, instances, crops = cell_crops(pipe.cls_pre(rec.rgb), prob, spec, post)
            cells_ms, t2 = _ms(t1), time.perf_counter()
            # every ring of the cell for the page's canvas (holes run the other way: the nonzero fill leaves them empty)
            polygons = [[ring.round(2).tolist() for rings in co.cell_polygons(labels, inst) for ring in rings] for inst in instances]
            outlines_ms, t3 = _ms(t2), time.perf_counter()
            inside = interior_points(labels, instances)
            measurements = cell_measurements(rec.rgb, labels, instances)
            measure_ms, t4 = _ms(t3), time.perf_counter()
            check = getattr(pipe, "check_appearance", None)  # is the image like the model's training images (wbc.appearance)
            appearance = check(rec.rgb, labels) if callable(check) else None
            rows = co.cell_rows(instances, self.classes, measurements=measurements)
            # everything computed: the record changes only now (an error above leaves the last run whole)
            rec.labels = labels.astype(np.uint16) if labels.size and labels.max() < 2**16 else labels
            rec.instances, rec.crops, rec.polygons, rec.rows, rec.inside = instances, crops, polygons, rows, inside
            rec.measurements, rec.appearance, rec.scale = measurements, appearance, pipe.last_scale
            rec.class_probs, rec.review = None, None
            rec.status = "segmented"
            rec.cache = {k: v for k, v in rec.cache.items() if k == "image.png"}
            rec.timings = {k: v for k, v in rec.timings.items() if k == "decode_ms"}
            rec.timings.update(segment_ms=seg_ms, cells_ms=cells_ms, outlines_ms=outlines_ms, measure_ms=measure_ms, appearance_ms=_ms(t4))
            return self.publish(rec)

    def classify(self, rec: ImageRecord) -> dict:
        """Class probabilities of the stored crops (+ review reasons when the pipeline gives them)."""
        with rec.lock:
            if rec.labels is None:
                raise StepError(f"{rec.name}: segment this image first, then classify")
            if not self.has_classifier:
                raise StepError("the loaded model has no classifier: nucleus masks and crops only")
            pipe = copy.copy(self.pipe)
            pipe.last_scale = rec.scale
            t0 = time.perf_counter()
            with_views = getattr(pipe, "classify_with_views", None)
            own, views = with_views(rec.crops) if callable(with_views) else (pipe.classify(rec.crops), None)
            fuse = getattr(pipe, "with_morphology", None)  # a nucleus-morphology model averaged in (serve.py morphology=)
            probs = fuse(rec.rgb, np.asarray(rec.labels), rec.instances, own) if callable(fuse) else own
            classify_ms, t1 = _ms(t0), time.perf_counter()
            reviewer = getattr(pipe, "review", None)  # per-cell review reasons (wbc.review), where the pipeline has them
            fused = {"classifier_probs": own} if probs is not own else {}  # its threshold reads the classifier's own
            review = reviewer(rec.rgb.shape[:2], rec.instances, probs, views, rec.appearance, **fused) if callable(reviewer) else None
            rec.class_probs, rec.review = np.asarray(probs), review
            rec.rows = co.cell_rows(rec.instances, self.classes, rec.class_probs, review, rec.measurements)
            rec.status = "classified"
            rec.cache = {k: v for k, v in rec.cache.items() if k == "image.png"}
            rec.timings.update(classify_ms=classify_ms, review_ms=_ms(t1))
            return self.publish(rec)

    # ------------------------------------------------------------------------- what the page shows
    def publish(self, rec: ImageRecord) -> dict:
        """Snapshot the record for the GETs (the caller holds rec.lock, or nobody else sees rec yet)."""
        rec.view = View(self.state(rec), rec.crops)
        rec.measure(len(json.dumps(rec.view.state, default=str)))
        return rec.view.state

    def view(self, rec: ImageRecord) -> dict:
        """The last finished step's state, read without the lock (never waits for a running step)."""
        return rec.view.state if rec.view is not None else self.state(rec)

    def state(self, rec: ImageRecord) -> dict:
        """Everything the page needs about one image (JSON-ready)."""
        h, w = rec.rgb.shape[:2]
        scale = rec.scale.to_dict() if rec.scale is not None and hasattr(rec.scale, "to_dict") else None
        # inside_x/y: a point surely in the cell (its centroid is not, on a curved nucleus): where the page puts a label
        cells = [{**row, "polygon": poly, **_inside(rec, i)} for i, (row, poly) in enumerate(zip(rec.rows, rec.polygons))]
        return {
            "id": rec.id, "name": rec.name, "width": w, "height": h, "status": rec.status,
            "count": len(rec.rows) if rec.labels is not None else None,
            "summary": co.summary_line(rec.rows) if rec.labels is not None else "",
            "counts": co.class_counts(rec.rows, self.classes) if rec.status == "classified" else {},
            "review_count": sum(1 for r in rec.rows if r.get("review")),
            "scale": scale, "scale_text": scale_text(scale, w, h, self.pipe), "timings": dict(rec.timings),
            "appearance": rec.appearance, "appearance_text": appearance_text(rec.appearance),
            "cells": cells,
        }

    # ------------------------------------------------------------------------- downloads
    def download(self, rec: ImageRecord, kind: str) -> bytes:
        """One download of one image, encoded once and cached until its results change."""
        if kind not in DOWNLOADS:
            raise NotFound(f"no download {kind!r}: the downloads of an image are {', '.join(DOWNLOADS)}")
        with rec.lock:
            if rec.labels is None:
                raise StepError(f"{rec.name}: segment this image first; downloads need its cells")
            try:
                return rec.cached(kind, lambda: self._encoders(rec)[kind]())  # the store may drop it at any time (ResultStore._evict)
            except ValueError as err:  # more cells than a 16-bit label PNG holds: this image's files cannot be written
                raise StepError(f"{rec.name}: {err}") from err

    def _encoders(self, rec: ImageRecord) -> dict[str, Callable[[], bytes]]:
        labels, classes, stem = rec.labels, self.classes, rec.stem
        geo = co.cells_geojson(labels, rec.instances, rec.rows, classes, rec.name)

        def crops_zip() -> bytes:
            return co.zip_bytes({co.crop_name(stem, r["cell"]): co.png_bytes(shown(c, self.shown_channels)) for r, c in zip(rec.rows, rec.crops)})

        def all_zip() -> bytes:
            return co.zip_bytes(self.files(rec))

        return {
            "mask.png": lambda: co.mask_png(labels),
            "labels.png": lambda: co.label_png(labels),
            "overlay.png": lambda: co.png_bytes(co.overlay_image(rec.rgb, labels, rec.instances, rec.rows)),
            "cells.csv": lambda: co.cells_csv(rec.rows, classes),
            "cells.geojson": lambda: json.dumps(geo).encode("utf-8"),
            "crops.zip": crops_zip,
            "all.zip": all_zip,
        }

    @property
    def shown_channels(self) -> int | None:
        """How many of a crop's channels the page and the downloads show (CellPipeline.shown_channels)."""
        return getattr(self.pipe, "shown_channels", None)

    def files(self, rec: ImageRecord) -> dict[str, bytes]:
        """All of one image's files by name (the per-image ZIP and the all-images ZIP)."""
        return co.image_files(rec.stem, rec.rgb, rec.labels, rec.instances, rec.rows, rec.crops, self.classes, rec.name, self.shown_channels)

    def display_png(self, rec: ImageRecord) -> bytes:
        """The image as the page shows it (a 16-bit TIFF cannot be shown by a browser): fast PNG. The
        pixels never change after upload, so this does not wait for a step running on the image."""
        return rec.cached("image.png", lambda: co.png_bytes(rec.rgb, compression=1))

    def crop_png(self, rec: ImageRecord, cell: int) -> bytes:
        """One cell's crop from the last finished step (the cells the page shows), without the lock."""
        view = rec.view
        if view is None or view.state["count"] is None:
            raise StepError(f"{rec.name}: segment this image first; crops need its cells")
        crop = view.crop(cell)
        if crop is None:
            ids = [c["cell"] for c in view.state["cells"]]
            there = f"its cells are {ids[0]} to {ids[-1]}" if ids else "it has no cells"
            raise NotFound(f"{rec.name}: no cell {cell}; {there}")
        return co.png_bytes(shown(crop, self.shown_channels), compression=1)


def interior_points(labels: np.ndarray, instances: list) -> list[tuple[float, float]]:
    """Per cell, the centre (x, y) of its pixel farthest from its border, in the outlines' coordinates (a pixel
    spans [x, x + 1]): inside the cell whatever its shape (the centroid of a band or horseshoe nucleus lies
    outside it). Of equally deep pixels, the one nearest the centroid."""
    points = []
    for inst in instances:
        y0, x0, y1, x1 = inst.bbox
        mask = np.pad((np.asarray(labels[y0:y1, x0:x1]) == inst.label).astype(np.uint8), 1)
        depth = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
        ys, xs = np.nonzero(depth >= depth.max() - 1e-6) if mask.any() else (np.array([1]), np.array([1]))
        k = int(np.argmin((ys - 1 + y0 - inst.centroid[0]) ** 2 + (xs - 1 + x0 - inst.centroid[1]) ** 2))
        points.append((float(xs[k] - 1 + x0) + 0.5, float(ys[k] - 1 + y0) + 0.5))
    return points


def _inside(rec: ImageRecord, i: int) -> dict:
    if i >= len(rec.inside):  # cannot happen after segment; a record built elsewhere gets the centroid
        return {}
    return {"inside_x": rec.inside[i][0], "inside_y": rec.inside[i][1]}


def appearance_text(check: dict | None) -> str:
    """The page's warning for an image unlike the model's training images ("" otherwise)."""
    if not check or not check.get("unlike_training"):
        return ""
    return (f"This image's colours are unlike the {check['model']}'s training images (colour distance {check['distance']:.1f} "
            f"> {check['threshold']:.1f}: another stain, light or camera). A model trained on other smears is often confidently "
            "wrong on such images: every cell is flagged for review.")


def scale_text(scale: dict | None, w: int, h: int, pipe: Any) -> str:
    """How the image was processed, in words (the page's 'processed at' line)."""
    if scale is None:
        return ""
    size = int((getattr(pipe, "seg_info", {}) or {}).get("image_size") or 0)
    factor = scale.get("factor")
    if factor is None:
        return f"{w}x{h} px resized to the network's {size}x{size} in one pass ({scale.get('how', '')})"
    return f"{w}x{h} px at scale {factor:.3g} ({round(w * factor)}x{round(h * factor)} px) in {size} px tiles ({scale.get('how', '')})"
