"""predict.py on a folder of camera-sized fields (issue 13's "Done means"), as a user would run it.

    python benchmarks/field_folder.py --run <pipeline run dir> [--fields 3] [--size 2592 1944] [--scale 1.27]

Writes `--fields` synthetic smear fields of `--size` (default 2592 x 1944, ALL-IDB1's camera) whose
cells are `--scale` times the training size (wbc.data.synthetic.render_field), runs
`python predict.py input=<folder> run=<run>` in a child process (scale=auto, the default), and
reports: wall time and seconds per megapixel, the child's peak RSS, the scale predict.py chose per
image (vs the true factor), nucleus Dice and detection F1 against the fields' ground truth, and
whether any nucleus is cut in two (a true nucleus covered by two predicted instances: a tile seam would do that).
`--overlay docs/full_field_overlay.jpg` also saves a full-resolution window of the first field's overlay.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="pipeline run dir")
    ap.add_argument("--fields", type=int, default=3)
    ap.add_argument("--size", type=int, nargs=2, default=(2592, 1944), help="width height")
    ap.add_argument("--scale", type=float, default=None, help="cell size vs training (default: fills --size with 8 x 6 tiles)")
    ap.add_argument("--overlay", default=None, help="write a full-resolution window of the first overlay here")
    args = ap.parse_args(argv)

    import cv2
    import numpy as np

    from wbc.cells import match_instances
    from wbc.data.synthetic import MASK_VALUES, SyntheticSpec, render_field
    from wbc.io import write_png

    w, h = args.size
    spec = SyntheticSpec(seed=11)
    cols, rows = 8, 6
    scale = args.scale or min(w / cols, h / rows) / spec.image_size
    with tempfile.TemporaryDirectory(prefix="wbc_fields_") as tmp:
        folder, out = Path(tmp) / "fields", Path(tmp) / "pred"
        truth = {}
        for i in range(args.fields):
            rgb, mask, inst = render_field(spec, 500 + 60 * i, (rows, cols), scale)
            canvas = np.full((h, w, 3), 235, np.uint8)  # the camera frame: background where no tile reaches
            cm, ci = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint32)
            hh, ww = min(h, rgb.shape[0]), min(w, rgb.shape[1])
            canvas[:hh, :ww], cm[:hh, :ww], ci[:hh, :ww] = rgb[:hh, :ww], mask[:hh, :ww], inst[:hh, :ww]
            write_png(folder / f"field_{i}.png", canvas)
            truth[f"field_{i}"] = (cm == MASK_VALUES["nucleus"], ci)
        cmd = [sys.executable, "predict.py", f"input={folder}", f"run={args.run}", f"hydra.run.dir={out}", "save_crops=false"]
        print("$", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            return proc.returncode
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        report = json.loads((out / "predictions.json").read_text())
        mp = args.fields * w * h / 1e6
        print(f"{args.fields} fields {w}x{h} ({mp:.1f} MP), cells at {scale:.2f}x the training size: "
              f"{wall:.1f} s wall ({wall / mp:.2f} s/MP incl. start-up and model loading), peak RSS {peak_mb:.0f} MB")
        for img in report["images"]:
            stem = img["output_stem"]
            pred_labels = cv2.imread(str(out / "labels" / f"{stem}.png"), cv2.IMREAD_UNCHANGED).astype(np.int64)  # 16-bit instances
            pred_mask = pred_labels > 0
            nuc, inst = truth[stem]
            dice = 2 * (pred_mask & nuc).sum() / max(1, pred_mask.sum() + nuc.sum())
            n_cells = img["cells"]
            matches = match_instances(pred_labels, inst.astype(np.int64), 0.5)
            n_true = len(np.unique(inst[inst > 0]))
            f1 = 2 * len(matches) / max(1, int(pred_labels.max()) + n_true)
            # a true nucleus overlapped >= 20 % by two predicted components: cut in two (e.g. at a seam)
            split = 0
            for t in np.unique(inst[inst > 0]):
                ids, counts = np.unique(pred_labels[inst == t], return_counts=True)
                split += int(((ids > 0) & (counts >= 0.2 * (inst == t).sum())).sum() > 1)
            sc = img.get("scale") or {}
            print(f"  {stem}: {n_cells} cells, Dice {dice:.3f}, detection F1 {f1:.3f}, nuclei cut in two {split}; "
                  f"scale {sc.get('factor')} ({sc.get('how')})")
        if args.overlay:
            first = cv2.imread(str(out / "overlays" / f"{report['images'][0]['output_stem']}.png"))
            window = first[: min(first.shape[0], 760), : min(first.shape[1], 1100)]  # full resolution: contours stay visible
            Path(args.overlay).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(args.overlay), window, [cv2.IMWRITE_JPEG_QUALITY, 80])
            print(f"overlay (top-left {window.shape[1]}x{window.shape[0]} at full resolution) -> {args.overlay}")
        from lightning_modules.common import load_checkpoint
        from wbc.rundir import resolve_checkpoint

        info = load_checkpoint(str(resolve_checkpoint(args.run, "segmentation")), "segmentation")["hyper_parameters"].get("data_info") or {}
        rf = float((info.get("scale") or {}).get("resize_factor") or float("nan"))
        print(f"true factor = training resize factor {rf:.3f} / cell scale {scale:.3f} = {rf / scale:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
