"""What each `stage` trains and how its test split is scored (the config picks the stage)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from wbc.fit import fit_stage


def score_segmentation(cfg: DictConfig):
    def _score(model, datamodule, output_dir: Path) -> dict[str, float]:
        from wbc.seg_eval import evaluate_segmentation, headline

        summary = evaluate_segmentation(
            model, datamodule, "test", cfg.get("postprocess"), output_dir / "test_eval", num_overlays=cfg.get("num_overlays", 8)
        )
        return headline(summary, "test")

    return _score


def run_stage(cfg: DictConfig, output_dir: Path) -> tuple[dict, dict]:
    if cfg.stage == "segmentation":
        return fit_stage(cfg, cfg.data, cfg.model, output_dir, score_segmentation(cfg))
    if cfg.stage == "classification":
        from wbc.cls_eval import score_classification

        return fit_stage(cfg, cfg.data, cfg.model, output_dir, score_classification(cfg))
    if cfg.stage == "pipeline":
        from wbc.pipeline import run_pipeline

        return run_pipeline(cfg, output_dir)
    raise ValueError(f"stage={cfg.stage!r}: expected segmentation, classification or pipeline")
