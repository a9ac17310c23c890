"""Score predict.py runs on the cells a lab annotated itself, and say whether one model beats another.

A lab without a labelled test set (a new microscope, stain, AdaBN or self-training from
`predict.py ... pseudo_dataset.per_class=K`) cannot tell from validation figures whether a model helped:
those only measure agreement with the model's own calls. What decides it is a few cells the lab labels by
eye: points (wbc.annotations), each matched to the predicted cell under it in every run, so runs with
different segmenters are scored on the same cells, and a cell a run did not find counts as wrong (the
lab's end-to-end question).

The comparison is paired (every model on the same cells): the difference of the chosen metric, a paired
permutation test that the verdict follows (valid at any number of cells), a class-stratified bootstrap
interval for the size of the difference, and McNemar's exact test on the cells one model gets right and
the other wrong. With 20-40 cells most differences are "cannot tell": the verdict says so instead of ranking.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wbc.annotations import (
    NOT_FOUND,
    AnnotationError,
    calls,
    fine_tune_cells,
    load_run,
    matched_cells,
    one_point_per_cell,
    read_points,
)

log = logging.getLogger("wbc")

METRICS = ("macro_f1", "accuracy", "balanced_accuracy")


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
    """Score every run on the annotated cells; runs[1:] each against runs[0] (the reference). Each cell is scored
    once (wbc.annotations.one_point_per_cell): a second point with the same label on a cell is merged; points with
    different labels are separate cells unless every run puts them on one cell, which is then left out of every run's
    scores; both are warned about and listed (`merged`, `conflicting`). A run that merged two differently labelled
    cells is scored on both. A run's call for a merged cell is that of the cell under its first point it found."""
    if metric not in METRICS:
        raise AnnotationError(f"metric={metric!r}; expected one of {', '.join(METRICS)}")
    loaded = [load_run(r) for r in runs]
    classes = list(dict.fromkeys(c for r in loaded for c in r.classes))
    points, unlabelled = read_points(annotations, classes)
    by_point = [matched_cells(r, points, Path(annotations), margin) for r in loaded]
    groups, merged, conflicting = one_point_per_cell(points, by_point)
    _warn_shared_cells(annotations, merged, conflicting)
    if not groups:
        raise AnnotationError(f"{annotations}: every labelled cell has points with different labels; correct them")
    points = [points[g[0]] for g in groups]
    truth = [p.label for p in points]
    matched = [[next((m[i] for i in g if m[i] is not None), None) for g in groups] for m in by_point]
    per_run = [calls(r, points, Path(annotations), margin, m) for r, m in zip(loaded, matched)]
    models = []
    for r, pred, cells_here in zip(loaded, per_run, matched):
        seen = trained_points(r, cells_here)
        if seen:
            log.warning("compare: %d of the %d labelled cells are cells a fine-tune from %s trained or validated on "
                        "(its annotated_dataset / pseudo_dataset): the comparison favours that fine-tuned model; "
                        "score other cells (compare.py runs=[...] writes a template of cells left out of them)", seen, len(points), r.path)
        entry = {"run": str(r.path), "found": sum(p != NOT_FOUND for p in pred), "fine_tune_cells_scored": seen,
                 **{m: score(truth, pred, m) for m in METRICS},
                 "recall": {c: float(np.mean([p == c for t, p in zip(truth, pred) if t == c])) for c in sorted(set(truth))}}
        if r is not loaded[0]:
            entry["against_reference"] = paired(truth, per_run[0], pred, metric, draws, confidence, seed)
        models.append(entry)
    cells = [{"row": p.row, "image": p.image, "x": p.x, "y": p.y, "label": p.label, **{f"model{i}": c[k] for i, c in enumerate(per_run)}}
             for k, p in enumerate(points)]
    counts = {c: truth.count(c) for c in sorted(set(truth))}
    return {"annotations": str(annotations), "annotations_sha256": _digest(Path(annotations)), "cells": len(points), "unlabelled_rows": unlabelled, "per_class": counts,
            "merged": merged, "conflicting": conflicting,
            "metric": metric, "confidence": confidence, "bootstrap": draws, "models": models, "calls": cells}


