"""Same seed -> identical metrics on CPU (trainer.deterministic=true, epoch-keyed sampling and
augmentation); another seed -> different ones. Tiny data, two short epochs, no test phase."""

from __future__ import annotations

import math

import pytest
import torch

SHORT = ("debug=limit", "trainer.max_epochs=2", "trainer.detect_anomaly=false", "test=false")


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core box, two OpenMP threads contending with other
    processes make these tiny steps 10-100x slower. Determinism holds either way."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _metrics(make_cfg, run_training, out, *overrides: str) -> dict[str, float]:
    metrics, objects = run_training(make_cfg([*SHORT, *overrides], output_dir=out))
    assert objects["trainer"].current_epoch == 2
    return {k: v for k, v in metrics.items() if isinstance(v, float)}


def test_same_seed_same_metrics_other_seed_differs(make_cfg, run_training, tmp_path):
    a = _metrics(make_cfg, run_training, tmp_path / "a", "seed=7")
    b = _metrics(make_cfg, run_training, tmp_path / "b", "seed=7")
    assert {"train/loss", "val/loss", "val/dice", "val/auroc"} <= set(a)
    assert a.keys() == b.keys()
    differ = {k: (a[k], b[k]) for k in a if not (a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])))}
    assert not differ, f"same seed, different metrics: {differ}"

    c = _metrics(make_cfg, run_training, tmp_path / "c", "seed=8")
    assert c["train/loss"] != a["train/loss"] and c["val/loss"] != a["val/loss"]
