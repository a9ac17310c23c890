"""experiment=pipeline: each stage starts from the run's seed (wbc.fit.fit_stage), so the classifier does
not depend on the random numbers segmentation training drew, and a pipeline resumed after its
segmentation stage trains the classifier the uninterrupted run trained."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch


def _classifier(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "classification" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def test_a_pipeline_resumed_after_segmentation_trains_the_same_classifier(make_cfg, run_training, one_thread) -> None:
    common = ["experiment=pipeline", "trainer.max_epochs=1", "score_val=false", "num_overlays=0", "pipeline.predict_images=0"]
    cfg = make_cfg(common)
    run_training(cfg)
    out = Path(cfg.paths.output_dir)
    whole = _classifier(out)
    shutil.rmtree(out / "classification")  # stopped after its segmentation stage
    (out / "metrics.json").unlink(missing_ok=True)
    run_training(make_cfg([*common, "resume=true"]))
    resumed = _classifier(out)
    assert whole.keys() == resumed.keys()
    differ = [k for k in whole if not torch.equal(whole[k], resumed[k])]
    assert not differ, differ
