"""What the web app tests share: a stand-in segmenter that finds the dark nuclei of drawn fields (so
an image has a known number of cells, whatever the weights), drawn fields, and image encoders.

Nothing is trained: the classifier is the untrained tiny one (tests.helpers_models.tiny_modules).
"""

from __future__ import annotations

import functools
import io
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import torch
from fastapi.testclient import TestClient
from lightning.fabric.utilities.data import AttributeDict

from wbc.inference import CellPipeline

BACKGROUND, CYTOPLASM, NUCLEUS = (235, 225, 200), (190, 140, 135), (110, 40, 105)
CENTRES = ((30, 40), (70, 110), (35, 130))  # (y, x) of the three cells of `field()`


class DarkSegmenter(torch.nn.Module):
    """Nucleus = the dark pixels (mean intensity below 0.45), at a 128 px network size."""

    def __init__(self, data_info: dict, image_size: int = 128, delay_s: float = 0.0) -> None:
        super().__init__()
        self.hparams = AttributeDict(data_info={**data_info, "image_size": image_size}, stage="segmentation")
        self.delay_s = delay_s
        self.blank = False  # True: finds no nucleus (a run that differs from the last one)
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    @torch.no_grad()
    def predict_probability(self, x: torch.Tensor) -> torch.Tensor:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            return (x.mean(1, keepdim=True) < (-1 if self.blank else 0.45)).float()
        finally:
            with self._lock:
                self.running -= 1


@functools.cache
def tiny_pair():
    """The untrained tiny (segmenter, classifier), built once per test process and shared by the API
    and browser tests (nothing is written: the configs are only composed)."""
    from tests.helpers_models import tiny_modules

    return tiny_modules(Path(tempfile.gettempdir()) / "wbc_web_tests")


def web_pipeline(clf, delay_s: float = 0.0) -> CellPipeline:
    """Dark-nucleus segmenter + the tiny classifier, with the classifier's preprocessing minus CLAHE
    (so 'dark' means the drawn nucleus)."""
    info = dict(clf.hparams.data_info)
    info["preprocess"] = {**(info.get("preprocess") or {}), "clahe": False}
    return CellPipeline(DarkSegmenter(info, delay_s=delay_s), clf)


def field(h: int = 100, w: int = 160, centres=CENTRES, seed: int = 0) -> np.ndarray:
    """A light field with one cell (pink cytoplasm, dark nucleus) at each centre."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.int16)
    img[:] = BACKGROUND
    yy, xx = np.mgrid[:h, :w]
    for cy, cx in centres:
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        img[d2 <= 14**2] = CYTOPLASM
        img[d2 <= 7**2] = NUCLEUS
    return (img + rng.integers(-6, 7, img.shape)).clip(0, 255).astype(np.uint8)


def curved_field(kind: str, h: int = 120, w: int = 200, seed: int = 0) -> np.ndarray:
    """A round cell at (40, 40) and one whose nucleus is curved, so that its centroid lies outside it: "arc" (a
    band neutrophil's) or "U" (a horseshoe), centred on (60, 120)."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.int16)
    img[:] = BACKGROUND
    yy, xx = np.mgrid[:h, :w]
    d2 = (yy - 40) ** 2 + (xx - 40) ** 2
    img[d2 <= 14**2], img[d2 <= 7**2] = CYTOPLASM, NUCLEUS
    cy, cx = 60, 120
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    img[d2 <= 24**2] = CYTOPLASM
    nucleus = {
        "arc": (d2 <= 14**2) & (d2 >= 7**2) & (xx < cx + 2),
        "U": ((abs(xx - cx) <= 12) & (yy - cy >= 4) & (yy - cy <= 10)) | ((abs(abs(xx - cx) - 9) <= 3) & (abs(yy - cy) <= 10)),
    }[kind]
    img[nucleus] = NUCLEUS
    return (img + rng.integers(-6, 7, img.shape)).clip(0, 255).astype(np.uint8)


def field_profile():
    """The colour profile (wbc.appearance) of the drawn fields, their nuclei the drawn dark discs: a
    classifier "trained on such fields", for the unlike-the-training-images check."""
    from wbc.appearance import AppearanceProfile, fit_profile

    yy, xx = np.mgrid[:100, :160]
    nucleus = np.any([(yy - cy) ** 2 + (xx - cx) ** 2 <= 7**2 for cy, cx in CENTRES], axis=0)
    return AppearanceProfile.from_dict(fit_profile({"fields": ([(field(seed=i), nucleus) for i in range(20)],
                                                               [(field(seed=i), nucleus) for i in range(20, 30)])}))


def png(arr: np.ndarray) -> bytes:
    """RGB, RGBA or grey array (uint8 or uint16) -> PNG bytes."""
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = arr[..., ::-1]
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., [2, 1, 0, 3]]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr))
    assert ok
    return buf.tobytes()


