"""job.json's software record says what ran: with uncommitted changes, which files and a hash of the
diff (two runs with one hash ran the same code; a bare "modified" flag could not say), and the
accelerator (CUDA, cuDNN, device names), which a sweep summary compares like the package versions."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from wbc import provenance


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def test_uncommitted_changes_are_named_and_hashed(tmp_path: Path) -> None:
    try:
        git(tmp_path, "init", "-q")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no git")
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 1\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    clean = provenance.code_version(tmp_path)
    assert clean["modified"] is False and "modified_files" not in clean and "diff_sha256" not in clean
    (tmp_path / "a.py").write_text("x = 2\n")
    one = provenance.code_version(tmp_path)
    assert one["modified"] is True and one["modified_files"] == ["a.py"] and len(one["diff_sha256"]) == 64
    (tmp_path / "a.py").write_text("x = 3\n")
    assert provenance.code_version(tmp_path)["diff_sha256"] != one["diff_sha256"]  # another change, another hash
    (tmp_path / "a.py").write_text("x = 2\n")
    assert provenance.code_version(tmp_path)["diff_sha256"] == one["diff_sha256"]  # the same change, the same hash


def test_the_accelerator_is_recorded_and_compared() -> None:
    rec = provenance.software_record()
    assert rec["accelerator"]["devices"] and "cuda" in rec["accelerator"]
    gpu = {**rec, "accelerator": {"cuda": "13.0", "cudnn": 91000, "devices": ["NVIDIA H200"]}}
    cpu = {**rec, "accelerator": {"cuda": None, "cudnn": None, "devices": ["cpu"]}}
    diffs = provenance.differences({"0": cpu, "1": gpu})
    assert any(d.startswith("devices: ['cpu'] (0) vs ['NVIDIA H200'] (1)") for d in diffs) and any(d.startswith("CUDA: ") for d in diffs)
    assert {"scipy", "pillow", "tifffile"} <= set(rec["packages"])
