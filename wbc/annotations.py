"""A lab's annotated cells: points (image, x, y, label) as QuPath and the web app's "Your label" write them,
and the predicted cell of a predict.py run under each point.

A label is a point, not a cell number, so it outlives a new segmentation and meets the same cell in runs
with different segmenters. Used to score runs (wbc.evaluation.annotated, compare.py) and to cut a
labelled training set out of a run (wbc.data.cell_dataset, predict.py's annotated_dataset).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from wbc.spreadsheet import unguard_row

NOT_FOUND = "(not found)"


class AnnotationError(ValueError):
    """An annotation file or predict run that cannot be used: names the file, the row and what was expected."""


@dataclass(frozen=True)
class Point:
    """One annotated cell: where in its file it came from ("row 3": 1 = the first data row of a CSV; "feature 2
    point 5" of a GeoJSON), where it is in the image, what the lab says it is."""

    row: str
    image: str
    x: float
    y: float
    label: str


@dataclass(frozen=True)
class Run:
    """A predict.py output: its cells per image (keyed by every name the image goes by) and its classes."""

    path: Path
    classes: list[str]
    cells: dict[str, list[dict]]  # source path -> that image's cell rows
    names: dict[str, set[str]]  # image name (as given, file name, stem, source) -> source paths


def load_run(path: str | Path) -> Run:
    """Read a predict.py output dir (or its predictions.json): a complete run, one entry per input image."""
    p = Path(path)
    file = p / "predictions.json" if p.is_dir() else p
    if not file.is_file():
        raise AnnotationError(f"{path}: no predictions.json; expected a predict.py output dir (or its predictions.json)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AnnotationError(f"{file}: not the JSON predict.py writes ({err}); was it edited?") from None
    if not isinstance(data, dict) or data.get("status") != "complete":
        status = data.get("status") if isinstance(data, dict) else None
        raise AnnotationError(f"{file}: status {status!r}; labelled points need a complete predict run (rerun it)")
    if not data.get("classes"):
        raise AnnotationError(f"{file}: no classes; that run had no classifier (predict.py ... classifier=<run>)")
    cells: dict[str, list[dict]] = {}
    names: dict[str, set[str]] = {}
    for img in [*data.get("images", []), *data.get("failed", [])]:
        source = str(img.get("source") or img.get("image"))
        cells.setdefault(source, [])
        given = str(img.get("image", source))
        for name in {given, source, Path(given).name, Path(source).name, str(img.get("output_stem", ""))} - {""}:
            names.setdefault(name, set()).add(source)
    for c in data.get("cells", []):
        cells.setdefault(str(c.get("source") or c["image"]), []).append(c)
    return Run(file.parent, list(data["classes"]), cells, names)


TRAINED_DIRS = ("annotated_dataset", "pseudo_dataset")  # wbc.data.cell_dataset / pseudo_labels write them into a run


def fine_tune_cells(run_path: Path) -> set[tuple[str, int]]:
    """(output stem, cell) of the cells a fine-tune from this predict run trains or validates on: its
    annotated_dataset/ and pseudo_dataset/ splits' train and val ids (`images/<stem>_cell<NN>`), or every
    listed cell of one without a split file. A fair comparison scores other cells than these."""
    import re

    out: set[tuple[str, int]] = set()
    for d in TRAINED_DIRS:
        ids: list[str] = []
        try:
            if (run_path / d / "splits.json").is_file():
                split = json.loads((run_path / d / "splits.json").read_text(encoding="utf-8"))
                ids = [str(i) for fold in split.get("folds", []) for key in ("train", "val") for i in fold.get(key, [])]
            elif (run_path / d / "labels.csv").is_file():
                with open(run_path / d / "labels.csv", newline="", encoding="utf-8") as fh:
                    ids = [str(r.get("image", "")).rsplit(".", 1)[0] for r in csv.DictReader(fh)]
        except (OSError, ValueError, AttributeError):
            continue
        for i in ids:
            m = re.fullmatch(r"images/(.+)_cell(\d+)", i)
            if m:
                out.add((m.group(1), int(m.group(2))))
    return out


def read_points(path: str | Path, classes: Sequence[str]) -> tuple[list[Point], int]:
    """(the annotated points, how many had no label yet) of a CSV, or of QuPath GeoJSON (a .geojson file or a
    folder of them, `read_geojson_points`); any other bad entry is an error."""
    path = Path(path)
    if path.is_dir() or path.suffix.lower() in (".geojson", ".json"):
        return read_geojson_points(path, classes)
    if not path.is_file():
        raise AnnotationError(f"annotations={path}: no such file; expected a CSV with columns image, x, y, label "
                              "(or QuPath GeoJSON: a .geojson file or a folder of them)")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or [])
        xy = ("x", "y") if {"x", "y"} & cols or not {"centroid_x", "centroid_y"} & cols else ("centroid_x", "centroid_y")
        missing = {"image", "label", *xy} - cols
        if missing:
            raise AnnotationError(f"{path}: missing column(s) {sorted(missing)}; expected image, x, y, label "
                                  f"(or a copy of predictions.csv with a label column); found {sorted(cols)}")
        points, unlabelled, seen = [], 0, {}
        for i, r in enumerate(map(unguard_row, reader), start=1):
            label = (r.get("label") or "").strip()
            if not label:
                unlabelled += 1
                continue
            if label not in classes:
                raise AnnotationError(f"{path} row {i}: label {label!r} is not a class of the models ({', '.join(classes)}); "
                                      "correct it, or leave the row out")
            try:
                x, y = float(r[xy[0]]), float(r[xy[1]])
            except (TypeError, ValueError):
                raise AnnotationError(f"{path} row {i}: {xy[0]}={r[xy[0]]!r}, {xy[1]}={r[xy[1]]!r}; expected pixel coordinates") from None
            if not (math.isfinite(x) and math.isfinite(y)):
                raise AnnotationError(f"{path} row {i}: {xy[0]}, {xy[1]} must be finite pixel coordinates")
            key = (r["image"].strip(), round(x, 1), round(y, 1))
            if key in seen:
                raise AnnotationError(f"{path} row {i}: the same point as row {seen[key]} ({key[0]}, x={x:g}, y={y:g}); one row per cell")
            seen[key] = i
            points.append(Point(f"row {i}", key[0], x, y, label))
    if not points:
        raise AnnotationError(f"{path}: no row has a label; fill in the label column of the cells you checked")
    return points, unlabelled


def _centre(geometry: dict) -> list[tuple[float, float]]:
    """The points a geometry stands for: a Point, each point of a MultiPoint, a (Multi)Polygon's area centroid."""
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    if kind == "Point":
        return [(float(coords[0]), float(coords[1]))]
    if kind == "MultiPoint":
        return [(float(c[0]), float(c[1])) for c in coords]
    if kind in ("Polygon", "MultiPolygon"):
        rings = [coords[0]] if kind == "Polygon" else [poly[0] for poly in coords]
        area = cx = cy = 0.0
        for ring in rings:  # the shoelace formula over the outer rings
            for (x0, y0), (x1, y1) in zip(ring, ring[1:] + ring[:1]):
                cross = x0 * y1 - x1 * y0
                area, cx, cy = area + cross, cx + (x0 + x1) * cross, cy + (y0 + y1) * cross
        if area == 0:
            raise ValueError("a polygon without area")
        return [(cx / (3 * area), cy / (3 * area))]
    raise ValueError(f"geometry type {kind!r}; expected Point, MultiPoint, Polygon or MultiPolygon")


def read_geojson_points(path: Path, classes: Sequence[str]) -> tuple[list[Point], int]:
    """QuPath's GeoJSON export (Export objects as GeoJSON), one file per image named after it (`<image
    stem>.geojson`): every annotation object (objectType "annotation", as the lab draws them: points,
    MultiPoints or outlines) with its classification name as the label. Detection objects (a model's cells,
    e.g. predict.py's own geojson/) are not labels: they are skipped and counted with the unlabelled ones."""
    files = sorted(f for f in path.iterdir() if f.suffix.lower() in (".geojson", ".json")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise AnnotationError(f"annotations={path}: no GeoJSON file; expected QuPath's export, one <image stem>.geojson per image")
    points, skipped = [], 0
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise AnnotationError(f"{f}: not GeoJSON ({err})") from None
        features = data.get("features", []) if isinstance(data, dict) and data.get("type") == "FeatureCollection" else \
            data if isinstance(data, list) else [data]
        for i, feat in enumerate(features, start=1):
            props = (feat.get("properties") or {}) if isinstance(feat, dict) else {}
            label = str(((props.get("classification") or {}).get("name")) or "").strip()
            if props.get("objectType", "annotation") != "annotation" or not label:
                skipped += 1
                continue
            if label not in classes:
                raise AnnotationError(f"{f} feature {i}: classification {label!r} is not a class of the models "
                                      f"({', '.join(classes)}); rename the class in QuPath, or remove the object")
            try:
                centres = _centre(feat.get("geometry") or {})
            except (TypeError, ValueError, IndexError, KeyError) as err:
                raise AnnotationError(f"{f} feature {i}: {err}") from None
            points += [Point(f"feature {i}" + (f" point {k}" if len(centres) > 1 else ""), f.stem, x, y, label)
                       for k, (x, y) in enumerate(centres, start=1)]
    if not points:
        raise AnnotationError(f"annotations={path}: no classified annotation object; label cells in QuPath with classified "
                              f"points ({skipped} object(s) skipped: detections or unclassified)")
    return points, skipped


def resolve_image(run: Run, point: Point, file: Path) -> str:
    """The source path of the run's image the point names (exact name, file name or output stem)."""
    for name in (point.image, Path(point.image).name):
        sources = run.names.get(name, set())
        if len(sources) == 1:
            return next(iter(sources))
        if len(sources) > 1:
            raise AnnotationError(f"{file} {point.row}: image {point.image!r} names {len(sources)} inputs of {run.path} "
                                  f"({', '.join(sorted(sources))}); give its full path")
    examples = ", ".join(sorted(Path(s).name for s in run.cells)[:3])
    raise AnnotationError(f"{file} {point.row}: image {point.image!r} is not among the {len(run.cells)} images of "
                          f"{run.path} (e.g. {examples})")


def match_cell(cells: Sequence[dict], x: float, y: float, margin: float, labels: np.ndarray | None = None) -> dict | None:
    """The predicted cell under (x, y): the one whose nucleus pixel it is on (`labels`: the run's label map of
    the image; boxes overlap where nuclei touch, and the nearest centre there can be the neighbour's), else
    among cells whose nucleus box holds the point, else whose box grown by `margin` of its size on each side
    does (a point on the cytoplasm), the one with the nearest centre."""
    if labels is not None and 0 <= y < labels.shape[0] and 0 <= x < labels.shape[1]:
        under = int(labels[int(y), int(x)])
        hit = next((c for c in cells if int(c["cell"]) == under), None) if under else None
        if hit is not None:
            return hit

    def inside(c: dict, grow: float) -> bool:
        h, w = c["bbox_y1"] - c["bbox_y0"], c["bbox_x1"] - c["bbox_x0"]
        return c["bbox_x0"] - grow * w <= x < c["bbox_x1"] + grow * w and c["bbox_y0"] - grow * h <= y < c["bbox_y1"] + grow * h

    for grow in (0.0, margin):
        hits = [c for c in cells if inside(c, grow)]
        if hits:
            return min(hits, key=lambda c: (c["centroid_x"] - x) ** 2 + (c["centroid_y"] - y) ** 2)
    return None


def label_map(run: Run, source: str) -> np.ndarray | None:
    """The run's label map of one image (`labels/<stem>.png`, pixel = cell id), or None when it did not write
    one (an older run, or an image without cells): points then match by box, as before."""
    cells = run.cells.get(source) or []
    stem = cells[0].get("output_stem") if cells else None
    return _read_labels(run.path / "labels" / f"{stem}.png") if stem else None


def read_label_png(path: Path) -> np.ndarray:
    """A predict run's `labels/<stem>.png` as written: cell ids at full depth (16-bit past 255 cells)."""
    from wbc.data.imageio import decode_raw

    return decode_raw(path, full_depth=True)


@lru_cache(maxsize=8)
def _read_labels(path: Path) -> np.ndarray | None:
    return read_label_png(path) if path.is_file() else None


def matched_cells(run: Run, points: Sequence[Point], file: Path, margin: float) -> list[dict | None]:
    """The run's predicted cell under every point (None where there is none), by its label map where it wrote one."""
    out = []
    for p in points:
        source = resolve_image(run, p, file)
        out.append(match_cell(run.cells[source], p.x, p.y, margin, label_map(run, source)))
    return out


def one_point_per_cell(points: Sequence[Point], matched: Sequence[Sequence[dict | None]]) -> tuple[list[list[int]], list[dict], list[dict]]:
    """The lab's cells from its points, each scored once (`matched`: matched_cells' answer per run). Two points with
    the same label that a run puts on one predicted cell are one cell (the lab clicked it twice; a run that splits
    it is scored on its first point's part). Two points with different labels are two cells unless every run that
    found both puts them on one cell: a run that merged two differently labelled cells is scored on both, and its
    one call is wrong for one of them. Returns (groups of point indices to score, in file order, the first point first; `merged`: a second point
    with the same label, counted once; `conflicting`: points that every run puts on one cell but that carry
    different labels). Such a cell is left out of the scores of every run and listed, never one label picked."""
    parent = list(range(len(points)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def key(c: dict) -> tuple[str, int]:
        return str(c.get("source") or c.get("image")), int(c["cell"])

    shared: set[tuple[int, int]] = set()  # pairs of points some run puts on one cell
    for cells in matched:
        first: dict[tuple[str, int], int] = {}
        for i, c in enumerate(cells):
            if c is not None:
                j = first.setdefault(key(c), i)
                if j != i:
                    shared.add((j, i))
    for i, j in sorted(shared):
        # different labels: one cell only if no run that found both tells them apart
        if points[i].label == points[j].label or all(c[i] is None or c[j] is None or key(c[i]) == key(c[j]) for c in matched):
            a, b = root(i), root(j)
            parent[max(a, b)] = min(a, b)  # the group's root is its first point
    groups: dict[int, list[int]] = {}
    for i in range(len(points)):
        groups.setdefault(root(i), []).append(i)
    kept, merged, conflicting = [], [], []
    for g in groups.values():
        if len({points[i].label for i in g}) > 1:
            conflicting.append({"rows": [points[i].row for i in g], "labels": [points[i].label for i in g], "image": points[g[0]].image})
            continue
        merged += [{"row": points[i].row, "same_cell_as": points[g[0]].row} for i in g[1:]]
        kept.append(g)
    return kept, merged, conflicting


def calls(run: Run, points: Sequence[Point], file: Path, margin: float, cells: Sequence[dict | None] | None = None) -> list[str]:
    """The run's class for every point (NOT_FOUND where no predicted cell is under it); `cells`: matched_cells' answer."""
    out = []
    for cell in cells if cells is not None else matched_cells(run, points, file, margin):
        out.append(NOT_FOUND if cell is None else str(cell["class"]))
    return out
