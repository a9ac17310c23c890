"""Predict latency for one 256x256 image on CPU: segment + cells + classify, split by stage.

    python benchmarks/predict_latency.py [--run <pipeline run dir>] [--runs 30] [--threads N] [--onnx]

With --run, the run's checkpoints are used (as predict.py would). Without it, throwaway models
are trained for --epochs epochs on the synthetic set with the default configs (same network
sizes and crop geometry as a real run): latency does not depend on how well they are trained,
only the number of cells found does (the cells and classify stages scale with it), so the
cell count is printed too. Median (and p90) over --runs calls after --warmup calls; the stage
split comes from `CellPipeline` (wbc/inference.py). Goal: median total <= 50 ms.
--onnx also times the same pipeline on onnxruntime (models exported as export.py does).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

GOAL_MS = 50.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=None, help="pipeline run dir (holds segmentation/ and classification/)")
    p.add_argument("--image", default=None, help="an image file (default: a synthetic 256x256 field)")
    p.add_argument("--size", type=int, default=256, help="side of the synthetic image")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch (and onnxruntime) intra-op threads")
    p.add_argument("--epochs", type=int, default=4, help="epochs per stage for the throwaway models (no --run)")
    p.add_argument("--data", default="synthetic", help="data config for the throwaway models")
    p.add_argument("--onnx", action="store_true", help="also time the pipeline on onnxruntime")
    return p.parse_args(argv)


def throwaway_models(data: str, epochs: int, out_dir: Path):
    """Train the default segmentation + classification models briefly (no test, no scoring)."""
    from _common import compose_train
    from omegaconf import open_dict

    cfg = compose_train([
        "experiment=pipeline",
        f"data={data}",
        f"trainer.max_epochs={epochs}",
        f"classification.trainer.max_epochs={epochs}",
        "test=false",
        "callbacks=none",
        "logger=none",
        "+trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false",
    ])
    from wbc.fit import fit_stage
    from wbc.stages import stage_config

    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        del cfg["hydra"]
    _, seg = fit_stage(stage_config(cfg, "segmentation", out_dir / "segmentation"), out_dir / "segmentation")
    _, clf = fit_stage(stage_config(cfg, "classification", out_dir / "classification"), out_dir / "classification")
    return seg["model"].eval(), clf["model"].eval()


def measure(pipe, rgb, runs: int, warmup: int) -> dict[str, list[float]]:
    """Per call: the pipeline's stages and total, then the cell table's nucleus measurements that predict.py
    and the web app add (wbc.morphology.cell_measurements), timed apart, and the appearance check (part of
    the classify stage) timed again on its own."""
    from wbc.morphology import cell_measurements

    for _ in range(warmup):
        pipe(rgb)
    out: dict[str, list[float]] = {"total_ms": [], "segment_ms": [], "cells_ms": [], "classify_ms": [], "measure_ms": [], "appearance_ms": [], "cells": []}
    for _ in range(runs):
        t0 = time.perf_counter()
        res = pipe(rgb)
        out["total_ms"].append(1e3 * (time.perf_counter() - t0))
        for k, v in res.timings.items():
            out[k].append(v)
        t1 = time.perf_counter()
        cell_measurements(rgb, res.labels, res.instances)
        out["measure_ms"].append(1e3 * (time.perf_counter() - t1))
        t2 = time.perf_counter()
        checked = pipe.check_appearance(rgb, res.labels)  # already inside classify_ms: timed again to show its share
        if checked is not None:
            out["appearance_ms"].append(1e3 * (time.perf_counter() - t2))
        out["cells"].append(len(res.instances))
    return out


def report(name: str, m: dict[str, list[float]]) -> float:
    def p90(v: list[float]) -> float:
        return sorted(v)[min(len(v) - 1, round(0.9 * (len(v) - 1)))]

    print(f"\n{name}: median (p90) over {len(m['total_ms'])} runs, {statistics.median(m['cells']):.0f} cell(s) found")
    for key in ("segment_ms", "cells_ms", "classify_ms", "total_ms"):
        print(f"  {key[:-3]:9s} {statistics.median(m[key]):8.2f} ms  ({p90(m[key]):.2f})")
    total = statistics.median(m["total_ms"])
    extra = statistics.median(m["measure_ms"])
    print(f"  + the cell table's nucleus measurements (predict.py, web app) {extra:.2f} ms ({p90(m['measure_ms']):.2f}): "
          f"{extra / total:.2f}x the pipeline")
    if m["appearance_ms"]:
        a = statistics.median(m["appearance_ms"])
        print(f"  of which the appearance check (wbc.appearance, inside classify) {a:.2f} ms: {a / total:.2f}x the pipeline")
    else:
        print("  appearance check: none (the models carry no colour profile, or no nucleus was found)")
    print(f"  goal: total <= {GOAL_MS:.0f} ms -> {'OK' if total <= GOAL_MS else 'ABOVE GOAL'}")
    return total


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    import numpy as np
    import torch
    from _common import quiet_torch

    quiet_torch(args.threads)

    from wbc.data.imageio import read_rgb
    from wbc.data.synthetic import SyntheticSpec, render_image
    from wbc.inference import CellPipeline

    with tempfile.TemporaryDirectory(prefix="wbc_latency_") as tmp:
        if args.run:
            pipe = CellPipeline.from_checkpoints(args.run, args.run)
            print(f"models: {args.run}")
        else:
            t = time.perf_counter()
            seg, clf = throwaway_models(args.data, args.epochs, Path(tmp))
            pipe = CellPipeline(seg, clf)
            print(f"models: throwaway, trained {args.epochs} epoch(s) per stage in {time.perf_counter() - t:.0f} s "
                  "(latency does not depend on training quality; the cell count does)")
        if args.image:
            rgb, truth = read_rgb(args.image), "?"
        else:
            rgb, _, instances = render_image(SyntheticSpec(image_size=args.size, seed=123), 0, "neutrophil")
            truth = str(len(np.unique(instances[instances > 0])))
        seg_info = pipe.segmenter.hparams.data_info or {}
        print(f"image {rgb.shape[1]}x{rgb.shape[0]} with {truth} cell(s); segmenter input {seg_info.get('image_size')} px; crops "
              f"{pipe.crop_spec.size} px -> {pipe.crop_spec.image_size} px; torch threads={torch.get_num_threads()}")
        results = {"torch_ms": report("eager PyTorch", measure(pipe, rgb, args.runs, args.warmup))}
        if args.onnx:
            from wbc.onnx_backend import export_models, pipeline_from_export

            export_models(pipe.segmenter, pipe.classifier, Path(tmp) / "onnx")
            onnx_pipe = pipeline_from_export(Path(tmp) / "onnx", threads=torch.get_num_threads())
            onnx_pipe.crop_spec = pipe.crop_spec
            results["onnx_ms"] = report("onnxruntime", measure(onnx_pipe, rgb, args.runs, args.warmup))
    return results


if __name__ == "__main__":
    main()
