"""onnxruntime vs eager PyTorch on CPU for the two models, on the same inputs.

    python benchmarks/onnx_speed.py [--run <pipeline run dir>] [--runs 50] [--crops 8] [--threads N]

Exports both models as export.py does (segmenter: image -> nucleus probability; classifier:
crops -> class probabilities, dynamic batch), then times eager PyTorch (`predict_probability`
/ `predict_proba`, what CellPipeline calls) and onnxruntime with the same number of intra-op
threads. Without --run the default configs' untrained models are used (speed and numerical
agreement do not depend on the weights' quality). Printed per model: median latency of each,
speedup (goal >= 1.5x) and the max abs difference of the outputs (goal <= 1e-4).
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

GOAL_SPEEDUP, GOAL_DIFF = 1.5, 1e-4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=None, help="pipeline run dir (holds segmentation/ and classification/)")
    p.add_argument("--data", default="synthetic", help="data config giving the network sizes when there is no --run")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--seg-batch", type=int, default=1, help="images per segmenter call (predict.py: 1)")
    p.add_argument("--crops", type=int, default=8, help="crops per classifier call")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for both runtimes (default: torch's own)")
    return p.parse_args(argv)


def config_models(data: str):
    """Untrained modules from the default configs, with the data_info the DataModules would record."""
    from _common import compose_train
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = compose_train(["experiment=pipeline", f"data={data}"])
    from wbc.cells import CropSpec
    from wbc.data.transforms import Preprocess

    d = OmegaConf.to_container(cfg.data, resolve=True)
    crops = {k: v for k, v in d["crops"].items() if k != "transforms"}
    spec = CropSpec.from_config(crops)
    seg_info = {"name": d["name"], "classes": d["classes"], "preprocess": Preprocess.from_config(d["preprocess"]).to_dict(), "image_size": d["image_size"], "target": d["target"]}
    cls_info = {**seg_info, "crops": spec.to_dict(), "image_size": spec.image_size}
    # experiment=pipeline keeps each stage's model under its stage node
    return (instantiate(cfg.segmentation.model, data_info=seg_info).eval(),
            instantiate(cfg.classification.model, data_info=cls_info).eval())


def timed(fn, x, runs: int, warmup: int) -> tuple[float, object]:
    for _ in range(warmup):
        out = fn(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn(x)
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    import onnxruntime
    import torch
    from _common import quiet_torch

    threads = quiet_torch(args.threads)

    from wbc.onnx_backend import export_models, load_export

    if args.run:
        from wbc.inference import CellPipeline

        pipe = CellPipeline.from_checkpoints(args.run, args.run)
        seg, clf = pipe.segmenter, pipe.classifier
        print(f"models: {args.run}")
    else:
        seg, clf = config_models(args.data)
        print(f"models: untrained, from the default configs with data={args.data}")
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="wbc_onnx_") as tmp:
        t = time.perf_counter()
        meta = export_models(seg, clf, tmp)
        print(f"exported in {time.perf_counter() - t:.1f} s (opset {meta['opset']}); threads: torch {threads}, "
              f"onnxruntime {threads} (onnxruntime {onnxruntime.__version__}, torch {torch.__version__})")
        oseg, oclf = load_export(tmp, threads=threads)
        g = torch.Generator().manual_seed(0)
        cases = [("segmenter", seg.predict_probability, oseg.predict_probability, [args.seg_batch, *meta["segmenter"]["input_shape"][1:]])]
        if clf is not None:
            cases.append(("classifier", clf.predict_proba, oclf.predict_proba, [args.crops, *meta["classifier"]["input_shape"][1:]]))
        print(f"\n{'model':11s} {'input':>16s} {'torch ms':>9s} {'onnx ms':>9s} {'speedup':>8s} {'max|diff|':>10s}")
        total_torch = total_onnx = 0.0
        worst = 0.0
        for name, eager, ort, shape in cases:
            x = torch.rand(*shape, generator=g)
            t_torch, y_torch = timed(eager, x, args.runs, args.warmup)
            t_onnx, y_onnx = timed(ort, x, args.runs, args.warmup)
            diff = float((y_torch - y_onnx).abs().max())
            worst = max(worst, diff)
            total_torch, total_onnx = total_torch + t_torch, total_onnx + t_onnx
            results[f"{name}_speedup"] = t_torch / t_onnx
            results[f"{name}_max_abs_diff"] = diff
            print(f"{name:11s} {'x'.join(map(str, shape)):>16s} {t_torch:9.2f} {t_onnx:9.2f} {t_torch / t_onnx:7.2f}x {diff:10.2e}")
        results["speedup"] = total_torch / total_onnx
        results["max_abs_diff"] = worst
    print(f"\nboth models: {results['speedup']:.2f}x (goal >= {GOAL_SPEEDUP}x) -> {'OK' if results['speedup'] >= GOAL_SPEEDUP else 'BELOW GOAL'}; "
          f"max |diff| {worst:.2e} (goal <= {GOAL_DIFF:g}) -> {'OK' if worst <= GOAL_DIFF else 'ABOVE GOAL'}")
    return results


if __name__ == "__main__":
    main()
