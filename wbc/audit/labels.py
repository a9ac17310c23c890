"""Label issues from the out-of-fold predictions of a CV sweep (`oof=<sweep dir>`).

Every fold run of a classification (or pipeline) sweep scores its validation split into
`val_predictions.csv` (`classification/val_predictions.csv` in a pipeline run): one row per crop,
`sample_id,cell,true,pred,p_<class>...`. Pooled over the folds, each training image was predicted
by a model that never saw it. Crops whose given label those models most disagree with are found by
cleanlab's confident learning (`cleanlab.filter.find_label_issues`, the optional `audit` extra), or
without it by the same idea in plain numpy: a crop is suspect when the folds predict another class
and give its label less probability than that label's average on its own crops (the per-class
threshold of confident learning); ranked by self-confidence (the probability of the given label).
Images are ranked by their least self-confident crop.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np


def oof_files(oof: str | Path) -> list[Path]:
    """The val_predictions.csv of a run dir, or of every run dir of a sweep dir (job order)."""
    from wbc.evaluation.classification import OOF_FILE
    from wbc.rundir import is_run_dir, job_sort_key, stage_file

    root = Path(str(oof))
    if not root.is_dir():
        raise FileNotFoundError(f"oof={root}: not a folder; expected a CV sweep dir (or one run dir) with val_predictions.csv")
    own = stage_file(root, OOF_FILE)
    if own is not None:
        return [own]
    runs = sorted((d for d in root.iterdir() if d.is_dir() and is_run_dir(d)), key=job_sort_key)
    found = [f for f in (stage_file(d, OOF_FILE) for d in runs) if f is not None]
    if not found:
        raise FileNotFoundError(
            f"oof={root}: no {OOF_FILE} in it or its run dirs ({len(runs)} found); run a classification CV sweep first "
            "(python train.py -m experiment=cls_cv ...) with score_val=true"
        )
    return found


def read_oof(oof: str | Path) -> tuple[list[str], dict[tuple[str, str], dict], bool]:
    """(classes, {(sample_id, cell): {"true", "probs" (mean over runs), "runs"}}, whether the probabilities
    are those before each run's temperature) pooled over the files; a file with other classes than the
    first is an error. Each fold's temperature was fitted on these crops' labels, the very labels under
    audit, so the probabilities before it are used when every file has them (runs since they are written)."""
    from wbc.evaluation.classification import has_uncalibrated, probability_array, read_predictions_csv

    classes: list[str] | None = None
    read = []
    for path in oof_files(oof):
        cls, rows = read_predictions_csv(path)
        if classes is None:
            classes = cls
        elif cls != classes:
            raise ValueError(f"{path}: classes {cls} differ from the other folds' {classes}")
        read.append((path, rows))
    raw = bool(read) and all(has_uncalibrated(rows, classes or []) for _, rows in read)
    crops: dict[tuple[str, str], dict] = {}
    for path, rows in read:
        for r, p in zip(rows, probability_array(rows, classes or [], raw, dtype=np.float64)):
            key = (r["sample_id"], str(r.get("cell", "")))
            entry = crops.setdefault(key, {"true": r["true"], "probs": [], "runs": []})
            entry["probs"].append(p)
            entry["runs"].append(path.parent.name if path.parent.name != "classification" else path.parent.parent.name)
    for entry in crops.values():
        entry["probs"] = np.mean(entry["probs"], axis=0)
    return classes or [], crops, raw


def self_confidence_issues(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Crop indices flagged without cleanlab (see the module doc), most suspect first."""
    n_classes = probs.shape[1]
    self_conf = probs[np.arange(len(labels)), labels]
    thresholds = np.array([self_conf[labels == c].mean() if (labels == c).any() else 1.0 for c in range(n_classes)])
    flagged = np.nonzero((probs.argmax(1) != labels) & (self_conf < thresholds[labels]))[0]
    return flagged[np.argsort(self_conf[flagged], kind="stable")]


def find_issues(labels: np.ndarray, probs: np.ndarray, method: str = "auto") -> tuple[np.ndarray, str]:
    """(flagged crop indices, most suspect first; the method used): cleanlab when `method` is auto or
    cleanlab and it imports, else self_confidence."""
    if method not in ("auto", "cleanlab", "self_confidence"):
        raise ValueError(f"label_issue_method={method!r}: expected auto, cleanlab or self_confidence")
    if method != "self_confidence":
        try:
            from cleanlab.filter import find_label_issues
        except ImportError as err:
            if method == "cleanlab":
                raise ImportError("label_issue_method=cleanlab: cleanlab is not installed (pip install 'wbc-lab[audit]')") from err
        else:
            try:
                flagged = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
                return np.asarray(flagged, dtype=np.int64), "cleanlab.filter.find_label_issues (confident learning)"
            except Exception as err:  # noqa: BLE001 - e.g. too few crops per class for confident learning
                if method == "cleanlab":
                    raise
                fallback = f"self_confidence (cleanlab failed: {type(err).__name__}: {err})"
                return self_confidence_issues(labels, probs), fallback
    return self_confidence_issues(labels, probs), "self_confidence (no cleanlab: predicted another class, below the class's mean self-confidence)"


def label_issues(oof: str | Path, given: dict[str, str] | None = None, method: str = "auto") -> dict:
    """Images whose label the out-of-fold predictions disagree with (see the module doc).

    `given`: the dataset's sample ids (-> class): predictions of ids not in it, and dataset images
    without predictions, are counted. A crop's label is its cell's (several per image in instance
    mode), so `given`/`suggested`/`cell` name the image's least self-confident crop."""
    classes, crops, raw = read_oof(oof)
    keys = list(crops)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({crops[k]["true"] for k in keys} - set(index))
    if unknown:
        raise ValueError(f"oof={oof}: true labels {unknown} are not among the prediction columns {classes}")
    labels = np.array([index[crops[k]["true"]] for k in keys], dtype=np.int64)
    probs = np.array([crops[k]["probs"] for k in keys], dtype=np.float64).reshape(len(keys), len(classes))
    probs = probs / np.clip(probs.sum(1, keepdims=True), 1e-12, None)
    flagged, used = find_issues(labels, probs, method) if len(keys) else (np.zeros(0, np.int64), "none (no crops)")
    per_image: dict[str, dict] = defaultdict(lambda: {"crops": 0, "flagged": 0, "self_confidence": 1.0, "probs": None})
    flagged_set = set(flagged.tolist())
    for n, (sid, cell) in enumerate(keys):
        img = per_image[sid]
        img["crops"] += 1
        sc = float(probs[n, labels[n]])
        if n in flagged_set:  # the image is shown by its least self-confident flagged crop
            img["flagged"] += 1
            if sc <= img["self_confidence"]:
                img.update(self_confidence=sc, probs=probs[n], given=classes[labels[n]], cell=cell, runs=sorted(set(crops[keys[n]]["runs"])))
    issues = []
    for sid, img in per_image.items():
        if not img["flagged"]:
            continue
        p = img["probs"]
        issues.append({
            "id": sid, "cell": img["cell"], "given": img["given"], "suggested": classes[int(np.argmax(p))],
            "self_confidence": round(img["self_confidence"], 4), "p_suggested": round(float(p.max()), 4),
            "flagged_crops": img["flagged"], "crops": img["crops"], "runs": img["runs"],
        })
    issues.sort(key=lambda r: (r["self_confidence"], r["id"]))
    return {
        "method": used,
        "source": str(oof),
        "probabilities": "before each run's temperature" if raw else "calibrated (runs written before the uncalibrated_p_ columns)",
        "n_images": len(per_image),
        "n_crops": len(keys),
        "classes": classes,
        "issues": issues,
        "not_in_dataset": sorted(sid for sid in per_image if given is not None and sid not in given),
        # dataset images no fold predicted (normally the test split)
        "without_predictions": len(set(given) - set(per_image)) if given is not None else None,
    }

