"""A fold ensemble's temperature is fitted on its members' out-of-fold files, which each run wrote with
the checkpoint it tested (metrics.json's best_checkpoint): a member given as another checkpoint of that
run (last.ckpt, an epoch file) is not what wrote them, so no temperature is fitted from them (said why)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from tests.helpers_models import save_checkpoint, tiny_modules
from wbc.ensemble import ClassifierEnsemble, calibrate_from_oof


def write_run(run: Path, clf, classes: list[str], rng: np.random.Generator) -> tuple[Path, Path]:
    labels = rng.integers(0, len(classes), 200)
    logits = rng.normal(0, 1, (200, len(classes))) * 4
    logits[np.arange(200), labels] += 3
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    run.mkdir(parents=True, exist_ok=True)
    lines = ["sample_id,cell,true,pred," + ",".join(f"p_{c}" for c in classes)]
    lines += [f"{run.name}_{i},1,{classes[y]},{classes[int(np.argmax(r))]}," + ",".join(f"{v:.8g}" for v in r) for i, (r, y) in enumerate(zip(p, labels))]
    (run / "val_predictions.csv").write_text("\n".join(lines) + "\n")
    best = save_checkpoint(clf, run / "checkpoints" / "epoch_003.ckpt")
    last = save_checkpoint(clf, run / "checkpoints" / "last.ckpt")
    (run / "metrics.json").write_text(json.dumps({"best_checkpoint": str(best)}))
    return best, last


def test_the_temperature_comes_only_from_files_the_given_checkpoints_wrote(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (_, a), (_, b) = tiny_modules(tmp_path / "a", seed=0), tiny_modules(tmp_path / "b", seed=1)
    classes = ClassifierEnsemble([a, b], ["f0", "f1"]).classes
    rng = np.random.default_rng(0)
    (best0, last0), (best1, _) = write_run(tmp_path / "fold0", a, classes, rng), write_run(tmp_path / "fold1", b, classes, rng)
    ens = ClassifierEnsemble([a, b], ["f0", "f1"])
    calibrate_from_oof(ens, [best0, best1])
    assert ens.temperature != 1.0  # the tested checkpoints: fitted
    ens = ClassifierEnsemble([a, b], ["f0", "f1"])
    with caplog.at_level(logging.WARNING, logger="wbc"):
        calibrate_from_oof(ens, [last0, best1])
    assert ens.temperature == 1.0 and "not by the member given" in caplog.text
