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


def _epochs_done(path: Path) -> tuple[int, int] | None:
    """(epochs Lightning counts as done, global step) of a checkpoint; None when it cannot tell
    (fit's own checks report unreadable files)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]), int(ckpt["global_step"])
    except Exception:  # noqa: BLE001 - not ours to report here
        return None


def check_not_finished(cfg: DictConfig, out: Path) -> None:
    """Resuming a checkpoint that already reached trainer.max_epochs / max_steps trains nothing, and
    the run would end without its validation metrics (a KeyError on optimized_metric): say so first."""
    if not cfg.get("train", True) or cfg.stage == "pipeline" or cfg.trainer.get("fast_dev_run"):
        return  # a pipeline resumes each stage from its own last.ckpt (wbc.stages)
    from wbc.rundir import last_checkpoint_in

    last = out / "checkpoints" / "last.ckpt"
    resumed = cfg.get("resume") and not cfg.get("ckpt_path") and last.is_file() and not (out / "metrics.json").is_file()
    ckpt = last_checkpoint_in(cfg.ckpt_path, cfg.stage) if cfg.get("ckpt_path") else last if resumed else None  # a run dir: its last.ckpt
    done = _epochs_done(ckpt) if ckpt is not None and ckpt.is_file() else None
    if done is None:
        return
    epochs, step = done
    max_epochs, max_steps = cfg.trainer.get("max_epochs"), cfg.trainer.get("max_steps") or -1
    if max_epochs is None and max_steps == -1:
        max_epochs = 1000  # Lightning's default
    if max_steps > 0 and step >= max_steps:
        reached = f"its {step} steps reach trainer.max_steps={max_steps}"
    elif max_epochs is not None and max_epochs >= 0 and epochs >= max_epochs:
        reached = f"its {epochs} epoch(s) reach trainer.max_epochs={max_epochs}"
    else:
        return
    where = f"ckpt_path={ckpt}" if cfg.get("ckpt_path") else f"resume=true: {out} (no metrics.json: it stopped after training)"
    raise ValueError(
        f"{where}: this run already finished training ({reached}), so there is nothing to resume. Raise "
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
    checkpoints/last.ckpt (wbc.fit)."""
    from wbc import provenance, resume, rundir

    out = Path(cfg.paths.output_dir)
    multirun, basic_sweeper, job_num, overrides = _hydra_job()
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


def main() -> None:
    """Console script `wbc-train` (and `python train.py`)."""
    prepare()
    run()
