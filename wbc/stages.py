"""What a stage is, and how `train.py` runs one (or, for `stage=pipeline`, both and the pipeline).

A :class:`Stage` names everything that differs between segmentation and classification: the
LightningModule a checkpoint rebuilds, the ensemble type that averages its members, and the
evaluation module (wbc.evaluation.segmentation / .classification) that predicts, averages, scores a
split, scores the test and validation splits after training and pools out-of-fold predictions. The
datamodule class and the monitored metric come from the stage's config node (conf/stage/). Code
that used to branch on the stage name asks `STAGES[name]` instead.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("wbc")


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Stage:
    name: str
    module_class: str  # LightningModule a checkpoint of this stage rebuilds
    ensemble_class: str  # averages members' probabilities (wbc.ensemble)
    evaluation: str  # predict / average / score / score_test / score_val / pool_oof / OOF_FILE / UNIT / MAIN_METRIC

    @property
    def scoring(self) -> ModuleType:
        return importlib.import_module(self.evaluation)

    @property
    def main_metric(self) -> str:
        """The split-relative headline metric (`<split>/<main_metric>`)."""
        return self.scoring.MAIN_METRIC

    def load(self, ckpt: str | Path, device: str = "cpu", key: str = "ckpt_path"):
        """The module of one checkpoint, weights-only, refusing another stage's file; `key` names the setting in errors."""
        from lightning_modules.common import module_from_checkpoint

        return module_from_checkpoint(_import(self.module_class), str(ckpt), self.name, str(device), key)

    def ensemble(self, modules: list, names: list[str]):
        return _import(self.ensemble_class)(modules, names)


STAGES: dict[str, Stage] = {
    "segmentation": Stage(
        "segmentation", "lightning_modules.segmentation.SegmentationModule", "wbc.ensemble.SegmentationEnsemble", "wbc.evaluation.segmentation"
    ),
    "classification": Stage(
        "classification", "lightning_modules.classification.ClassifierModule", "wbc.ensemble.ClassifierEnsemble", "wbc.evaluation.classification"
    ),
}
PIPELINE = "pipeline"


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise ValueError(f"stage={name!r}: expected one of {[*STAGES, PIPELINE]}")
    return STAGES[name]


# ----------------------------------------------------------------------------- running a stage
def stage_config(cfg: DictConfig, name: str, output_dir: Path, cli_keys: Sequence[str] = ()) -> DictConfig:
    """A pipeline stage's full config: the run's shared nodes (data, trainer, callbacks, ...) with
    the stage's own node (`cfg.<name>`, composed from conf/stage/<name>.yaml and CLI overrides) merged
    on top, its own output dir, and resume only from its own last.ckpt.

    `cli_keys` are the dotted keys the command line set: a shared value given there
    (`trainer.max_epochs=5`) reaches every stage, over the stage's own default (conf/stage/
    classification.yaml's 30 epochs), unless the stage's own key was given too
    (`classification.trainer.max_epochs=3`)."""
    base = OmegaConf.to_container(cfg, resolve=False)
    own = base.pop(name)
    own_cfg = OmegaConf.create(own)
    for key in cli_keys:
        if key.split(".")[0] in (*STAGES, PIPELINE) or f"{name}.{key}" in cli_keys:
            continue
        value = OmegaConf.select(cfg, key, default=None)
        if OmegaConf.select(own_cfg, key, default=None) is not None and not OmegaConf.is_config(value):
            OmegaConf.update(own_cfg, key, value, force_add=True)
    own = OmegaConf.to_container(own_cfg, resolve=False)
    if isinstance(own.get("trainer"), dict):  # a stage's trainer key left null follows the shared one
        own["trainer"] = {k: v for k, v in own["trainer"].items() if v is not None}
    for other in (*STAGES, PIPELINE):
        base.pop(other, None)
    callbacks = own.get("callbacks")
    if isinstance(callbacks, dict):  # tune only the callbacks this run has (debug / callbacks=none: none)
        present = base.get("callbacks") or {}
        own["callbacks"] = {k: v for k, v in callbacks.items() if k in present and (present[k] is not None or v is None)}
    sub = OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(own))
    OmegaConf.update(sub, "paths.output_dir", str(output_dir), force_add=True)
    OmegaConf.update(sub, "ckpt_path", stage_checkpoint(cfg.get("ckpt_path"), name, output_dir), force_add=True)
    return sub


