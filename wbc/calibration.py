"""Calibrated class probabilities and the figures that say whether they can be trusted.

Temperature scaling (Guo et al. 2017) on log-probabilities: ``p_T ∝ p^(1/T)``. For one network
without test-time flips this is the usual softmax(logits / T); written on probabilities, the same
fit also calibrates what the framework actually outputs -- flip-averaged (``model.tta``) and
fold-averaged (ensemble) probabilities -- and it is exactly invertible (``T -> 1/T``), so a report
can show "before" from the calibrated outputs alone. T never changes the arg-max, so accuracy and
macro-F1 are unchanged by construction.

Figures: ECE with 15 equal-width confidence bins computed here (torchmetrics'
``MulticlassCalibrationError`` put confidences of exactly 1.0 in an extra bin), a bootstrap 95 %
interval, per-class (one-vs-rest) ECE, NLL, Brier score, and the risk-coverage curve with its area
(AURC) for the review flags. Pure numpy: no Lightning.
"""

from __future__ import annotations

import math

import numpy as np

N_BINS = 15
EPS = 1e-12
# the share of cells a default review threshold keeps unflagged (chosen on validation data)
DEFAULT_COVERAGE = 0.9


def _log(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T), row-wise; T = 1 returns p (renormalised)."""
    z = _log(probs) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def apply_temperature_torch(prob, temperature):
    """`apply_temperature` on a torch tensor (B x C), differentiable and ONNX-exportable: what the
    classifier module and the fold ensemble run at inference."""
    return (prob.clamp_min(EPS).log() / temperature).softmax(1)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class."""
    labels = np.asarray(labels, dtype=int)
    if not len(labels):
        return float("nan")
    return float(-_log(np.asarray(probs)[np.arange(len(labels)), labels]).mean())


def fit_temperature(probs: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The T minimising the NLL of `apply_temperature(probs, T)`: a golden-section search on log T
    (the NLL is convex in 1/T), then kept only if it beats T = 1. Fewer than 2 classes seen or under
    10 samples -> 1.0 (nothing to fit)."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=int)
    if len(labels) < 10 or len(np.unique(labels)) < 2:
        return 1.0
    logp = _log(probs)

    def loss(log_t: float) -> float:
        z = logp / math.exp(log_t)
        z -= z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        return float((lse - z[np.arange(len(labels)), labels]).mean())

    a, b = math.log(bounds[0]), math.log(bounds[1])
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(80):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = loss(d)
    best = (a + b) / 2
    return float(math.exp(best)) if loss(best) < loss(0.0) else 1.0


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> float:
    """Expected calibration error of the top-1 confidence: sum over equal-width bins of
    |accuracy - mean confidence| x bin share. Bin k holds confidences in (k/n, (k+1)/n]; a
    confidence of exactly 1.0 is in the last bin, 0 in the first."""
    probs, labels = np.asarray(probs), np.asarray(labels, dtype=int)
    if not len(labels):
        return float("nan")
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    return _binned_gap(conf, correct, n_bins)


def _bins(conf: np.ndarray, n_bins: int) -> np.ndarray:
    return np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)


def _binned_gap(conf: np.ndarray, outcome: np.ndarray, n_bins: int) -> float:
    idx = _bins(conf, n_bins)
    total = 0.0
    for k in range(n_bins):
        m = idx == k
        if m.any():
            total += m.mean() * abs(outcome[m].mean() - conf[m].mean())
    return float(total)


def classwise_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> list[float]:
    """Per class c: the binned gap between p_c and the frequency of c (one-vs-rest), over all samples."""
    probs, labels = np.asarray(probs), np.asarray(labels, dtype=int)
    return [_binned_gap(probs[:, c], (labels == c).astype(np.float64), n_bins) for c in range(probs.shape[1])]


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean over samples of the squared distance between p and the one-hot label (0 best, 2 worst)."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=int)
    if not len(labels):
        return float("nan")
    onehot = np.eye(probs.shape[1])[labels]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def bootstrap_ece(probs: np.ndarray, labels: np.ndarray, n_boot: int = 1000, seed: int = 0, n_bins: int = N_BINS) -> tuple[float, float]:
    """95 % percentile interval of the ECE over `n_boot` resamples of the cases."""
    probs, labels = np.asarray(probs), np.asarray(labels, dtype=int)
    if len(labels) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = [ece(probs[i], labels[i], n_bins) for i in (rng.integers(0, len(labels), len(labels)) for _ in range(n_boot))]
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> dict[str, list[float]]:
    """Per confidence bin: its centre, mean confidence, accuracy and count (the reliability diagram)."""
    probs, labels = np.asarray(probs), np.asarray(labels, dtype=int)
    conf = probs.max(axis=1) if len(labels) else np.zeros(0)
    correct = (probs.argmax(axis=1) == labels) if len(labels) else np.zeros(0, bool)
    idx = _bins(conf, n_bins)
    out: dict[str, list[float]] = {"centre": [], "confidence": [], "accuracy": [], "count": []}
    for k in range(n_bins):
        m = idx == k
        out["centre"].append((k + 0.5) / n_bins)
        out["confidence"].append(float(conf[m].mean()) if m.any() else float("nan"))
        out["accuracy"].append(float(correct[m].mean()) if m.any() else float("nan"))
        out["count"].append(int(m.sum()))
    return out


def calibration_report(probs: np.ndarray, labels: np.ndarray, classes: list[str], prefix: str, n_boot: int = 1000) -> dict[str, float]:
    """`<prefix>/ece` (+ `_lo`/`_hi` bootstrap 95 %), `<prefix>/nll`, `<prefix>/brier`, `<prefix>/ece/<class>`."""
    lo, hi = bootstrap_ece(probs, labels, n_boot)
    out = {f"{prefix}/ece": ece(probs, labels), f"{prefix}/ece_lo": lo, f"{prefix}/ece_hi": hi, f"{prefix}/nll": nll(probs, labels), f"{prefix}/brier": brier(probs, labels)}
    out.update({f"{prefix}/ece/{c}": v for c, v in zip(classes, classwise_ece(probs, labels))})
    return out


# ----------------------------------------------------------------------------- review flags
def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(coverage, risk, AURC): keep the k most confident cases for k = 1..n; risk = error rate of
    the kept ones. AURC is the mean risk over the n coverages (lower is better)."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=bool)
    n = len(confidence)
    if not n:
        return np.zeros(0), np.zeros(0), float("nan")
    order = np.argsort(-confidence, kind="stable")
    errors = np.cumsum(~correct[order])
    k = np.arange(1, n + 1)
    risk = errors / k
    return k / n, risk, float(risk.mean())


def risk_at_coverage(confidence: np.ndarray, correct: np.ndarray, coverage: float) -> float:
    """Error rate among the `coverage` share of most confident cases."""
    cov, risk, _ = risk_coverage(confidence, correct)
    if not len(cov):
        return float("nan")
    return float(risk[min(len(risk) - 1, max(0, math.ceil(coverage * len(risk)) - 1))])


def review_threshold(confidence: np.ndarray, coverage: float = DEFAULT_COVERAGE) -> float:
    """The confidence below which a case is flagged so that about `coverage` of these cases stay
    unflagged (the (1 - coverage) quantile). No cases -> 0 (flag nothing)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    if not len(confidence) or coverage >= 1:
        return 0.0
    return float(np.quantile(confidence, 1.0 - coverage, method="lower"))
