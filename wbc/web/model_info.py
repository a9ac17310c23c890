"""What the page says about the loaded model ("scale and honesty"): which run, its classes, input
sizes, when it was trained, with what code and library versions (job.json's `software`) and its test
figures from the run's metrics.json; and which run
`python serve.py` picks when none is named (the newest finished pipeline run under outputs/)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from wbc.rundir import JOB_FILE, METRICS, STAGE_DIRS

# the run's test figures shown on the page, in this order, when the run has them (label, key)
SHOWN_METRICS = (
    ("nucleus Dice (test, after post-processing)", "test/dice_post"),
    ("classifier macro-F1 (test crops)", "test/macro_f1"),
    ("pipeline macro-F1 (matched cells)", "pipeline/macro_f1"),
    ("detection precision", "pipeline/detection_precision"),
    ("detection recall", "pipeline/detection_recall"),
)


def newest_pipeline_run(outputs: Path) -> Path | None:
    """The newest finished pipeline run (`<outputs>/pipeline/runs/<time>/` with metrics.json and both
    stage sub-runs); run dir names are timestamps, so the newest sorts last."""
    runs = Path(outputs) / "pipeline" / "runs"
    if not runs.is_dir():
        return None
    done = [d for d in runs.iterdir() if (d / METRICS).is_file() and all((d / s).is_dir() for s in STAGE_DIRS)]
    return max(done, key=lambda d: (d.name, d.stat().st_mtime)) if done else None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _run_file(source: Path | None, name: str) -> Path | None:
    """`<source>/<name>` of a run dir, else that of its first fold (a sweep dir); None when neither exists."""
    if source is None or not source.is_dir():
        return None
    path = source / name
    return path if path.is_file() else next(iter(sorted(source.glob(f"*/{name}"))), None)


def _metrics_of(source: Path | None) -> tuple[dict, str | None]:
    """(metrics.json of the run or of its first fold, when it was written)."""
    path = _run_file(source, METRICS)
    if path is None:
        return {}, None
    return _read_json(path), time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))


def _software_of(source: Path | None) -> dict | None:
    """The code commit and library versions the run (or its first fold) was trained with, from its
    job.json (`wbc.provenance`); None for runs from before it was recorded and for ONNX exports."""
    path = _run_file(source, JOB_FILE)
    software = _read_json(path).get("software") if path is not None else None
    return software if isinstance(software, dict) else None


def shown_path(path: Path | str | None) -> str | None:
    """A path as the page shows it: from below the outputs dir when it is in one, else its last part (a
    checkpoint file with its folder): anyone who reaches the page sees it, and the server's layout is
    none of their business."""
    if not path:
        return None
    parts = Path(path).parts
    if "outputs" in parts[:-1]:
        return "/".join(parts[len(parts) - parts[::-1].index("outputs"):])
    return "/".join(parts[-2:]) if Path(path).suffix else (parts[-1] if parts else None)


def _shown_software(software: dict | None) -> dict | None:
    """job.json's `software` without what describes the training machine rather than the code (the
    platform string, the names of the files changed in the checkout): the page shows the commit, whether it
    had uncommitted changes, the library and Python versions."""
    if software is None:
        return None
    code = software.get("code")
    shown = {k: v for k, v in software.items() if k != "platform"}
    if isinstance(code, dict):
        shown["code"] = {k: v for k, v in code.items() if k != "modified_files"}
    return shown


def _first_number(metrics: dict, key: str) -> float | None:
    for k in (key, key.replace("/", "/mean/", 1)):
        v = metrics.get(k)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
    return None


def classifier_input(pipe: Any) -> str | None:
    """The classifier's input in words (its crops' preprocessing, views and models averaged): an ensemble
    may mix RGB and grey inputs and plain and nucleus-masked crops, which a lab should see on the card."""
    if getattr(pipe, "classifier", None) is None:
        return None
    pre = getattr(pipe, "cls_pre", None)
    parts = list(getattr(pre, "parts", None) or ([pre] if pre is not None else []))

    def words(p: Any) -> str:
        steps = [s for s, on in (("white-balanced", p.white_balance), (f"{p.stain_norm} stain-normalised", p.stain_norm),
                                  ("CLAHE", p.clahe)) if on]
        return ("grey" if p.grayscale else "RGB") + (f" ({', '.join(steps)})" if steps else "")

    masked = getattr(getattr(pipe, "crop_spec", None), "masked", False)
    views = "plain and nucleus-masked crops" if masked == "both" else "nucleus-masked crops" if masked else "crops"
    # data_info.member_inputs: what each member reads (also in an export's export.json, where the members are one graph)
    info = dict(getattr(getattr(pipe.classifier, "hparams", None), "data_info", None) or {})
    n = len(info.get("member_inputs") or getattr(pipe.classifier, "members", None) or [pipe.classifier])
    own = ", each on its own input" if len(parts) > 1 or masked == "both" else ""
    return " and ".join(words(p) for p in parts) + f", {views}" + (f"; {n} models averaged{own}" if n > 1 else "")


def describe(pipe: Any, source: str | None, kind: str, adapted_folder: str | None = None) -> dict:
    """The model card the page shows. `kind`: pipeline run / fold ensemble / ONNX export / checkpoints.
    `adapted`: which models took their batch-norm statistics from how many of the lab's images
    (`adapted_folder`), or None; the test figures stay those of the unadapted run."""
    seg_info = dict(getattr(pipe, "seg_info", {}) or {})
    spec = getattr(pipe, "crop_spec", None)
    path = Path(source) if source else None
    metrics, trained = _metrics_of(path)
    if path is not None and kind == "ONNX export":
        trained = trained or _mtime(path / "export.json")
    figures = [{"label": label, "key": key, "value": v} for label, key in SHOWN_METRICS if (v := _first_number(metrics, key)) is not None]
    post = getattr(pipe, "postprocess", None)
    adapted_on = int(getattr(pipe, "adapted_on", 0))  # images the AdaBN pass saw (0: not adapted)
    profile = getattr(pipe, "appearance", None)  # wbc.appearance: the training images' colour profile, if recorded
    options = getattr(pipe, "review_options", None)
    checks_appearance = profile is not None and bool(getattr(options, "unlike_training", True))
    return {
        "source": shown_path(path),
        "kind": kind,
        "classes": list(getattr(pipe, "classes", []) or []),
        "has_classifier": getattr(pipe, "classifier", None) is not None or getattr(pipe, "morphology", None) is not None,
        "morphology": getattr(pipe, "morphology_source", None),
        "data": seg_info.get("name"),
        "segmenter_input": seg_info.get("image_size"),
        "preprocess": seg_info.get("input_groups") or seg_info.get("preprocess"),  # a list: segmenters of several inputs
        "crop_size": getattr(spec, "size", None),
        "classifier_input": getattr(spec, "image_size", None),
        "classifier_inputs": classifier_input(pipe),
        "training_scale": seg_info.get("scale"),
        "postprocess": post.to_dict() if hasattr(post, "to_dict") else None,
        "trained": trained,
        "software": _shown_software(_software_of(path)),
        "test_figures": figures,
        "adapted": ({"models": list(getattr(pipe, "adapted_models", ())), "images": adapted_on,
                     "folder": Path(adapted_folder).name if adapted_folder else None}
                    if adapted_on else None),
        "appearance_check": ({"model": getattr(pipe, "appearance_model", None), "training_images": profile.images,
                              "sources": [{"name": c.name, "images": c.images,
                                           "threshold": getattr(options, "appearance_threshold", None) or c.threshold} for c in profile.components]}
                             if checks_appearance else None),
    }


def _mtime(path: Path) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime)) if path.is_file() else None
