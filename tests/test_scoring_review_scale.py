"""The pipeline that evaluate.py and a pipeline run (train.py stage=pipeline) score reads `review.*`
(conf/review/, wbc.review.ReviewOptions) and the scale / tile keys (conf/inference/scale.yaml) from the same
addresses as predict.py and serve.py; both built CellPipeline with the defaults, whatever the config said."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import wbc.evaluation.pipeline
from tests.helpers_models import compose_cfg, tiny_modules
from wbc.evaluation import runs
from wbc.review import ReviewOptions
from wbc.scale import ScaleOptions

OVERRIDES = ["review.min_probability=0.8", "review.border=false", "scale=0.5", "tile_batch=3"]


@pytest.fixture
def scored(monkeypatch: pytest.MonkeyPatch) -> list:
    """The pipelines score_pipeline was handed (nothing scored)."""
    pipes: list = []
    monkeypatch.setattr(wbc.evaluation.pipeline, "score_pipeline", lambda pipe, *a, **k: pipes.append(pipe) or {})
    return pipes


def assert_overridden(pipe) -> None:
    assert pipe.review_options == ReviewOptions(min_probability=0.8, border=False)
    assert pipe.scale == ScaleOptions(0.5, batch=3)


@pytest.mark.parametrize("name, extra", [("evaluate.yaml", ["ckpt_path=x"]), ("train.yaml", ["experiment=pipeline"])])
def test_evaluate_and_train_compose_the_predict_defaults(name: str, extra: list[str], tmp_path: Path) -> None:
    cfg = compose_cfg(name, extra, tmp_path)
    assert runs.inference_options(cfg) == (ScaleOptions(), ReviewOptions())
    assert OmegaConf.to_container(cfg.review) == asdict(ReviewOptions())
    assert runs.inference_options(compose_cfg(name, [*extra, *OVERRIDES], tmp_path)) == (
        ScaleOptions(0.5, batch=3), ReviewOptions(min_probability=0.8, border=False))
    with pytest.raises(Exception, match="review.size_lo"):
        compose_cfg(name, [*extra, "review.size_lo=0.4"], tmp_path)


def test_evaluate_scores_the_pipeline_with_the_configs_review_and_scale(scored: list, monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    from wbc.cli import evaluate

    seg, clf = tiny_modules(tmp_path)
    monkeypatch.setattr(runs, "evaluate_members", lambda stage, *a, **k: (
        {}, {"module": seg if stage.name == "segmentation" else clf, "datamodule": None}))
    run = tmp_path / "run"
    for stage in ("segmentation", "classification"):
        (run / stage).mkdir(parents=True)
    evaluate.evaluate(compose_cfg("evaluate.yaml", [f"ckpt_path={run}", *OVERRIDES], tmp_path / "eval"))
    (pipe,) = scored
    assert_overridden(pipe)


def test_a_pipeline_run_scores_with_the_configs_review_and_scale(scored: list, tmp_path: Path) -> None:
    from wbc.stages import score_and_write_pipeline

    seg, clf = tiny_modules(tmp_path)
    cfg = compose_cfg("train.yaml", ["experiment=pipeline", "pipeline.predict_images=0", *OVERRIDES], tmp_path / "run")
    objects = {"segmentation": {"model": seg}, "classification": {"model": clf, "datamodule": None}}
    score_and_write_pipeline(cfg, tmp_path / "run", objects, {})
    (pipe,) = scored
    assert_overridden(pipe)
