"""`wbc-train` / `python train.py [experiment=classify|pipeline] [key=value ...]`: train a stage.

Returns (and writes to metrics.json) the metric named by `optimized_metric`, for sweepers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from wbc.cli import CONFIG_DIR, prepare
from wbc.run import extras, metric_value, task_wrapper

log = logging.getLogger("wbc")


@task_wrapper
def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Seed, fit, test the chosen checkpoint, score; returns (metrics, objects)."""
    import lightning as L

    from wbc.stages import run_stage

    L.seed_everything(cfg.seed, workers=True)
    metrics, objects = run_stage(cfg, Path(cfg.paths.output_dir))
    shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float) and k.startswith(("test/", "pipeline/"))}
    log.info("Final test metrics: %s", shown)
    print(f"\nFinal test metrics ({cfg.stage}): " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(shown.items())))
    return metrics, objects


def _hydra_job() -> tuple[bool, bool, object, list[str]]:
    """(multirun?, basic sweeper?, job number, task overrides) of the running Hydra job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False, False, None, []
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    basic = str(hc.sweeper.get("_target_", "")).endswith("BasicSweeper")
    return multirun, basic, hc.job.get("num") if multirun else None, list(hc.overrides.task)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train.yaml")
def run(cfg: DictConfig) -> float | None:
    """One run, or one job of a multirun.

    In a multirun a failing job writes `<run>/FAILED` and returns NaN so the other folds still run
    and the sweep summary names it (with a sweeper that handles failures itself, e.g. Optuna's
    `max_failure_rate`, the exception is re-raised for it). `resume=true`: a run dir that already
    holds metrics.json is skipped (its metric is returned); an interrupted one continues from its
    checkpoints/last.ckpt (wbc.fit)."""
    from wbc import rundir

    out = Path(cfg.paths.output_dir)
    multirun, basic_sweeper, job_num, overrides = _hydra_job()
    try:
        if multirun or cfg.get("resume"):
            loggers = OmegaConf.to_container(cfg.logger, resolve=True) if cfg.get("logger") else {}
            record = rundir.job_record(
                cfg.data.get("fold"), cfg.stage, overrides, job_num, cfg.task_name, cfg.get("optimized_metric"), loggers
            )
            if cfg.get("resume"):
                rundir.check_same_job(out, record)
                done = rundir.finished_metrics(out)
                if done is not None:
                    log.info("resume=true: %s already finished (metrics.json): skipped", out)
                    print(f"resume=true: {out} already finished: skipped")
                    return rundir.returned_metric(done, cfg.get("optimized_metric"))
            rundir.start_job(out, record)
        extras(cfg)
        metrics, _ = train(cfg)
        if cfg.trainer.get("fast_dev_run"):
            return None  # smoke runs skip the scoring that produces some optimized metrics
        return metric_value(metrics, cfg.get("optimized_metric"))
    except Exception as err:
        if not multirun:
            raise
        rundir.write_failure(out, err)
        if not basic_sweeper:
            raise
        log.error("Job %s failed (%s: %s); %s written, the multirun goes on", job_num, type(err).__name__, err, out / rundir.FAILED)
        return float("nan")


def main() -> None:
    """Console script `wbc-train` (and `python train.py`)."""
    prepare()
    run()