def jpeg(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(arr if arr.ndim == 2 else arr[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return buf.tobytes()


def tiff16(arr: np.ndarray) -> bytes:
    """An RGB uint8 array as a 16-bit RGB TIFF (values x 257)."""
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, arr.astype(np.uint16) * 257, photometric="rgb")
    return buf.getvalue()


def make_client(clf, **settings) -> TestClient:
    """A client of an app of its own (Settings: limits, jobs; delay_s: the stand-in segmenter's)."""
    from wbc.web.app import Settings, create_app

    return TestClient(create_app(web_pipeline(clf, settings.pop("delay_s", 0.0)), settings=Settings(**settings)))


def upload(c: TestClient, data: bytes, name: str = "field.png", url: str = "/api/images"):
    """POST one file as the page does (multipart, field `file`)."""
    return c.post(url, files={"file": (name, data, "application/octet-stream")})


def decode(data: bytes, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    assert arr is not None, "not a decodable PNG"
    return arr


def check_geojson(geo: dict, labels: np.ndarray, classes: list[str], rows: list[dict]) -> None:
    """One valid polygon per cell, in full-resolution pixels, over that cell's pixels, with QuPath's keys."""
    from shapely.geometry import shape

    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == len(rows)
    for feat, row in zip(geo["features"], rows):
        geom = shape(feat["geometry"])
        assert geom.is_valid and geom.area > 0
        minx, miny, maxx, maxy = geom.bounds
        assert min(minx, miny) >= 0 and maxx <= labels.shape[1] and maxy <= labels.shape[0]
        assert geom.symmetric_difference(pixel_squares(labels == int(row["cell"]))).area < 1e-9  # exactly the cell's pixels
        props = feat["properties"]
        assert props["objectType"] == "detection" and props["classification"]["name"] == row["class"] in classes
        assert len(props["classification"]["color"]) == 3
        assert all(isinstance(v, int | float) for v in props["measurements"].values())
        assert props["measurements"]["area_px"] == int(row["area"])


def pixel_squares(mask: np.ndarray):
    """The union of a mask's pixel squares, holes kept (what a cell's outline must cover exactly)."""
    from shapely.geometry import box
    from shapely.ops import unary_union

    ys, xs = np.nonzero(mask)
    return unary_union([box(x, y, x + 1, y + 1) for y, x in zip(ys, xs)])


def check_outline(labels: np.ndarray, inst) -> None:
    """The cell's GeoJSON outline (wbc.cell_outputs.cell_polygons) is a valid polygon covering exactly
    the cell's pixels (QuPath's area = the table's), for ragged cells too."""
    from shapely.geometry import MultiPolygon, Polygon

    from wbc.cell_outputs import cell_polygons

    polygons = cell_polygons(labels, inst)
    geom = Polygon(polygons[0][0], polygons[0][1:]) if len(polygons) == 1 else MultiPolygon([Polygon(p[0], p[1:]) for p in polygons])
    assert geom.is_valid and geom.area > 0, polygons
    assert geom.symmetric_difference(pixel_squares(labels == inst.label)).area < 1e-9, polygons
    assert abs(geom.area - int((labels == inst.label).sum())) < 1e-9  # QuPath's area = the table's pixel count


def ragged_cells(fields: int, seed: int = 0) -> Iterator[tuple[np.ndarray, object]]:
    """(labels, instance) of random ragged 8-connected blobs: one-pixel necks, diagonal touches, single pixels."""
    from skimage.measure import label

    from wbc.postprocess import instances_from_labels

    rng = np.random.default_rng(seed)
    for _ in range(fields):
        labels, instances = instances_from_labels(label(rng.random((30, 30)) < 0.45, connectivity=2).astype(np.int32), 0)
        yield from ((labels, inst) for inst in instances)


@contextmanager
def held(monkeypatch, owner: object, name: str, timeout_s: float = 10.0) -> Iterator[threading.Event]:
    """owner.name stops when called until the block ends (at most timeout_s); yields the Event set when it is
    reached, so a test can look at the server while a step is half done."""
    inside, go, fn = threading.Event(), threading.Event(), getattr(owner, name)

    def stop_then_run(*args, **kwargs):
        inside.set()
        go.wait(timeout_s)
        return fn(*args, **kwargs)

    monkeypatch.setattr(owner, name, stop_then_run)
    try:
        yield inside
    finally:
        go.set()
