"""Results kept in memory for the page, bounded so a lab PC left open all day never fills up: at most
`max_images` images, none older than `max_age_min` minutes, at most `max_mb` of pixels and cached
downloads. Over `max_mb` the cached downloads (re-created on the next request) go first, the least
recently used first and only until the rest fits (dropping them all would make a server near its limit
encode every download again each time), then whole images, the oldest first. Every image can be
deleted. Nothing is written to disk.
"""

from __future__ import annotations

import itertools
import re
import secrets
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wbc.postprocess import Instance


def display_name(name: str | None) -> str:
    """The uploaded file name, shown to the user only (never used as a path): last path part,
    control characters removed, at most 120 characters."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip()
    return base[:120] or "image"


STEM_MAX = 60
_USES = itertools.count()  # the order cached downloads were last used in (next() is atomic under the GIL)


def safe_stem(name: str) -> str:
    """An ASCII file stem for downloads: the name without extension, other characters as `_`. A stem
    longer than 60 characters keeps its first 30 and its last 29 (joined by `_`): lab names differ at
    the end (`..._Field_0001`, `..._Field_0002`), so cutting the tail off would give them one name."""
    stem = name.rsplit(".", 1)[0] if "." in name.strip(".") else name
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()).strip("_")
    if len(stem) > STEM_MAX:
        head, tail = STEM_MAX // 2, STEM_MAX // 2 - 1
        stem = stem[:head].rstrip("_") + "_" + stem[-tail:].lstrip("_")
    return stem or "image"


@dataclass(frozen=True)
class View:
    """What the GET requests answer about one image: its state (Engine.state) and the crops of the same
    run, published together at the end of each step (one attribute assignment), never half-updated."""

    state: dict
    crops: list[np.ndarray]

    def crop(self, cell: int) -> np.ndarray | None:
        return next((c for row, c in zip(self.state["cells"], self.crops) if row["cell"] == cell), None)


@dataclass
class ImageRecord:
    """One uploaded image and what has been computed for it so far."""

    id: str
    name: str
    stem: str
    rgb: np.ndarray
    created: float = field(default_factory=time.time)
    status: str = "uploaded"  # uploaded -> segmented -> classified
    labels: np.ndarray | None = None
    instances: list[Instance] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)
    polygons: list[list[list[list[float]]]] = field(default_factory=list)  # per cell, its rings
    inside: list[tuple[float, float]] = field(default_factory=list)  # per cell, a point inside it (engine.interior_points)
    measurements: np.ndarray | None = None  # per cell, the nucleus measurements (wbc.morphology.cell_measurements)
    scale: Any = None  # the pipeline's ScaleChoice for this image (reported; the review needs it)
    appearance: dict | None = None  # the image's appearance check (CellPipeline.check_appearance; the review needs it)
    class_probs: np.ndarray | None = None
    review: list[list[str]] | None = None
    rows: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    cache: dict[str, bytes] = field(default_factory=dict)  # encoded downloads, cleared when results change
    cache_used: dict[str, int] = field(default_factory=dict)  # when each was last used (_USES): the store drops the oldest first
    lock: threading.Lock = field(default_factory=threading.Lock)  # one step at a time per image
    view: View | None = None  # the last finished step's answer (Engine.publish), read by GETs without the lock
    counted: int = 0  # bytes of the pixels, labels, crops and published cell state, measured when a step publishes

    def measure(self, state_json_bytes: int = 0) -> None:
        """What this record holds besides its cached downloads, once per step (the store sums it on every request:
        walking every crop there cost 9 ms a request at 100 images x 1000 cells). The published state (rows,
        polygons as Python floats) is ~4x its JSON text: counted, it was a third of a record left out of max_mb."""
        crops = sum(c.nbytes for c in self.crops)
        labels = self.labels.nbytes if self.labels is not None else 0
        self.counted = self.rgb.nbytes + labels + crops + 4 * state_json_bytes

    @property
    def nbytes(self) -> int:
        if not self.counted:
            self.measure()
        return self.counted + self.cache_bytes

    @property
    def cache_bytes(self) -> int:
        return sum(len(v) for v in list(self.cache.values()))

    def drop_cache(self) -> int:
        """Forget the cached downloads (each is encoded again when asked for); the bytes freed. The dict
        is replaced, not emptied, so a step or download holding the old one is not disturbed."""
        freed, self.cache = self.cache_bytes, {}
        return freed

    def cached(self, kind: str, make: Callable[[], bytes]) -> bytes:
        """The cached download `kind`, encoded by make() when missing, marked as just used so that the
        store, over its limit, drops the downloads nobody asked for lately first."""
        data = self.cache.get(kind)  # the store may replace the dict at any time (drop_cached)
        if data is None:
            data = self.cache[kind] = make()
        self.cache_used[kind] = next(_USES)
        return data

    def drop_cached(self, kind: str) -> int:
        """Forget one cached download; the bytes freed. The dict is replaced, as in drop_cache."""
        cache = self.cache
        data = cache.get(kind)
        if data is None:
            return 0
        self.cache = {k: v for k, v in cache.items() if k != kind}
        return len(data)


class ResultStore:
    """Thread-safe id -> ImageRecord, with the count, age and size limits of the module docstring."""

    def __init__(self, max_images: int = 100, max_age_min: float = 240, max_mb: float = 2048) -> None:
        if max_images < 1 or max_age_min <= 0 or max_mb <= 0:
            raise ValueError(f"store limits must be positive: max_images={max_images}, max_age_min={max_age_min}, max_mb={max_mb}")
        self.max_images, self.max_age_s, self.max_bytes = int(max_images), 60.0 * max_age_min, int(max_mb * 2**20)
        self._items: dict[str, ImageRecord] = {}
        self._lock = threading.Lock()

    def add(self, name: str, rgb: np.ndarray, prepare: Callable[[ImageRecord], None] | None = None) -> ImageRecord:
        """Store a decoded image under a new random id, evicting the oldest beyond the limits.
        `prepare(rec)` runs before the record is visible to any other request (its first view)."""
        shown = display_name(name)
        rec = ImageRecord(id=secrets.token_hex(16), name=shown, stem=safe_stem(shown), rgb=rgb)
        if prepare is not None:
            prepare(rec)
        with self._lock:
            self._items[rec.id] = rec
            self._evict(keep=rec.id)
        return rec

    def get(self, image_id: str) -> ImageRecord | None:
        with self._lock:
            self._evict()
            return self._items.get(image_id)

    def delete(self, image_id: str) -> bool:
        with self._lock:
            return self._items.pop(image_id, None) is not None

    def clear(self) -> int:
        """Delete every image on the server, every user's; how many were deleted."""
        with self._lock:
            n = len(self._items)
            self._items.clear()
            return n

    def delete_ids(self, ids: list[str]) -> tuple[int, list[str]]:
        """Delete these images: (how many were deleted, the ids not here, in their order). An id not
        here expired, was deleted or never was: the caller says so rather than ignoring it."""
        with self._lock:
            self._evict()  # an expired image is unknown here, as it is to every other request
            unknown = [i for i in dict.fromkeys(ids) if self._items.pop(i, None) is None]
            return len(set(ids)) - len(unknown), unknown

    def all(self) -> list[ImageRecord]:
        with self._lock:
            self._evict()
            return list(self._items.values())

    def usage(self) -> dict[str, float]:
        with self._lock:
            return {"images": len(self._items), "mb": round(sum(r.nbytes for r in self._items.values()) / 2**20, 1)}

    def trim(self) -> None:
        """Apply the limits again (after a step made a record bigger)."""
        with self._lock:
            self._evict()

    def _evict(self, keep: str | None = None) -> None:
        now = time.time()
        for rid in [rid for rid, r in self._items.items() if now - r.created > self.max_age_s and rid != keep]:
            del self._items[rid]
        order = sorted(self._items.values(), key=lambda r: r.created)
        total = sum(r.nbytes for r in order)
        if total > self.max_bytes:  # cached downloads first (re-created; an image in use is not), least recently used first
            used = sorted(((r.cache_used.get(k, -1), r, k) for r in order for k in list(r.cache)), key=lambda e: e[0])
            for _, rec, kind in used:
                if total <= self.max_bytes:
                    break
                total -= rec.drop_cached(kind)
        for rec in order:
            if len(self._items) <= self.max_images and total <= self.max_bytes:
                break
            if rec.id == keep:
                continue
            total -= rec.nbytes
            del self._items[rec.id]
