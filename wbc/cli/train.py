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

    check_not_finished(cfg, Path(cfg.paths.output_dir))
    L.seed_everything(cfg.seed, workers=True)
    metrics, objects = run_stage(cfg, Path(cfg.paths.output_dir), cli_keys(_hydra_job()[3]))
    shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float) and k.startswith(("test/", "pipeline/"))}
    from wbc.rundir import is_rank_zero

    if is_rank_zero():  # a DDP run's other ranks hold the same figures (broadcast from rank zero)
        log.info("Final test metrics: %s", shown)
        print(f"\nFinal test metrics ({cfg.stage}): " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(shown.items())))
    return metrics, objects


def check_not_finished(cfg: DictConfig, out: Path) -> None:
    """Resuming a checkpoint that already reached trainer.max_epochs / max_steps trains nothing, and
    the run would end without its validation metrics (a KeyError on optimized_metric): say so first.
    `resume=true` in a run dir stopped after its last epoch (while testing or scoring: last.ckpt, no
    metrics.json) is not refused: wbc.fit skips fit and tests, validates and scores its best checkpoint."""
    if not cfg.get("train", True) or cfg.stage == "pipeline" or cfg.trainer.get("fast_dev_run") or not cfg.get("ckpt_path"):
        return  # a pipeline resumes each stage from its own last.ckpt (wbc.stages)
    from wbc.resume import schedule_reached
    from wbc.rundir import last_checkpoint_in

    ckpt = last_checkpoint_in(cfg.ckpt_path, cfg.stage)  # a run dir: its last.ckpt
    reached = schedule_reached(ckpt, cfg.trainer) if ckpt is not None else None
    if reached is None:
        return
    raise ValueError(
        f"ckpt_path={ckpt}: this run already finished training ({reached}), so there is nothing to resume. Raise "
        f"trainer.max_epochs to train on, or test and score it: python train.py train=false ckpt_path={ckpt} "
        "(or python evaluate.py ckpt_path=<its run dir>)"
    )


def cli_keys(overrides: list[str]) -> list[str]:
    """The dotted keys a command line set (`trainer.max_epochs=5`, `+x.y=1`); deletions and config
    group choices with a package (`augment@data.crops.transforms=robust`) are not values."""
    keys = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+")
        if "=" in o and not o.startswith("~") and "@" not in key:
            keys.append(key)
    return keys


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
    checkpoints/last.ckpt (wbc.fit). Without resume=true a run dir that holds results is refused."""
    from wbc import provenance, resume, rundir

    out = Path(cfg.paths.output_dir)
    multirun, basic_sweeper, job_num, overrides = _hydra_job()
    if not cfg.get("resume"):  # before the try: a FAILED marker would brand the earlier run's results as failed
        rundir.check_fresh(out, multirun, cfg.get("ckpt_path"))
    try:
        # every run records which job it is, what its weights come from and the software it ran with
        # (job.json), so a later resume=true into this dir can check it is the same job
        loggers = OmegaConf.to_container(cfg.logger, resolve=True) if cfg.get("logger") else {}
        record = resume.job_record(
            cfg.data.get("fold"), cfg.stage, overrides, job_num, cfg.task_name, cfg.get("optimized_metric"), loggers,
            {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k] for k in resume.JOB_SETTINGS if k in cfg},
            provenance.software_record(),
        )
        if cfg.get("resume"):
            resume.check_same_job(out, record)
            done = rundir.finished_metrics(out)
            if done is not None:
                log.info("resume=true: %s already finished (metrics.json): skipped", out)
                print(f"resume=true: {out} already finished: skipped")
                warn_other_overrides(out, record)
                return rundir.returned_metric(done, cfg.get("optimized_metric"))
        rundir.start_job(out, record)
        extras(cfg)
        metrics, _ = train(cfg)
        if cfg.trainer.get("fast_dev_run"):
            return None  # smoke runs skip the scoring that produces some optimized metrics
        if not cfg.get("train", True) and cfg.get("optimized_metric") not in metrics:
            return None  # train=false: no validation epoch, so no metric to hand a sweeper
        return metric_value(metrics, cfg.get("optimized_metric"))
    except Exception as err:
        if not multirun:
            raise
        rundir.write_failure(out, err)
        if not basic_sweeper:
            raise
        log.error("Job %s failed (%s: %s); %s written, the multirun goes on", job_num, type(err).__name__, err, out / rundir.FAILED)
        return float("nan")


def warn_other_overrides(out: Path, record: dict) -> None:
    """A finished job kept by resume=true ran with the overrides in its job.json; name those the new
    launch changes (e.g. trainer.max_epochs), since its metrics stay those of the old settings."""
    from wbc.resume import differing_overrides

    lines = differing_overrides(out, record)
    if lines:
        msg = (f"resume=true: {out} finished with other overrides than this launch ({'; '.join(lines)}): "
               "its metrics are kept and the summary labels it with the overrides it ran with")
        log.warning(msg)
        print(f"WARNING: {msg}")


def main() -> None:
    """Console script `wbc-train` (and `python train.py`)."""
    prepare()
    run()
