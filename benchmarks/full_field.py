"""Full-field inference: squash vs tiled-at-the-true-scale vs scale=auto on synthetic microscope fields.

    python benchmarks/full_field.py --run <pipeline run dir> [--grid 4 6] [--scales 0.5 1 2] [--fields 2]

Each field is a rows x cols mosaic of synthetic 256 px images resized by `scale` (wbc.data.synthetic
.render_field: 4 x 6 at scale 1 = 1024 x 1536, a 1.5 MP field). For each mode it reports the nucleus
Dice against the field's ground truth, detection F1 (predicted vs true nuclei matched one-to-one at
IoU >= 0.5), seconds per megapixel end to end (segment + cells + classify) and the process's peak RSS.
The true factor is the segmenter's training resize factor divided by the field's scale. Without
--run, throwaway models are trained for --epochs epochs (as benchmarks/predict_latency.py does).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=None, help="pipeline run dir (holds segmentation/ and classification/)")
    p.add_argument("--grid", type=int, nargs=2, default=(4, 6), help="rows cols of 256 px images per field")
    p.add_argument("--scales", type=float, nargs="+", default=(0.5, 1.0, 2.0), help="cell size relative to training")
    p.add_argument("--fields", type=int, default=2, help="fields per scale")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--epochs", type=int, default=4, help="epochs per stage for throwaway models (no --run)")
    return p.parse_args(argv)


def score(res, mask, inst) -> tuple[float, float]:
    """(nucleus Dice, detection F1 at IoU 0.5) of one field."""
    import numpy as np

    from wbc.cells import match_instances
    from wbc.data.synthetic import MASK_VALUES

    pred, truth = res.labels > 0, mask == MASK_VALUES["nucleus"]
    dice = 2 * (pred & truth).sum() / max(1, pred.sum() + truth.sum())
    matches = match_instances(res.labels.astype(np.int64), inst.astype(np.int64), 0.5)
    n_pred, n_true = len(res.instances), len(np.unique(inst[inst > 0]))
    f1 = 2 * len(matches) / max(1, n_pred + n_true)
    return float(dice), float(f1)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import numpy as np
    from _common import quiet_torch
    from predict_latency import throwaway_models

    quiet_torch(args.threads)
    from wbc.data.synthetic import SyntheticSpec, render_field
    from wbc.inference import CellPipeline
    from wbc.scale import ScaleOptions

    with tempfile.TemporaryDirectory(prefix="wbc_field_") as tmp:
        if args.run:
            pipe = CellPipeline.from_checkpoints(args.run, args.run)
        else:
            seg, clf = throwaway_models("synthetic", args.epochs, Path(tmp))
            pipe = CellPipeline(seg, clf)
    info = pipe.seg_info.get("scale") or {}
    rf = float(info.get("resize_factor") or 0.5)
    print(f"segmenter: tile {pipe.seg_info.get('image_size')} px, training nucleus {info.get('nucleus_diameter', float('nan')):.1f} "
          f"network px, resize factor {rf:.3f}; torch threads {__import__('torch').get_num_threads()}")
    spec = SyntheticSpec(seed=7)
    results: dict = {}
    print(f"{'scale':>5} {'mode':>8} {'Dice':>6} {'det F1':>7} {'s/MP':>6} {'factor':>7}  how")
    for s in args.scales:
        fields = [render_field(spec, 1000 + 50 * i, tuple(args.grid), s) for i in range(args.fields)]
        mp = sum(f[0].shape[0] * f[0].shape[1] for f in fields) / 1e6
        for mode, opts in (("squash", ScaleOptions("single")), ("true", ScaleOptions(rf / s)), ("auto", ScaleOptions("auto"))):
            pipe.scale = opts
            dices, f1s = [], []
            t0 = time.perf_counter()
            for rgb, mask, inst in fields:
                d, f = score(pipe(rgb), mask, inst)
                dices.append(d)
                f1s.append(f)
            sec = (time.perf_counter() - t0) / mp
            choice = pipe.last_scale
            results[(s, mode)] = {"dice": float(np.mean(dices)), "det_f1": float(np.mean(f1s)), "s_per_mp": sec}
            print(f"{s:5.2f} {mode:>8} {np.mean(dices):6.3f} {np.mean(f1s):7.3f} {sec:6.2f} {choice.factor or float('nan'):7.3f}  {choice.how}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"field {fields[0][0].shape[1]}x{fields[0][0].shape[0]} at scale {args.scales[-1]}; peak RSS of this process: {peak:.0f} MB")
    return results


if __name__ == "__main__":
    main()
