"""Figures the benchmark scripts share, defined once so that they agree with each other and with the
product's metrics.json (seed_ensemble.py and cross_dataset.py each had their own macro-F1)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# fewer non-zero paired differences than this: no Wilcoxon p (with 4 the smallest two-sided exact p is 0.125)
WILCOXON_MIN_PAIRS = 5


def is_number(x: Any) -> bool:
    """A finite metric value (json null, NaN, a string or a bool is not a figure to average or pair)."""
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def macro_f1(true: Sequence[Any], pred: Sequence[Any], classes: Sequence[Any]) -> float:
    """Macro-F1 as metrics.json holds it (torchmetrics' MulticlassF1Score(average="macro"), the
    LightningModule's and wbc.evaluation.classification's): the mean F1 over the classes that are true
    or predicted at least once, zero_division=0; a predicted-only class counts 0, one neither true nor
    predicted is left out (scikit-learn's default union of labels). NaN without any crop."""
    from sklearn.metrics import f1_score

    seen = set(np.asarray(true).tolist()) | set(np.asarray(pred).tolist())
    labels = [c for c in classes if c in seen]
    if not labels:
        return float("nan")
    return float(f1_score(true, pred, labels=labels, average="macro", zero_division=0))


def wilcoxon_text(diffs: Sequence[float]) -> str:
    """Wilcoxon signed-rank test of paired differences (two-sided, zero_method="wilcox": zero differences
    dropped), its p with n (the non-zero pairs) and the method scipy's method="auto" picks: exact without
    ties or zeros (n <= 50), every sign flip enumerated with them (n <= 13), else the normal approximation.
    The method is passed explicitly so that the label is what was computed. Differences are rounded to
    12 decimals first: float noise (0.97 - 0.95 vs 0.95 - 0.93) must not break a tie or a zero."""
    from scipy.stats import PermutationMethod, wilcoxon

    d = np.round(np.asarray(diffs, dtype=float), 12)
    nonzero = d[d != 0]
    zeros = len(d) - len(nonzero)
    if len(nonzero) < WILCOXON_MIN_PAIRS:
        return f"n/a ({len(nonzero)} non-zero pairs, needs {WILCOXON_MIN_PAIRS})"
    ties = len(np.unique(np.abs(nonzero))) < len(nonzero)
    if len(d) <= 50 and not (ties or zeros):
        method, how = "exact", "exact"
    elif len(d) <= 13:  # 2**13 sign flips < PermutationMethod's 9999 resamples: all enumerated, exact
        method, how = PermutationMethod(), "exact (all sign flips; ties or zeros)"
    else:
        method, how = "asymptotic", "normal approx." + (" (ties or zeros)" if ties or zeros else "")
    p = float(wilcoxon(d, zero_method="wilcox", method=method).pvalue)
    return f"p {p:.4f} (n={len(nonzero)}, {zeros} zeros dropped, {how})"
