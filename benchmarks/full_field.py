"""Full-field inference: squash vs tiled-at-the-true-scale vs scale=auto on synthetic microscope fields.

    python benchmarks/full_field.py --run <pipeline run dir> [--grid 4 6] [--scales 0.5 1 2] [--fields 2]
    python benchmarks/full_field.py --run <quality_seg_d2 run> --d2-mosaics 2 --scales 1   # real images

Each field is a rows x cols mosaic of synthetic 256 px images resized by `scale` (wbc.data.synthetic
.render_field: 4 x 6 at scale 1 = 1024 x 1536, a 1.5 MP field). For each mode it reports the nucleus
Dice against the field's ground truth, detection F1 (predicted vs true nuclei matched one-to-one at
IoU >= 0.5), seconds per megapixel end to end (segment + cells + classify) and the process's peak RSS.
The true factor is the segmenter's training resize factor divided by the field's scale (for --d2-mosaics with a
segmenter trained on several sets, dataset2's own factor from data_info.scale.sources). Without
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
    p.add_argument("--d2-mosaics", type=int, default=0, metavar="N",
                   help="instead of synthetic fields: N mosaics of 4 x 4 segmentation_wbc dataset2 images (1200 x 1200) "
                        "with their masks; --run should then be a dataset2 segmenter (experiment=quality_seg_d2)")
    return p.parse_args(argv)


def d2_mosaics(n: int, scale: float = 1.0) -> list[tuple]:
    """N (rgb, mask, instances) mosaics of 4 x 4 dataset2 images (their own 300 px resolution x
    `scale`); only each image's central cell is annotated (PROVENANCE), so neighbours' nuclei the
    model finds count against Dice and detection alike: compare modes, not against the single-cell figures."""
    import cv2
    import numpy as np

    from wbc.data.manifest import MaskEncoding, load_sample, read_manifest

    root = Path(os.environ.get("WBC_SHARED_DATA") or ROOT.parent / "shared" / "data") / "segmentation_wbc"
    m = read_manifest(root, classes=["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"], filters={"subset": ["dataset2"]})
    enc = MaskEncoding.from_config({"mode": "grey", "background": [[0, 50]], "cytoplasm": [[128, 128]], "nucleus": [[255, 255]]})
    out = []
    for k in range(n):
        tiles = [load_sample(s, enc) for s in m.samples[16 * k : 16 * k + 16]]
        side = round(300 * scale)
        rgb = np.zeros((4 * side, 4 * side, 3), np.uint8)
        mask = np.zeros(rgb.shape[:2], np.uint8)
        inst = np.zeros(rgb.shape[:2], np.uint32)
        for t, (img, labels) in enumerate(tiles):
            img = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)
            nuc = cv2.resize((labels == 2).astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST)
            y, x = (t // 4) * side, (t % 4) * side
            rgb[y : y + side, x : x + side] = img
            mask[y : y + side, x : x + side] = np.where(nuc > 0, 255, 0)
            inst[y : y + side, x : x + side] = np.where(nuc > 0, t + 1, 0)
        out.append((rgb, mask, inst))
    return out


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
            from wbc.ensemble import has_stage

            pipe = CellPipeline.from_checkpoints(args.run, args.run if has_stage(args.run, "classification") else None)
        else:
            seg, clf = throwaway_models("synthetic", args.epochs, Path(tmp))
            pipe = CellPipeline(seg, clf)
    info = pipe.seg_info.get("scale") or {}
    rf = float(info.get("resize_factor") or 0.5)
    if args.d2_mosaics:  # a segmenter trained on several sets: dataset2's own factor is the true one
        rf = float(((info.get("sources") or {}).get("segmentation_wbc_d2") or {}).get("resize_factor") or rf)
    print(f"segmenter: tile {pipe.seg_info.get('image_size')} px, training nucleus {info.get('nucleus_diameter', float('nan')):.1f} "
          f"network px, resize factor {rf:.3f}; torch threads {__import__('torch').get_num_threads()}")
    spec = SyntheticSpec(seed=7)
    results: dict = {}
    print(f"{'scale':>5} {'mode':>8} {'Dice':>6} {'det F1':>7} {'s/MP':>6} {'factor':>7}  how")
    for s in args.scales:
        if args.d2_mosaics:
            fields = d2_mosaics(args.d2_mosaics, s)
        else:
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
