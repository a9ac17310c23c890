"""Faults: a training run SIGKILLed mid-way and resumed from last.ckpt ends exactly where the
uninterrupted run ends; predict on a folder with a corrupt image does the rest and names it;
our checkpoints go through Lightning's own (weights-only) resume and test paths."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.helpers_data import truncate, write_image
from tests.helpers_models import compose_cfg, save_checkpoint, tiny_modules

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 4


def _train_cmd(run_dir: Path, tmp: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "train.py",
        "data=synthetic_tiny",
        f"trainer.max_epochs={EPOCHS}",
        "logger=csv",
        "callbacks.rich_progress_bar=null",
        "extras.print_config=false",
        "num_overlays=0",
        f"paths.data_dir={tmp / 'data'}",
        f"paths.log_dir={tmp / 'logs'}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def _env() -> dict[str, str]:
    # one intra-op thread: the same in every run, and fast on a shared 2-core machine
    return {**os.environ, "OMP_NUM_THREADS": "1", "PROJECT_ROOT": str(ROOT), "WANDB_MODE": "offline"}


def _run(cmd: list[str], timeout: float = 600) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def _numeric(path: Path) -> dict[str, float]:
    data = json.loads(path.read_text())
    return {k: v for k, v in data.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    """Three short training processes (~20-40 s on 2 CPU cores): part of CI on purpose, since
    losing work to a killed job is what the epoch-keyed seeding exists to prevent."""
    full, killed = tmp_path / "full", tmp_path / "killed"
    _run(_train_cmd(full, tmp_path))  # also generates the tiny data set once

    proc = subprocess.Popen(_train_cmd(killed, tmp_path), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and not last.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "training finished (or crashed) before it could be killed"
        assert last.exists(), "no last.ckpt after 300 s"
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "metrics.json").exists()  # it really died mid-training
    ckpt = torch.load(last, map_location="cpu", weights_only=True)  # Lightning writes it atomically
    assert ckpt["epoch"] < EPOCHS - 1

    _run(_train_cmd(killed, tmp_path, f"ckpt_path={last}"))

    a, b = _numeric(full / "metrics.json"), _numeric(killed / "metrics.json")
    keys = [k for k in a if k.startswith(("val/", "test/", "train/"))]
    assert {"val/dice", "val/dice_best", "test/dice", "test/dice_post", "train/loss"} <= set(keys)
    assert set(keys) <= set(b)
    differ = {k: (a[k], b[k]) for k in keys if not (math.isclose(a[k], b[k], rel_tol=0, abs_tol=1e-6) or (math.isnan(a[k]) and math.isnan(b[k])))}
    assert not differ, f"resumed run differs from the uninterrupted one: {differ}"
    best_a = json.loads((full / "metrics.json").read_text())["best_checkpoint"]
    best_b = json.loads((killed / "metrics.json").read_text())["best_checkpoint"]
    assert Path(best_a).name == Path(best_b).name


def test_lightning_resume_and_test_paths_accept_our_checkpoints(trained_run):
    """Lightning's `trainer.fit(ckpt_path=...)` / `trainer.test(ckpt_path=..., weights_only=True)`
    load with torch.load(weights_only=...): our checkpoints hold only plain data, so a strict
    weights-only load of a real run's files works (the resume itself is test_train_evaluate's)."""
    run, _, _ = trained_run
    files = sorted((run / "checkpoints").glob("*.ckpt"))
    assert files
    for f in files:
        ckpt = torch.load(f, map_location="cpu", weights_only=True)
        assert {"state_dict", "hyper_parameters", "optimizer_states", "loops", "callbacks"} <= set(ckpt)
        assert isinstance(ckpt["hyper_parameters"]["net"], dict)


def test_predict_folder_with_a_corrupt_image(tmp_path):
    from wbc.cli import predict
    from wbc.data.synthetic import SyntheticSpec, render_image

    seg, clf = tiny_modules(tmp_path)
    seg_ckpt = save_checkpoint(seg, tmp_path / "seg.ckpt")
    cls_ckpt = save_checkpoint(clf, tmp_path / "cls.ckpt")
    inputs = tmp_path / "in"
    spec = SyntheticSpec(image_size=64, seed=5)
    for i, name in enumerate(("a", "b", "c")):
        write_image(inputs / f"{name}.png", render_image(spec, i, "neutrophil")[0])
    truncate(inputs / "b.png")
    cfg = compose_cfg("predict.yaml", [f"input={inputs}", f"segmenter={seg_ckpt}", f"classifier={cls_ckpt}"], tmp_path / "out")
    summary, _ = predict.predict(cfg)
    out = tmp_path / "out"
    assert summary["failed"] == 1
    saved = json.loads((out / "predictions.json").read_text())
    assert [Path(f["image"]).name for f in saved["failed"]] == ["b.png"]
    assert "b.png: cannot decode as an image" in saved["failed"][0]["error"] and "truncated" in saved["failed"][0]["error"]
    for sub in ("masks", "overlays"):
        assert sorted(p.name for p in (out / sub).iterdir()) == ["a.png", "c.png"]
    assert {Path(r["image"]).name for r in saved["cells"]} <= {"a.png", "c.png"}
    lines = (out / "predictions.csv").read_text().splitlines()
    assert len(lines) == 1 + len(saved["cells"]) and "b.png" not in "".join(lines)
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temp files left by the atomic writers
