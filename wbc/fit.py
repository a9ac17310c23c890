"""Fit -> test on the best checkpoint -> the stage's scoring -> metrics.json, for one stage.

Used by wbc.stages.run_stage for `stage=segmentation|classification`, and once per stage of a pipeline.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from wbc.appearance import check_coverage, training_appearance
from wbc.io import write_json
from wbc.plots import plot_learning_curves
from wbc.postprocess import PostprocessParams
from wbc.run import instantiate_dict
from wbc.scale import measure_training_scale

log = logging.getLogger("wbc")


def build_datamodule(data_cfg: DictConfig, postprocess: PostprocessParams | None = None) -> L.LightningDataModule:
    """The DataModule of a data node; `postprocess`: how its nucleus masks become cells (the
    classification stage's ground-truth crops), recorded in its data_info."""
    kwargs = {"postprocess": postprocess.to_dict()} if postprocess is not None else {}
    dm = instantiate(data_cfg, _convert_="partial", **kwargs)
    dm.prepare_data()
    dm.load_manifest()  # class list is needed to build the model
    return dm


def build_trainer(cfg: DictConfig, output_dir: Path) -> L.Trainer:
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg.pop("channels_last", None)
    trainer_cfg["default_root_dir"] = str(output_dir)
    fit_accelerator(trainer_cfg)
    callbacks = instantiate_dict(cfg.get("callbacks"), "callbacks")
    loggers = instantiate_dict(cfg.get("logger"), "logger")
    trainer = instantiate(trainer_cfg, callbacks=without_logger_callbacks(callbacks, loggers), logger=loggers or False)
    check_launch(trainer)
    return trainer


def without_logger_callbacks(callbacks: list[Any], loggers: list[Any]) -> list[Any]:
    """The callbacks, less the LearningRateMonitor when there is no logger (`logger=none`): Lightning
    refuses it then ("Cannot use LearningRateMonitor callback with Trainer that has no logger"), and the
    default callback set carries one."""
    from lightning.pytorch.callbacks import LearningRateMonitor

    if loggers or not any(isinstance(cb, LearningRateMonitor) for cb in callbacks):
        return callbacks
    log.info("logger=none: the learning-rate monitor (callbacks.lr_monitor) is left out, it has nowhere to log")
    return [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]


def fit_accelerator(trainer_cfg: dict) -> dict:
    """Settings that only one accelerator supports, turned off (and logged) on the others, so one
    `trainer=ddp` serves GPUs (nccl) and CPU processes (gloo): torch's SyncBatchNorm runs on CUDA
    only ("SyncBatchNorm layers only work with GPU modules")."""
    accelerator = str(trainer_cfg.get("accelerator", "auto")).lower()
    cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if trainer_cfg.get("sync_batchnorm") and not cuda:
        log.info("trainer.sync_batchnorm=true needs CUDA; turned off on accelerator=%s", accelerator)
        trainer_cfg["sync_batchnorm"] = False
    return trainer_cfg


def check_launch(trainer: L.Trainer) -> None:
    """Lightning starts a DDP run's other ranks by running the command line again (with the run's
    dir). In a local Hydra multirun that command is the whole sweep, so each rank would start every
    job: refuse it before anything runs. SLURM tasks and torchrun start the ranks themselves (fine)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    env = getattr(trainer.strategy, "cluster_environment", None)
    launcher = type(getattr(trainer.strategy, "launcher", None)).__name__
    if trainer.world_size < 2 or launcher != "_SubprocessScriptLauncher" or env is None or env.creates_processes_externally:
        return
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ValueError(
            f"DDP with {trainer.world_size} processes in a local multirun: Lightning "
            "would start the other ranks by running the whole sweep again. Run each job as its own command "
            "(e.g. data.fold=0, then data.fold=1, ...), or run the sweep on SLURM (hydra/launcher=submitit_slurm "
            "with hydra.launcher.tasks_per_node = trainer.devices: SLURM starts the ranks)"
        )


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                continue
            v = v.item()
        if isinstance(v, int | float):
            out[k] = float(v)
    return out


def resume_from(cfg: DictConfig, output_dir: Path) -> str | None:
    """The checkpoint trainer.fit continues from: `ckpt_path` if given, else with `resume=true`
    the run dir's own checkpoints/last.ckpt (an interrupted fold of a resumed sweep)."""
    given = cfg.get("ckpt_path")
    if given and Path(str(given)).expanduser().is_dir():
        from wbc.rundir import last_checkpoint_in, resolve_checkpoint

        if not cfg.get("train", True):  # a test-only run tests the run's own choice (best, else last)
            return str(resolve_checkpoint(given, cfg.stage))
        last = last_checkpoint_in(given, cfg.stage)
        if last is None:
            raise FileNotFoundError(f"ckpt_path={given}: holds no {cfg.stage}/checkpoints/last.ckpt or checkpoints/last.ckpt to resume from")
        return str(last)
    if given or not cfg.get("resume"):
        return given
    if not cfg.get("train", True):
        return own_tested_checkpoint(cfg, output_dir)
    last = output_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        from wbc.rundir import is_rank_zero

        log.info("resume=true: %s continues from %s", output_dir, last)
        csv_log = output_dir / "csv" / "metrics.csv"
        if csv_log.is_file() and is_rank_zero():  # the CSV logger starts a new file in the same dir: keep the old epochs
            merge_resumed_csv(csv_log.parent)  # stopped again before the last resume merged them: all attempts' epochs
            csv_log.replace(csv_log.with_name(BEFORE_RESUME))
        return str(last)
    return None


BEFORE_RESUME = "metrics_before_resume.csv"


def own_tested_checkpoint(cfg: DictConfig, output_dir: Path) -> str | None:
    """train=false resume=true (no ckpt_path): the checkpoint the run in output_dir tests: metrics.json's
    best, else the best its last.ckpt recorded (a run stopped while testing), else last.ckpt; None when
    it holds none (fit_stage refuses that rather than test freshly initialised weights)."""
    from wbc.resume import recorded_best
    from wbc.rundir import last_checkpoint_in, resolve_checkpoint

    last = last_checkpoint_in(output_dir, cfg.stage)
    if (output_dir / "metrics.json").is_file() or last is None:
        try:
            return str(resolve_checkpoint(output_dir, cfg.stage))
        except FileNotFoundError:
            return None
    best = recorded_best(last) if cfg.get("eval_checkpoint", "best") == "best" else None
    log.info("resume=true train=false: %s tests %s", output_dir, best or last)
    return str(best or last)


def finished_fit(cfg: DictConfig, output_dir: Path, resume_ckpt: str | None) -> str | None:
    """resume=true in a run dir stopped after its last epoch (while testing or scoring): last.ckpt ran the whole
    schedule or early stopping had stopped it (wbc.resume.fit_ended), so fit is skipped. Returns the checkpoint the
    uninterrupted run tested (its ModelCheckpoint's recorded best, or last.ckpt with eval_checkpoint=last); else None."""
    from wbc.resume import fit_ended, recorded_best

    last = output_dir / "checkpoints" / "last.ckpt"
    if (not cfg.get("resume") or cfg.get("ckpt_path") or not cfg.get("train", True) or cfg.trainer.get("fast_dev_run")
            or resume_ckpt != str(last)):
        return None
    reached = fit_ended(last, cfg.trainer, cfg.get("callbacks"))
    if reached is None:
        return None
    best = recorded_best(last) if cfg.get("eval_checkpoint", "best") == "best" else None
    log.info("resume=true: %s finished training before it stopped (%s): testing and scoring %s", output_dir, reached, best or last)
    return str(best or last)


def merge_resumed_csv(csv_dir: Path) -> None:
    """csv/metrics.csv of a resumed run = the epochs logged before the interruption (up to the
    checkpoint it resumed from) + those logged after, so learning curves stay whole."""
    import csv

    old_path, new_path = csv_dir / BEFORE_RESUME, csv_dir / "metrics.csv"
    if not old_path.is_file() or not new_path.is_file():
        return
    with open(old_path, newline="") as fh:
        old = list(csv.DictReader(fh))
    with open(new_path, newline="") as fh:
        reader = csv.DictReader(fh)
        new, new_keys = list(reader), list(reader.fieldnames or [])
    def tested(r: dict) -> bool:
        return any(v not in (None, "") for k, v in r.items() if k and k.startswith("test/"))

    # a run that skipped fit (it had finished training) logs only its test: those rows mark no epoch
    first_epoch = min((int(float(r["epoch"])) for r in new if r.get("epoch") and not tested(r)), default=None)
    first_step = min((int(float(r["step"])) for r in new if r.get("step") and not tested(r)), default=None)
    if any(tested(r) for r in new):  # the interrupted attempt's test rows: tested again
        old = [r for r in old if not tested(r)]

    def before(r: dict) -> bool:
        if r.get("epoch"):
            return first_epoch is None or int(float(r["epoch"])) < first_epoch
        return bool(r.get("step")) and (first_step is None or int(float(r["step"])) < first_step)

    kept = [r for r in old if before(r)]
    keys = list(dict.fromkeys([*new_keys, *(k for r in kept for k in r)]))
    from wbc.io import atomic_write

    def _write(p: Path) -> None:
        with open(p, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows([*kept, *new])

    atomic_write(new_path, _write)
    old_path.unlink()


def load_finished_stage(cfg: DictConfig, output_dir: Path) -> tuple[dict, dict] | None:
    """resume=true and this stage's dir already holds metrics.json (a pipeline run interrupted after
    it): reload its best checkpoint instead of training again. None when it cannot be reloaded."""
    from wbc.rundir import read_metrics, resolve_checkpoint
    from wbc.stages import get_stage

    stage = get_stage(cfg.stage)
    try:
        metrics = read_metrics(output_dir)
        ckpt = resolve_checkpoint(output_dir, stage.name)
        model = stage.load(ckpt)
    except (OSError, ValueError) as err:
        log.warning("resume=true: cannot reuse the finished stage in %s (%s): training it again", output_dir, err)
        return None
    log.info("resume=true: %s already finished: reloaded %s", output_dir, ckpt)
    return metrics, {"datamodule": build_datamodule(cfg.data, postprocess_of(cfg)), "model": model, "trainer": None}


def postprocess_of(cfg: DictConfig) -> PostprocessParams:
    """The run's `postprocess` node as params (its defaults: wbc.postprocess.PostprocessParams)."""
    node = cfg.get("postprocess")
    return PostprocessParams.from_config(OmegaConf.to_container(node, resolve=True) if node is not None else None)


def latest_checkpoint(trainer: L.Trainer) -> str | None:
    """The checkpoint of the final epoch: a monitor-less ModelCheckpoint's file (callbacks.last_checkpoint),
    else a monitoring one's last_model_path."""
    callbacks = trainer.checkpoint_callbacks
    for cb in callbacks:
        if getattr(cb, "monitor", None) is None and getattr(cb, "best_model_path", ""):
            return cb.best_model_path
    return next((cb.last_model_path for cb in callbacks if getattr(cb, "last_model_path", "")), None)


def init_from(cfg: DictConfig, model: L.LightningModule, stage: str) -> None:
    """`init_from=<run dir or .ckpt>`: fine-tune from a trained model's weights (e.g. on a new lab's
    few annotated cells). A resumed run continues its own checkpoint instead, so both at once is an
    error; input settings that differ from the checkpoint's are logged, since the weights saw other pixels."""
    from lightning_modules.common import init_weights_from
    from wbc.data.transforms import Preprocess
    from wbc.rundir import resolve_checkpoint

    if cfg.get("ckpt_path"):
        raise ValueError(f"init_from={cfg.init_from} and ckpt_path={cfg.ckpt_path}: give one (init_from starts a new run "
                         "from a model's weights; ckpt_path continues an interrupted run)")
    path = resolve_checkpoint(cfg.init_from, stage, key="init_from")
    saved = init_weights_from(model, str(path), stage)
    own = model.hparams.get("data_info") or {}
    differ = [f"{k}: {saved.get(k)!r} -> {own.get(k)!r}" for k in ("preprocess", "image_size", "crops")
              if not Preprocess.same_setting(k, saved.get(k), own.get(k))]
    log.info("init_from: fine-tuning from %s", path)
    if differ:
        log.warning("init_from: %s was trained with other input settings (%s)", path, "; ".join(differ))


def fit_stage(cfg: DictConfig, output_dir: Path) -> tuple[dict[str, float], dict[str, Any]]:
    """Train `cfg.stage` (segmentation or classification) in output_dir, test the chosen checkpoint,
    score test (and validation) with the stage's scoring; returns (metrics, objects)."""
    from wbc.stages import get_stage

    stage = get_stage(cfg.stage)
    output_dir.mkdir(parents=True, exist_ok=True)
    # each stage from the run's seed: a pipeline's classifier would otherwise start from whatever RNG state
    # segmentation training left, and a pipeline resumed after its segmentation stage trained another one
    L.seed_everything(cfg.get("seed"), workers=True)
    if cfg.get("resume") and (output_dir / "metrics.json").is_file():
        finished = load_finished_stage(cfg, output_dir)
        if finished is not None:
            return finished
    resume_ckpt = resume_from(cfg, output_dir)  # before the loggers start (the CSV logger clears its file)
    if not cfg.get("train", True) and not resume_ckpt and not cfg.get("init_from"):
        where = f"resume=true: {output_dir} holds no checkpoint" if cfg.get("resume") else "no ckpt_path was given"
        raise FileNotFoundError(f"train=false tests a trained model, and {where}: pass ckpt_path=<a run dir or .ckpt> "
                                "(or resume=true in the run dir of a run that holds checkpoints/)")
    done = finished_fit(cfg, output_dir, resume_ckpt)  # fit already ran to its end: test, validate, score
    post = postprocess_of(cfg)
    datamodule = build_datamodule(cfg.data, post)
    data_info = {**datamodule.data_info(), "scale": measure_training_scale(datamodule, datamodule.pixel_size_um)}
    if cfg.get("appearance_coverage") is not None:  # the training images' colour profile (wbc.appearance)
        data_info["appearance"] = training_appearance(datamodule, check_coverage(cfg.appearance_coverage), int(cfg.get("seed") or 0))
    model = instantiate(cfg.model, data_info=data_info)  # data_info: the checkpoint's "plans"
    if cfg.get("init_from"):
        init_from(cfg, model, stage.name)
    if resume_ckpt:  # one clear error (missing, not a checkpoint, other stage) before Lightning's deep ones
        from lightning_modules.common import check_resume_checkpoint, load_checkpoint

        if cfg.get("train", True):
            check_resume_checkpoint(resume_ckpt, stage.name, data_info)
        else:
            load_checkpoint(resume_ckpt, stage.name)
    if cfg.get("eval_checkpoint", "best") not in ("best", "last"):
        raise ValueError(f"eval_checkpoint={cfg.get('eval_checkpoint')!r}: expected 'best' or 'last'")
    trainer = build_trainer(cfg, output_dir)
    if cfg.trainer.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    for lg in trainer.loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    metrics: dict[str, float] = {}
    if done:
        from wbc.resume import logged_fit_metrics

        metrics.update(logged_fit_metrics(output_dir / "csv" / BEFORE_RESUME, Path(resume_ckpt)))
    elif cfg.get("train", True):
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=resume_ckpt)
        metrics.update(scalar_metrics(trainer.callback_metrics))
    ckpt = None
    cb = trainer.checkpoint_callback
    last = latest_checkpoint(trainer) if cfg.get("eval_checkpoint", "best") == "last" else None
    if last:
        ckpt = last
    elif cb is not None and getattr(cb, "best_model_path", ""):
        ckpt = cb.best_model_path
    elif done or (not cfg.get("train", True) and resume_ckpt):
        ckpt = done or resume_ckpt  # test-only run (train=false): test the given checkpoint (a run dir's own), not fresh weights
    if trainer.world_size > 1:  # every rank tests the file rank zero saved
        ckpt = trainer.strategy.broadcast(ckpt, src=0)
    metrics["best_checkpoint"] = ckpt  # type: ignore[assignment]
    if cfg.get("train", True) and ckpt and cfg.get("eval_checkpoint", "best") == "best":
        metrics.update(validate_tested(trainer, model, datamodule, ckpt))
    if cfg.get("test", True):
        if ckpt is None:
            log.warning("No best checkpoint (checkpointing off or fast_dev_run): testing the current weights")
        # under DDP each rank tests its own share of the split (datamodules' ShardSampler), metrics synced
        results = trainer.test(model=model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True) if ckpt else trainer.test(model=model, datamodule=datamodule)
        for r in results:
            metrics.update(scalar_metrics(r))
        if trainer.is_global_zero:
            metrics.update(score_after_test(cfg, stage, model, datamodule, output_dir, post))
    if trainer.is_global_zero:
        merge_resumed_csv(output_dir / "csv")
        plot_learning_curves(output_dir / "csv" / "metrics.csv", output_dir / "learning_curves.png")
        write_json(output_dir / "metrics.json", metrics)
    metrics = from_rank_zero(trainer, metrics)
    return metrics, {"datamodule": datamodule, "model": model, "trainer": trainer}


def validate_tested(trainer: L.Trainer, model: L.LightningModule, datamodule: L.LightningDataModule, ckpt: str) -> dict[str, float]:
    """The val/ figures of the weights that are tested (eval_checkpoint=best), in place of the last epoch's that
    fit logged: the CV summary averages val/ beside the tested weights' out-of-fold figures, and they had
    described two different sets of weights. Not logged again: the learning curves keep one row an epoch."""
    loggers, trainer.loggers = trainer.loggers, []
    try:
        results = trainer.validate(model=model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True, verbose=False)
    finally:
        trainer.loggers = loggers
    return {k: v for r in results for k, v in scalar_metrics(r).items() if k.startswith("val/") and not k.endswith("_best")}


def score_after_test(cfg: DictConfig, stage: Any, model: L.LightningModule, datamodule: L.LightningDataModule, output_dir: Path, post: PostprocessParams) -> dict[str, float]:
    """The stage's own scoring of the tested weights, outside Lightning's logged metrics: the whole test
    split at original resolution (test_eval/, predictions), then the validation split (the fold's
    out-of-fold files). Called on global rank zero only, over the whole splits, so under DDP every
    image is scored once and every file written once."""
    metrics: dict[str, float] = {}
    try:  # the test split's own scoring sees the model as trainer.test did (adapted to it: AdaptBatchNorm) ...
        stage.scoring.report_test(model, output_dir)
        if cfg.trainer.get("fast_dev_run"):
            return {}
        model.eval()
        metrics.update(stage.scoring.score_test(model, datamodule, output_dir, post, cfg.get("num_overlays", 8)))
    finally:  # ... the validation split the checkpoint's own model
        trainer = model._trainer
        for cb in trainer.callbacks if trainer is not None else ():
            if callable(getattr(cb, "restore_after_test", None)):
                cb.restore_after_test()
    val = getattr(datamodule, "datasets", {}).get("val")
    # the validation split with the tested weights: the fold's out-of-fold predictions (pooled by
    # the CV summary). With eval_checkpoint=best the epoch was chosen on it (slightly optimistic).
    if cfg.get("score_val", True) and val is not None and len(val):
        metrics.update(stage.scoring.score_val(model, datamodule, output_dir, post))
    return metrics


def from_rank_zero(trainer: L.Trainer | None, metrics: dict[str, Any]) -> dict[str, Any]:
    """Rank zero's metrics on every rank (a no-op in one process). The other ranks wait here while
    rank zero scores and writes, then return the same figures (a sweeper's optimized metric, the
    next pipeline stage) instead of their partial ones."""
    if trainer is None or trainer.world_size < 2:
        return metrics
    return trainer.strategy.broadcast(metrics, src=0)