def stage_checkpoint(given: Any, name: str, output_dir: Path) -> str | None:
    """A pipeline's `ckpt_path` for one stage: the given pipeline run dir's `<name>/` sub-run (its fit resolves
    it: train=false tests its checkpoint, a resume continues its last.ckpt), else the stage dir's own last.ckpt
    (a run continued in place). A value that names neither is refused: it had been dropped without a word, and
    train=false then tested freshly initialised weights."""
    if not given:
        return None
    run = Path(str(given)).expanduser()
    if (run / name).is_dir():
        return str(run / name)
    last = output_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        return str(last)
    raise ValueError(f"ckpt_path={given}: a pipeline run takes a pipeline run dir (holding {'/ and '.join(STAGES)}/), "
                     f"and {given} has no {name}/ sub-run")


def run_stage(cfg: DictConfig, output_dir: Path, cli_keys: Sequence[str] = ()) -> tuple[dict, dict]:
    """Train `cfg.stage` in output_dir (a pipeline: each stage in its sub-dir, then the pipeline
    scored); returns (metrics, objects)."""
    from wbc.fit import fit_stage

    if cfg.stage != PIPELINE:
        get_stage(cfg.stage)
        return fit_stage(cfg, output_dir)
    return run_pipeline(cfg, output_dir, cli_keys)


def run_pipeline(cfg: DictConfig, output_dir: Path, cli_keys: Sequence[str] = ()) -> tuple[dict, dict]:
    """Each stage in its sub-dir, then the whole pipeline scored on the test split. Under DDP the
    stages train on every rank; the pipeline scoring, the predict run and metrics.json are rank
    zero's (over the whole split), and the other ranks get its metrics."""
    from wbc.adaptation import adapt_targets
    from wbc.fit import fit_stage, from_rank_zero
    from wbc.resume import check_same_stage
    from wbc.rundir import is_rank_zero, save_config

    adapt = adapt_targets(cfg.pipeline.get("adapt_bn"), "pipeline.adapt_bn")  # a bad value fails now, not after training
    metrics: dict = {}
    objects: dict = {}
    for name in STAGES:
        sub_dir = output_dir / name
        sub = stage_config(cfg, name, sub_dir, cli_keys)
        resolved = OmegaConf.to_container(sub, resolve=True)
        if cfg.get("resume"):  # weights already there must come from these settings
            check_same_stage(sub_dir, resolved)
        if is_rank_zero():  # what this stage ran with, read by evaluate/ensembles
            save_config(sub_dir, resolved)
        stage_metrics, objects[name] = fit_stage(sub, sub_dir)
        metrics.update({f"{name}/{k}": v for k, v in stage_metrics.items()})
    if is_rank_zero():
        score_and_write_pipeline(cfg, output_dir, objects, metrics, adapt)
    trainers = [o["trainer"] for o in objects.values() if o.get("trainer") is not None]
    return from_rank_zero(trainers[-1] if trainers else None, metrics), objects


def score_and_write_pipeline(cfg: DictConfig, output_dir: Path, objects: dict, metrics: dict, adapt: Sequence[str] = ()) -> None:
    """The full pipeline on the test split (its `adapt` models first AdaBN-adapted to the test images),
    a few predict.py-style outputs, then metrics.json (updates `metrics`). The pipeline reads the run's
    `review.*` and scale keys (conf/review/, conf/inference/scale.yaml) as predict.py does."""
    from wbc.io import write_json

    if not cfg.trainer.get("fast_dev_run"):
        from wbc.evaluation.pipeline import score_pipeline
        from wbc.evaluation.runs import inference_options
        from wbc.inference import CellPipeline

        scale, review = inference_options(cfg)
        pipe = CellPipeline(objects["segmentation"]["model"], objects["classification"]["model"], scale=scale, review=review)
        dm = objects["classification"]["datamodule"]
        metrics.update(score_pipeline(pipe, dm, output_dir, cfg.pipeline.get("iou_threshold", 0.5), tuple(adapt)))
        n_predict = int(cfg.pipeline.get("predict_images", 0))
        if n_predict:
            from wbc.predict_io import predict_images

            files = [s.sample.image for s in dm.cached(dm.split_ids()["test"][:n_predict])]
            predict_images(pipe, files, output_dir / "predict", overwrite=bool(cfg.get("resume")))  # a resumed run redoes it
    for key in ("test/dice_post", "test/macro_f1"):
        for name in STAGES:
            if f"{name}/{key}" in metrics:
                metrics[key] = metrics[f"{name}/{key}"]
    write_json(output_dir / "metrics.json", metrics)
