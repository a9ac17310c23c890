"""`wbc-evaluate` / `python evaluate.py ckpt_path=<.ckpt | run dir | pipeline run | sweep dir | [a,b]> [split=val]`
(or `segmenter=<run> classifier=<run>`: two separate runs scored as one pipeline).

Scores a segmentation run, a classification run, a pipeline run (both stages + the full pipeline)
or a fold ensemble on one split, at each image's original resolution (wbc.evaluation.runs).
Writes summary.json (+ masks/, overlays/ or predictions.csv, confusion.png), metrics.json and
data_config.yaml to this run's output dir.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from wbc.cli import CONFIG_DIR, prepare
from wbc.run import extras, task_wrapper


def eval_device(cfg: DictConfig) -> str:
    """The GPU when trainer.accelerator asks for one and CUDA is there, else the CPU."""
    import torch

    accelerator = str((cfg.get("trainer") or {}).get("accelerator", "cpu"))
    return "cuda" if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available() else "cpu"


def ckpt_argument(cfg: DictConfig) -> str | list | dict | None:
    """cfg.ckpt_path, or {"segmentation": segmenter, "classification": classifier} when both are
    given (two separate runs scored as one pipeline), or None when nothing is given."""
    def value(key: str):
        if key not in cfg or OmegaConf.is_missing(cfg, key):
            return None
        spec = cfg[key]
        return OmegaConf.to_container(spec) if OmegaConf.is_config(spec) else spec

    ckpt, seg, clf = value("ckpt_path"), value("segmenter"), value("classifier")
    if seg in (None, "") and clf in (None, ""):
        return ckpt
    if seg in (None, "") or clf in (None, ""):
        raise ValueError("segmenter= and classifier= go together (two runs scored as one pipeline); one stage alone: ckpt_path=<its run>")
    if ckpt not in (None, ""):
        raise ValueError(f"ckpt_path={ckpt} and segmenter=/classifier= both given: pass one or the other")
    return {"segmentation": seg, "classification": clf}


@task_wrapper
def evaluate(cfg: DictConfig) -> tuple[dict, dict]:
    """Evaluate `ckpt_path` on `split`; returns (metrics, objects)."""
    import lightning as L

    from wbc.adaptation import adapt_targets
    from wbc.evaluation.runs import evaluate_spec, inference_options, postprocess_overrides

    L.seed_everything(cfg.seed, workers=True)
    scale, review = inference_options(cfg)  # the full pipeline's review.* and scale keys, read as predict.py reads them
    return evaluate_spec(
        ckpt_argument(cfg), cfg.split, Path(cfg.paths.output_dir), cfg.get("data"), postprocess_overrides(cfg.get("postprocess")),
        cfg.num_overlays, cfg.get("tta"), eval_device(cfg), adapt_targets(cfg.get("adapt_bn")), cfg.get("morphology"),
        cfg.get("iou_threshold"), scale=scale, review=review,
    )


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate.yaml")
def run(cfg: DictConfig) -> None:
    if ckpt_argument(cfg) in (None, ""):  # one clear error before extras prints the config
        raise ValueError("ckpt_path is required: python evaluate.py ckpt_path=<run dir, sweep dir or .ckpt file> "
                         "(or segmenter=<run> classifier=<run>)")
    extras(cfg)
    evaluate(cfg)


def main() -> None:
    """Console script `wbc-evaluate` (and `python evaluate.py`)."""
    prepare()
    run()
