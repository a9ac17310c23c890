"""Train a stage from config: `python train.py [experiment=classify|pipeline] [key=value ...]`.

Returns (and writes to metrics.json) the metric named by `optimized_metric`, for sweepers.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
import lightning as L  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import wbc  # noqa: E402,F401  (offline defaults + config resolvers)
from wbc.run import extras, log, metric_value, task_wrapper  # noqa: E402
from wbc.stages import run_stage  # noqa: E402


@task_wrapper
def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Seed, fit, test the best checkpoint, score; returns (metrics, objects)."""
    L.seed_everything(cfg.seed, workers=True)
    metrics, objects = run_stage(cfg, Path(cfg.paths.output_dir))
    shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float) and k.startswith(("test/", "pipeline/"))}
    log.info("Final test metrics: %s", shown)
    print(f"\nFinal test metrics ({cfg.stage}): " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(shown.items())))
    return metrics, objects


@hydra.main(version_base="1.3", config_path="conf", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    extras(cfg)
    metrics, _ = train(cfg)
    if cfg.trainer.get("fast_dev_run"):
        return None  # smoke runs skip the scoring that produces some optimized metrics
    return metric_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
