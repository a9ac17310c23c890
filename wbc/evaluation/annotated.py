"""Score predict.py runs on the cells a lab annotated itself, and say whether one model beats another.

A lab without a labelled test set (a new microscope, stain, AdaBN or self-training from
`predict.py ... pseudo_dataset.per_class=K`) cannot tell from validation figures whether a model helped:
those only measure agreement with the model's own calls. What decides it is a few cells the lab labels by
eye. Annotations are points, as in QuPath: one CSV row per cell with `image`, `x`, `y` (pixels of the
original image; a copy of predictions.csv with its `centroid_x` / `centroid_y` works too) and `label`.
Each point is matched to the predicted cell under it in every run, so runs with different segmenters are
scored on the same cells, and a cell a run did not find counts as wrong (the lab's end-to-end question).

The comparison is paired (every model on the same cells): the difference of the chosen metric, a paired
permutation test that the verdict follows (valid at any number of cells), a class-stratified bootstrap
interval for the size of the difference, and McNemar's exact test on the cells one model gets right and
the other wrong. With 20-40 cells most differences are "cannot tell": the verdict says so instead of ranking.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NOT_FOUND = "(not found)"
METRICS = ("macro_f1", "accuracy", "balanced_accuracy")


class AnnotationError(ValueError):
    """An annotation file or predict run that cannot be scored: names the file, the row and what was expected."""


@dataclass(frozen=True)
class Point:
    """One annotated cell: the row it came from (1 = first data row), where it is, what the lab says it is."""

    row: int
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
    data = json.loads(file.read_text(encoding="utf-8"))
    if data.get("status") != "complete":
        raise AnnotationError(f"{file}: status {data.get('status')!r}; a comparison needs a complete predict run (rerun it)")
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


def read_points(path: str | Path, classes: Sequence[str]) -> tuple[list[Point], int]:
    """(the annotated points of a CSV, how many rows had no label yet); any other bad row is an error."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"annotations={path}: no such file; expected a CSV with columns image, x, y, label")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or [])
        xy = ("x", "y") if {"x", "y"} & cols or not {"centroid_x", "centroid_y"} & cols else ("centroid_x", "centroid_y")
        missing = {"image", "label", *xy} - cols
        if missing:
            raise AnnotationError(f"{path}: missing column(s) {sorted(missing)}; expected image, x, y, label "
                                  f"(or a copy of predictions.csv with a label column); found {sorted(cols)}")
        points, unlabelled, seen = [], 0, {}
        for i, r in enumerate(reader, start=1):
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
            points.append(Point(i, key[0], x, y, label))
    if not points:
        raise AnnotationError(f"{path}: no row has a label; fill in the label column of the cells you checked")
    return points, unlabelled


def resolve_image(run: Run, point: Point, file: Path) -> str:
    """The source path of the run's image the point names (exact name, file name or output stem)."""
    for name in (point.image, Path(point.image).name):
        sources = run.names.get(name, set())
        if len(sources) == 1:
            return next(iter(sources))
        if len(sources) > 1:
            raise AnnotationError(f"{file} row {point.row}: image {point.image!r} names {len(sources)} inputs of {run.path} "
                                  f"({', '.join(sorted(sources))}); give its full path")
    examples = ", ".join(sorted(Path(s).name for s in run.cells)[:3])
    raise AnnotationError(f"{file} row {point.row}: image {point.image!r} is not among the {len(run.cells)} images of "
                          f"{run.path} (e.g. {examples})")


def match_cell(cells: Sequence[dict], x: float, y: float, margin: float) -> dict | None:
    """The predicted cell under (x, y): among cells whose nucleus box holds the point, else whose box grown
    by `margin` of its size on each side does (a point on the cytoplasm), the one with the nearest centre."""
    def inside(c: dict, grow: float) -> bool:
        h, w = c["bbox_y1"] - c["bbox_y0"], c["bbox_x1"] - c["bbox_x0"]
        return c["bbox_x0"] - grow * w <= x < c["bbox_x1"] + grow * w and c["bbox_y0"] - grow * h <= y < c["bbox_y1"] + grow * h

    for grow in (0.0, margin):
        hits = [c for c in cells if inside(c, grow)]
        if hits:
            return min(hits, key=lambda c: (c["centroid_x"] - x) ** 2 + (c["centroid_y"] - y) ** 2)
    return None


def calls(run: Run, points: Sequence[Point], file: Path, margin: float) -> list[str]:
    """The run's class for every point (NOT_FOUND where no predicted cell is under it)."""
    out = []
    for p in points:
        cell = match_cell(run.cells[resolve_image(run, p, file)], p.x, p.y, margin)
        out.append(NOT_FOUND if cell is None else str(cell["class"]))
    return out


def _scores(t: np.ndarray, p: np.ndarray, labels: np.ndarray, metric: str) -> np.ndarray:
    """The metric of every row of (rows, cells) integer-coded truth t and calls p, over the classes `labels`."""
    if metric == "accuracy":
        return np.mean(t == p, axis=1)
    per_class = []
    for c in labels:
        is_t, is_p = t == c, p == c
        tp, n_t = np.sum(is_t & is_p, axis=1), np.sum(is_t, axis=1)
        if metric == "balanced_accuracy":
            per_class.append(tp / np.maximum(n_t, 1))
        else:  # macro_f1: 2 tp / (2 tp + fp + fn), 0 for a class neither annotated nor called in that row
            denom = n_t + np.sum(is_p, axis=1)
            per_class.append(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0))
    return np.mean(per_class, axis=0)