def _warn_shared_cells(annotations: str | Path, merged: list[dict], conflicting: list[dict]) -> None:
    """Say which points were scored as one cell, and which cells were left out for their different labels."""
    if merged:
        log.warning("compare: %d point(s) of %s on a cell another point labelled the same, counted once: %s", len(merged), annotations,
                    ", ".join(f"{m['row']} (= {m['same_cell_as']})" for m in merged[:5]) + (" ..." if len(merged) > 5 else ""))
    if conflicting:
        log.warning("compare: %d cell(s) of %s carry points with different labels that every run puts on one cell, left out of "
                    "the scores (a labelling slip, or two cells no run tells apart): %s",
                    len(conflicting), annotations, "; ".join(f"{', '.join(c['rows'])} ({' / '.join(c['labels'])})" for c in conflicting[:5])
                    + (" ..." if len(conflicting) > 5 else ""))


def _digest(path: Path) -> str:
    """SHA-256 of the annotation file (or of a folder's files, by name): which labels a verdict was read from."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(path.iterdir()) if path.is_dir() else [path]:
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def to_markdown(report: dict) -> str:
    """compare.md: the record a lab keeps of which model its own cells favoured."""
    a = report
    lines = [f"# Models on {a['cells']} annotated cells", "",
             f"Annotations: `{a['annotations']}` (sha256 {a['annotations_sha256'][:16]}), "
             + ", ".join(f"{c} {n}" for c, n in a["per_class"].items())
             + (f"; {a['unlabelled_rows']} entries without a label skipped" if a["unlabelled_rows"] else "")
             + (f"; {len(a.get('merged', []))} second point(s) on a labelled cell counted once" if a.get("merged") else "")
             + (f"; {len(a.get('conflicting', []))} cell(s) with different labels left out" if a.get("conflicting") else "") + ".",
             f"Verdict: paired permutation test on {a['metric']} at {a['confidence']:.0%} ({a['bootstrap']} draws); "
             "a missed cell counts as wrong.", "",
             "| run | found | macro-F1 | accuracy | balanced accuracy | difference [interval] | right only here / in reference | permutation p | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, m in enumerate(a["models"]):
        r = m.get("against_reference")
        vs = "reference | | | | reference" if r is None else (
            f"{r['difference']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}] | {r['right_only_here']} / {r['right_only_reference']} | "
            f"{r['permutation_p']:.3f} | {r['verdict']}")
        lines.append(f"| {i}: `{m['run']}` | {m['found']}/{a['cells']} | {m['macro_f1']:.3f} | {m['accuracy']:.3f} | "
                     f"{m['balanced_accuracy']:.3f} | {vs} |")
    return "\n".join(lines) + "\n"


def trained_points(run, cells: Sequence[dict | None]) -> int:
    """How many labelled points (their matched cells) fall on cells a fine-tune from this run trained or validated on."""
    trained = fine_tune_cells(run.path)
    return sum(c is not None and (str(c.get("output_stem")), int(c["cell"])) in trained for c in cells) if trained else 0


def sample_template(run_path: str | Path, n: int, seed: int = 0) -> list[dict]:
    """n predicted cells drawn at random (not by the model's class or confidence: a fair sample), as rows to
    annotate: image, x, y, an empty label, and where to look (cell number, nucleus box). Nothing of the
    model's call, and no overlay (it shows the calls): a label read off the original image is not anchored."""
    run = load_run(run_path)
    trained = fine_tune_cells(run.path)  # a fine-tune from this run saw them: not a fair test of it
    pool = [c for cs in run.cells.values() for c in cs if (str(c.get("output_stem")), int(c["cell"])) not in trained]
    if trained:
        log.info("annotation template: %d cells of %s's annotated / pseudo-labelled training sets left out", len(trained), run.path)
    if not pool:
        raise AnnotationError(f"{run.path}: the run found no cells to annotate")
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(pool), size=min(n, len(pool)), replace=False))
    return [{"image": c["image"], "x": round(float(c["centroid_x"]), 1), "y": round(float(c["centroid_y"]), 1), "label": "",
             "cell": c["cell"], "bbox_x0": c["bbox_x0"], "bbox_y0": c["bbox_y0"], "bbox_x1": c["bbox_x1"], "bbox_y1": c["bbox_y1"]}
            for c in (pool[i] for i in picked)]
