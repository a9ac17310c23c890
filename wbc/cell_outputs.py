"""Per-cell outputs, written one way for predict.py and the web app: the cell table (rows, CSV via the
csv module), QuPath GeoJSON, the binary nucleus mask PNG, the 16-bit instance label PNG, the overlay,
the crops and a ZIP of all of them.

Everything here returns bytes or plain data (no file paths), so the web app can stream it and
predict.py can write it atomically (wbc.io). Pure numpy/OpenCV: no Lightning, no Hydra.

Coordinates: full-resolution pixels, origin at the top-left corner of the image; pixel (row r,
column c) covers x in [c, c+1), y in [r, r+1), so its centre is (c + 0.5, r + 0.5), as QuPath has it.
A cell's polygon runs along its pixels' outer edges (wbc.outlines, as QuPath traces a label image): its
area is the cell's pixel count (a hole is an interior ring), and pixels touching only at a corner are parts of one
MultiPolygon meeting at that point, so every polygon is valid.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from wbc.cells import shown
from wbc.morphology import FEATURES as MEASUREMENTS
from wbc.outlines import mask_polygons
from wbc.overlay import label_cells
from wbc.postprocess import Instance
from wbc.spreadsheet import guard

# distinct colours that read on light and dark backgrounds (Trubetskoy's list); class i gets colour i
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
)
UNCLASSIFIED_COLOUR = (255, 225, 25)
BASE_COLUMNS = ["cell", "class", "probability", "review", "review_reasons", "area", "centroid_x", "centroid_y", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"]


def class_colour(classes: Sequence[str], name: str | None) -> tuple[int, int, int]:
    """The RGB colour of a class (the same on the page, the overlay PNG and in QuPath)."""
    if name is None or name not in classes:
        return UNCLASSIFIED_COLOUR
    return CLASS_COLOURS[list(classes).index(name) % len(CLASS_COLOURS)]


def cell_columns(classes: Sequence[str]) -> list[str]:
    """The table's columns: the cell, its class, review mark, geometry, the nucleus measurements
    (wbc.morphology.FEATURES), then every class probability."""
    return [*BASE_COLUMNS, *MEASUREMENTS, *(f"p_{c}" for c in classes)]


def cell_rows(
    instances: Sequence[Instance], classes: Sequence[str], class_probs: np.ndarray | None = None, review: Sequence[Sequence[str]] | None = None,
    measurements: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """One row per cell. `class_probs` None or (n, 0) = not classified (class and probabilities empty);
    `review` one list of reasons per cell (empty = not flagged) when the pipeline gives them;
    `measurements` (n, MEASUREMENTS) from wbc.morphology.cell_measurements (NaN = not measurable: empty)."""
    probs = None if class_probs is None or not np.size(class_probs) else np.asarray(class_probs, dtype=float)
    if measurements is not None and np.shape(measurements) != (len(instances), len(MEASUREMENTS)):
        raise ValueError(f"cell_rows: measurements of shape {np.shape(measurements)}, expected ({len(instances)}, {len(MEASUREMENTS)})")
    rows = []
    for k, inst in enumerate(instances):
        y0, x0, y1, x1 = (int(v) for v in inst.bbox)
        reasons = [str(r) for r in review[k]] if review is not None and k < len(review) else []
        row: dict[str, Any] = {
            "cell": int(inst.label), "class": None, "probability": None,
            "review": "yes" if reasons else "", "review_reasons": "; ".join(reasons),
            "area": int(inst.area), "centroid_x": round(float(inst.centroid[1]) + 0.5, 2), "centroid_y": round(float(inst.centroid[0]) + 0.5, 2),
            "bbox_x0": x0, "bbox_y0": y0, "bbox_x1": x1, "bbox_y1": y1,
        }
        if measurements is not None:
            row.update({name: round(float(v), 5) if np.isfinite(v) else None for name, v in zip(MEASUREMENTS, measurements[k])})
        if probs is not None:
            p = probs[k]
            row["class"] = str(classes[int(np.argmax(p))])
            row["probability"] = float(np.max(p))
            row.update({f"p_{c}": float(v) for c, v in zip(classes, p)})
        rows.append(row)
    return rows


def summary_line(rows: Sequence[Mapping[str, Any]]) -> str:
    """'12 cells: 9 neutrophil, 3 lymphoblast' (the model's classes only, most frequent first)."""
    n = len(rows)
    if n == 0:
        return "no cells found"
    head = f"{n} cell" + ("s" if n != 1 else "")
    counts = Counter(r["class"] for r in rows if r.get("class"))
    if not counts:
        return head + " (not classified yet)"
    return head + ": " + ", ".join(f"{c} {name}" for name, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def class_counts(rows: Sequence[Mapping[str, Any]], classes: Sequence[str]) -> dict[str, int]:
    counts = Counter(r["class"] for r in rows if r.get("class"))
    return {c: int(counts.get(c, 0)) for c in classes}


# ----------------------------------------------------------------------------- CSV
def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    return f"{v:.5f}" if isinstance(v, float) else guard(v)


def csv_records(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[list[Any]]:
    """Rows as CSV records (floats to 5 decimals, missing values empty, text a spreadsheet cannot run)."""
    return [[_csv_value(r.get(c)) for c in columns] for r in rows]


def cells_csv(rows: Sequence[Mapping[str, Any]], classes: Sequence[str]) -> bytes:
    """The cell table as UTF-8 CSV with a header (the csv module: commas, quotes, newlines stay one field)."""
    columns = cell_columns(classes)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    writer.writerows(csv_records(rows, columns))
    return buf.getvalue().encode("utf-8")


# ----------------------------------------------------------------------------- polygons and GeoJSON
def _closed(ring: np.ndarray) -> list[list[float]]:
    pts = [[round(float(x), 2), round(float(y), 2)] for x, y in ring]
    return [*pts, pts[0]]


def cell_polygons(labels: np.ndarray, inst: Instance) -> list[list[np.ndarray]]:
    """The cell's outline as polygons [outer ring, *holes] (rings n x 2, x/y of pixel corners in
    full-resolution pixels, see the module docstring): one per part, largest first, together exactly
    the cell's pixels (a hole in a nucleus stays a hole, so QuPath's area is the table's pixel count)."""
    y0, x0, y1, x1 = (int(v) for v in inst.bbox)
    polygons = mask_polygons(labels[y0:y1, x0:x1] == inst.label)
    if not polygons:  # no pixel of the cell in its box (an edited label map): the box itself
        polygons = [[np.array([[0, 0], [x1 - x0, 0], [x1 - x0, y1 - y0], [0, y1 - y0]], dtype=np.float64)]]
    return [[r + (x0, y0) for r in rings] for rings in polygons]


def cells_geojson(labels: np.ndarray, instances: Sequence[Instance], rows: Sequence[Mapping[str, Any]], classes: Sequence[str], image: str | None = None) -> dict:
    """A QuPath-readable FeatureCollection: one feature per cell (objectType "detection": a nucleus
    outline, not a QuPath cell with its cytoplasm), its class {name, color} when classified and the
    row's numbers (geometry, nucleus measurements, probabilities) as flat `measurements`."""
    features = []
    for inst, row in zip(instances, rows):
        polygons = [[_closed(r) for r in rings] for rings in cell_polygons(labels, inst)]
        geometry = {"type": "Polygon", "coordinates": polygons[0]} if len(polygons) == 1 else {"type": "MultiPolygon", "coordinates": polygons}
        measurements = {"cell": row["cell"], "area_px": row["area"], "centroid_x_px": row["centroid_x"], "centroid_y_px": row["centroid_y"], "review": 1 if row.get("review") else 0}
        measurements.update({name: row[name] for name in MEASUREMENTS if row.get(name) is not None})
        if row.get("class"):
            measurements["probability"] = round(float(row["probability"]), 5)
            measurements.update({f"p_{c}": round(float(row[f"p_{c}"]), 5) for c in classes})
        props: dict[str, Any] = {"objectType": "detection", "name": f"cell {row['cell']}", "isLocked": False, "measurements": measurements}
        if row.get("class"):
            props["classification"] = {"name": row["class"], "color": list(class_colour(classes, row["class"]))}
        if row.get("review_reasons"):
            props["review_reasons"] = row["review_reasons"]
        features.append({"type": "Feature", "id": f"cell-{row['cell']}", "geometry": geometry, "properties": props})
    out: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if image is not None:
        out["properties"] = {"image": image}
    return out


# ----------------------------------------------------------------------------- images
def png_bytes(image: np.ndarray, compression: int = 3) -> bytes:
    """RGB / grey uint8 or grey uint16 array -> PNG bytes (16-bit stays 16-bit)."""
    arr = np.asarray(image)
    if arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG needs uint8 or uint16 pixels, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise OSError("could not encode the PNG")
    return buf.tobytes()


def mask_png(labels: np.ndarray) -> bytes:
    """The binary nucleus mask: 255 nucleus, 0 background (8-bit)."""
    return png_bytes((np.asarray(labels) > 0).astype(np.uint8) * 255)


def label_png(labels: np.ndarray) -> bytes:
    """The instance label map as a 16-bit grey PNG: pixel value = cell id (0 background)."""
    labels = np.asarray(labels)
    if labels.size and int(labels.max()) > 65535:
        raise ValueError(f"{int(labels.max())} cells do not fit a 16-bit label PNG (at most 65535)")
    return png_bytes(labels.astype(np.uint16))


def overlay_image(rgb: np.ndarray, labels: np.ndarray, instances: Sequence[Instance], rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The image with each cell's contour and `id:class probability` (or the id before classification)."""
    texts = [f"{r['cell']}:{str(r['class'])[:5]} {r['probability']:.2f}" if r.get("class") else str(r["cell"]) for r in rows]
    return label_cells(rgb, labels, texts, [inst.bbox for inst in instances])


def crop_name(stem: str, cell: int) -> str:
    return f"{stem}_cell{cell:02d}.png"


def image_files(
    stem: str, rgb: np.ndarray, labels: np.ndarray, instances: Sequence[Instance], rows: Sequence[Mapping[str, Any]],
    crops: Sequence[np.ndarray], classes: Sequence[str], image: str | None = None, channels: int | None = None,
) -> dict[str, bytes]:
    """Every download of one image, by file name: mask, 16-bit labels, overlay, cells CSV, GeoJSON, crops
    (their first `channels`: wbc.cells.shown)."""
    import json

    files = {
        f"{stem}_mask.png": mask_png(labels),
        f"{stem}_labels.png": label_png(labels),
        f"{stem}_overlay.png": png_bytes(overlay_image(rgb, labels, instances, rows)),
        f"{stem}_cells.csv": cells_csv(rows, classes),
        f"{stem}_cells.geojson": json.dumps(cells_geojson(labels, instances, rows, classes, image)).encode("utf-8"),
    }
    for row, c in zip(rows, crops):
        files[f"crops/{crop_name(stem, row['cell'])}"] = png_bytes(shown(c, channels))
    return files


def zip_bytes(files: Mapping[str, bytes]) -> bytes:
    """A ZIP of name -> bytes (PNGs are stored, text deflated: PNG does not compress further)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            kind = zipfile.ZIP_STORED if name.endswith(".png") else zipfile.ZIP_DEFLATED
            zf.writestr(name, data, compress_type=kind)
    return buf.getvalue()