def _encode(truth: Sequence[str], *preds: Sequence[str]) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Integer codes of the truth and the calls, and the codes of the annotated classes."""
    names = {n: i for i, n in enumerate(sorted({*truth, *(c for p in preds for c in p)}))}
    t = np.array([names[x] for x in truth])
    return t, [np.array([names[x] for x in p]) for p in preds], np.unique(t)


def score(truth: Sequence[str], pred: Sequence[str], metric: str) -> float:
    """macro_f1 (over the annotated classes; a missed cell is a false negative; sklearn's f1_score with
    labels=the annotated classes, zero_division=0), accuracy or balanced accuracy (the mean recall over the
    annotated classes). In numpy, row-wise, because the bootstrap scores thousands of resamples at once."""
    if metric not in METRICS:
        raise AnnotationError(f"metric={metric!r}; expected one of {', '.join(METRICS)}")
    t, (p,), labels = _encode(truth, pred)
    return float(_scores(t[None], p[None], labels, metric)[0])


def paired(truth: Sequence[str], ref: Sequence[str], other: Sequence[str], metric: str, draws: int, confidence: float,
           seed: int) -> dict:
    """other minus ref on the same cells: the difference; a paired permutation test (each cell's two calls
    swapped at random: exact in distribution at any size, where a bootstrap interval on 10-20 cells is too
    narrow), which the verdict follows; the class-stratified bootstrap interval of the difference, to read
    its size; and McNemar's exact p on the cells exactly one of the two gets right."""
    from scipy.stats import binomtest

    t, (r, o), labels = _encode(truth, ref, other)
    rng = np.random.default_rng(seed)
    diff = float(_scores(t[None], o[None], labels, metric)[0] - _scores(t[None], r[None], labels, metric)[0])
    swap = rng.random((draws, len(t))) < 0.5
    null = _scores(t[None], np.where(swap, r, o), labels, metric) - _scores(t[None], np.where(swap, o, r), labels, metric)
    p_perm = float((1 + np.sum(np.abs(null) >= abs(diff) - 1e-12)) / (draws + 1))
    # resample within each annotated class, so every resample keeps the lab's class counts
    idx = np.concatenate([rng.choice(np.flatnonzero(t == c), size=(draws, int(np.sum(t == c)))) for c in labels], axis=1)
    diffs = _scores(t[idx], o[idx], labels, metric) - _scores(t[idx], r[idx], labels, metric)
    lo, hi = np.quantile(diffs, [(1 - confidence) / 2, (1 + confidence) / 2])
    gains, losses = int(np.sum((o == t) & (r != t))), int(np.sum((o != t) & (r == t)))
    p_mcnemar = float(binomtest(gains, gains + losses, 0.5).pvalue) if gains + losses else 1.0
    verdict = "cannot tell" if p_perm > 1 - confidence or diff == 0 else "better" if diff > 0 else "worse"
    return {"difference": diff, "low": float(lo), "high": float(hi), "permutation_p": p_perm, "right_only_here": gains,
            "right_only_reference": losses, "mcnemar_p": p_mcnemar, "verdict": verdict}


def compare(runs: Sequence[str | Path], annotations: str | Path, metric: str = "macro_f1", draws: int = 2000,
            confidence: float = 0.95, seed: int = 0, margin: float = 0.5) -> dict:
    """Score every run on the annotated cells; runs[1:] each against runs[0] (the reference)."""
    if metric not in METRICS:
        raise AnnotationError(f"metric={metric!r}; expected one of {', '.join(METRICS)}")
    loaded = [load_run(r) for r in runs]
    classes = list(dict.fromkeys(c for r in loaded for c in r.classes))
    points, unlabelled = read_points(annotations, classes)
    truth = [p.label for p in points]
    per_run = [calls(r, points, Path(annotations), margin) for r in loaded]
    models = []
    for r, pred in zip(loaded, per_run):
        entry = {"run": str(r.path), "found": sum(p != NOT_FOUND for p in pred),
                 **{m: score(truth, pred, m) for m in METRICS},
                 "recall": {c: float(np.mean([p == c for t, p in zip(truth, pred) if t == c])) for c in sorted(set(truth))}}
        if r is not loaded[0]:
            entry["against_reference"] = paired(truth, per_run[0], pred, metric, draws, confidence, seed)
        models.append(entry)
    cells = [{"row": p.row, "image": p.image, "x": p.x, "y": p.y, "label": p.label, **{f"model{i}": c[k] for i, c in enumerate(per_run)}}
             for k, p in enumerate(points)]
    counts = {c: truth.count(c) for c in sorted(set(truth))}
    return {"annotations": str(annotations), "cells": len(points), "unlabelled_rows": unlabelled, "per_class": counts,
            "metric": metric, "confidence": confidence, "bootstrap": draws, "models": models, "calls": cells}


def sample_template(run_path: str | Path, n: int, seed: int = 0) -> list[dict]:
    """n predicted cells drawn at random (not by the model's class or confidence: a fair sample), as rows to
    annotate: image, x, y, an empty label, and where to look (cell number, box, overlay)."""
    run = load_run(run_path)
    pool = [c for cs in run.cells.values() for c in cs]
    if not pool:
        raise AnnotationError(f"{run.path}: the run found no cells to annotate")
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(pool), size=min(n, len(pool)), replace=False))
    return [{"image": c["image"], "x": round(float(c["centroid_x"]), 1), "y": round(float(c["centroid_y"]), 1), "label": "",
             "cell": c["cell"], "bbox_x0": c["bbox_x0"], "bbox_y0": c["bbox_y0"], "bbox_x1": c["bbox_x1"], "bbox_y1": c["bbox_y1"],
             "overlay": str(run.path / "overlays" / f"{c['output_stem']}.png")} for c in (pool[i] for i in picked)]
