"""Learning curves and confusion matrices as PNG files (readable without any dashboard)."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np


def read_metrics_csv(path: Path) -> dict[str, list[tuple[int, float]]]:
    """CSVLogger's metrics.csv -> {metric: [(epoch, value), ...]} (rows are sparse)."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            epoch = row.get("epoch")
            if epoch in (None, ""):
                continue
            for key, value in row.items():
                if key in ("epoch", "step") or value in (None, ""):
                    continue
                series[key].append((int(float(epoch)), float(value)))
    return dict(series)


def plot_learning_curves(metrics_csv: Path, out_png: Path) -> Path | None:
    """Loss panel + metric panel by epoch; None if the run logged no CSV."""
    if not metrics_csv.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wbc.io import atomic_write

    series = read_metrics_csv(metrics_csv)
    losses = [k for k in series if k.endswith("/loss")]
    scores = [k for k in series if k.startswith("val/") and not k.endswith("loss") and not k.endswith("_best")][:6]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, keys, title in ((axes[0], losses, "loss"), (axes[1], scores, "validation metrics")):
        for key in keys:
            epochs, values = zip(*series[key])
            ax.plot(epochs, values, marker=".", label=key)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if keys:
            ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(out_png, lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)
    return out_png


def plot_confusion(matrix: np.ndarray, classes: list[str], out_png: Path, title: str = "confusion matrix"):
    """Counts with row-normalised shading (rows = true class); returns the figure's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wbc.io import atomic_write

    matrix = np.asarray(matrix)
    norm = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2.5, 1.2 * len(classes) + 2))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    atomic_write(out_png, lambda p: fig.savefig(p, dpi=100, format="png"))
    return fig


def plot_reliability(curves: dict[str, dict[str, list[float]]], out_png: Path, title: str = "reliability") -> Path:
    """Reliability diagram: accuracy vs mean confidence per bin for each named curve (e.g. before /
    after temperature scaling, from wbc.calibration.reliability), the diagonal, and bin counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wbc.io import atomic_write

    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect calibration")
    for name, c in curves.items():
        conf, acc = np.asarray(c["confidence"], float), np.asarray(c["accuracy"], float)
        ok = ~np.isnan(conf)
        ax.plot(conf[ok], acc[ok], marker="o", label=name)
        axc.bar(np.asarray(c["centre"]), c["count"], width=1 / len(c["centre"]), alpha=0.4, label=name)
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    axc.set_xlabel("confidence (max class probability)")
    axc.set_ylabel("cases")
    fig.tight_layout()
    atomic_write(out_png, lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)
    return out_png
