"""Full pipeline on new images: image -> nucleus mask -> cells -> class + probability.

`python predict.py input=<image or folder> run=<pipeline run dir>` writes per image a nucleus
mask PNG, an overlay with each cell's contour, class and probability, the crops, and one
predictions.csv + predictions.json for all cells. Unreadable images are reported and skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

import wbc  # noqa: E402,F401
from wbc.run import extras, log, task_wrapper  # noqa: E402


@task_wrapper
def predict(cfg: DictConfig) -> tuple[dict, dict]:
    from datamodules.cells import CropSpec
    from wbc.ensemble import has_stage, is_sweep_dir
    from wbc.inference import CellPipeline
    from wbc.predict_io import list_inputs, predict_images

    runs = cfg.get("ensemble") or cfg.run  # a run dir, or a sweep dir of fold runs / a list (fold ensemble)
    segmenter = cfg.segmenter or runs
    classifier = cfg.classifier or runs
    from_sweep = runs is not None and (cfg.get("ensemble") or is_sweep_dir(str(runs)))
    if cfg.classifier is None and from_sweep and not has_stage(runs, "classification"):
        # e.g. a segmentation-only sweep: masks and crops only
        log.info("%s holds no classifier: nucleus masks and crops only (add classifier=<run, sweep dir or ckpt>)", runs)
        classifier = None
    if segmenter is None and not cfg.get("onnx"):
        raise ValueError(
            "predict.py needs run=<pipeline run dir>, ensemble=<sweep dir of fold runs>, segmenter=<checkpoint> or onnx=<export.py dir>"
        )
    files = list_inputs(cfg.input)
    if cfg.get("onnx"):  # the models exported by export.py, on onnxruntime
        from wbc.onnx_backend import pipeline_from_export

        pipe = pipeline_from_export(cfg.onnx, cfg.device)
    else:
        pipe = CellPipeline.from_checkpoints(segmenter, classifier, cfg.device)
    if cfg.get("crops"):
        pipe.crop_spec = CropSpec.from_config({**pipe.crop_spec.to_dict(), **OmegaConf.to_container(cfg.crops, resolve=True)})
    out_dir = Path(cfg.paths.output_dir)
    rows, failures = predict_images(pipe, files, out_dir, cfg.max_file_mb, cfg.save_crops, cfg.get("max_pixels"))
    msg = f"{len(files) - len(failures)} image(s) -> {len(rows)} cell(s) in {out_dir}"
    if failures:
        msg += f"; {len(failures)} skipped: " + ", ".join(Path(f["image"]).name for f in failures)
    log.info(msg)
    print(msg)
    return {"cells": len(rows), "failed": len(failures)}, {"pipeline": pipe}


@hydra.main(version_base="1.3", config_path="conf", config_name="predict.yaml")
def main(cfg: DictConfig) -> None:
    extras(cfg)
    predict(cfg)


if __name__ == "__main__":
    main()
