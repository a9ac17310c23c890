"""Reproduce the real-data results table (issue "Quality on real public data") and print it with targets.

Each row is a configured experiment (conf/experiment/quality_*.yaml) trained over CV folds with
`python train.py -m experiment=<row> data.fold=...`; the figures are the CV mean +- std of the
test metric (every fold's model scored on the same held-out 30 % test split) and of the validation
metric, read from the sweep's cv_summary.json (or the folds' metrics.json).

    python benchmarks/quality.py                       # all rows, 5 folds (hours on 2 CPU cores)
    python benchmarks/quality.py --rows seg_d1 --folds 0 --extra trainer.max_epochs=20
    python benchmarks/quality.py --collect outputs/quality_seg_d1/multiruns/<ts>   # table from finished sweeps

Needs ../shared/data (or WBC_SHARED_DATA). Prints what each row measured and how long it took.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ROWS = {
    "seg_d1": ("quality_seg_d1", "test/dice_post", 0.97, "nucleus Dice, segmentation_wbc dataset1 (test, per-image, post-processed)"),
    "seg_d2": ("quality_seg_d2", "test/dice_post", 0.98, "nucleus Dice, segmentation_wbc dataset2"),
    "seg_idb2": ("quality_seg_all_idb2", "test/dice_post", 0.975, "nucleus Dice, all_idb2"),
    "cls_idb2": ("quality_cls_all_idb2", "test/balanced_accuracy", 0.98, "lymphoblast vs non-blast, all_idb2, balanced accuracy"),
    "cls_wbc": ("quality_cls_wbc", "test/macro_f1", 0.93, "4-class macro-F1, segmentation_wbc (both sets, basophil excluded)"),
}


def fold_metrics(sweep: Path) -> list[dict]:
    out = []
    for m in sorted(sweep.glob("*/metrics.json")):
        out.append(json.loads(m.read_text()))
    return out


def summarize(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.4f} (1 fold)"
    return f"{statistics.mean(values):.4f} +- {statistics.stdev(values):.4f} ({len(values)} folds)"


def run_row(key: str, folds: list[int], extra: list[str]) -> tuple[Path, float]:
    experiment = ROWS[key][0]
    sweep = ROOT / "outputs" / "quality" / f"{key}_{time.strftime('%Y%m%d_%H%M%S')}"
    cmd = [sys.executable, "train.py", "-m", f"experiment={experiment}", "data.fold=" + ",".join(map(str, folds)), f"hydra.sweep.dir={sweep}", "extras.print_config=false", *extra]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=False)
    return sweep, time.time() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--folds", nargs="*", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--extra", nargs="*", default=[], help="extra Hydra overrides for every row")
    ap.add_argument("--collect", nargs="*", default=None, help="sweep dirs to tabulate instead of training (row inferred from the config)")
    args = ap.parse_args(argv)

    results = []
    if args.collect is not None:
        for sweep in map(Path, args.collect):
            cfg_files = list(sweep.glob("*/.hydra/config.yaml"))
            task = cfg_files[0].read_text().split("task_name: ")[1].split()[0] if cfg_files else ""
            key = next((k for k, v in ROWS.items() if v[0] == task), None)
            if key:
                results.append((key, sweep, float("nan")))
    else:
        for key in args.rows:
            sweep, seconds = run_row(key, args.folds, args.extra)
            results.append((key, sweep, seconds))

    print("\n| figure | metric | target | test (CV mean +- std) | val (CV mean) | time |")
    print("|---|---|---|---|---|---|")
    for key, sweep, seconds in results:
        _, metric, target, label = ROWS[key]
        folds = fold_metrics(sweep)
        test = [f[metric] for f in folds if isinstance(f.get(metric), int | float)]
        val_key = "val/dice_best" if metric.endswith("dice_post") else metric.replace("test/", "val/")
        val = [f[val_key] for f in folds if isinstance(f.get(val_key), int | float)]
        ok = "meets" if test and statistics.mean(test) >= target else "below"
        print(f"| {label} | {metric} | >= {target} | {summarize(test)} [{ok}] | {summarize(val)} | {seconds / 60:.1f} min |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
