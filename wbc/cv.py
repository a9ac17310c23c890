"""Cross-validation sweeps: the CV summary of a sweep dir.

A sweep dir holds one run dir per job (`<sweep>/<job number>/`; what a job leaves there: wbc.rundir),
including each stage's validation-split predictions, i.e. the fold's out-of-fold (OOF) predictions
(`OOF_FILE` of wbc.evaluation.segmentation / .classification).

`summarize_sweep(sweep_dir)` turns that into one table: per-fold metrics, mean and **sample**
standard deviation (ddof=1, numpy's `std(ddof=1)`; undefined with one fold) of every numeric
val/test/pipeline metric, the failed folds, and the pooled OOF predictions re-scored together
(nnU-Net's cross-validation figure: every training image scored once, by the fold that did not
train on it). Pure functions: no Hydra or Lightning needed to call them.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wbc.io import write_json, write_text
from wbc.provenance import differences
from wbc.rundir import (
    FAILED,
    JOB_FILE,
    finished_metrics,
    is_neutral,
    is_run_dir,
    job_sort_key,
    override_key,
    stage_file,
    trained_here,
)
from wbc.spreadsheet import guard
from wbc.stages import STAGES

# the pooled OOF rows of each stage, one CSV each
OOF_TABLES = {"segmentation": "cv_oof_cases.csv", "classification": "cv_oof_predictions.csv"}

log = logging.getLogger("wbc")

STD_NOTE = "sample standard deviation across folds (ddof=1, as numpy.std(ddof=1)); null with fewer than 2 folds"


# ----------------------------------------------------------------------------- reading a sweep
@dataclass
class Job:
    name: str  # the run dir's name (the job number)
    run_dir: Path
    status: str  # ok | failed
    fold: Any = None
    stage: str | None = None
    overrides: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def group(self) -> tuple[str, ...]:
        """Jobs that differ only in the fold (and neutral overrides) form one CV group."""
        return tuple(sorted(o for o in self.overrides if override_key(o) != "data.fold" and not is_neutral(o)))


def _load_yaml(path: Path) -> Any:
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def _fold_from(overrides: Sequence[str], cfg: Mapping | None) -> Any:
    for o in overrides:
        if override_key(o) == "data.fold":
            value = o.split("=", 1)[1]
            try:
                return int(value)
            except ValueError:
                return value
    data = (cfg or {}).get("data") or {}
    return data.get("fold") if isinstance(data, Mapping) else None


def read_job(run_dir: Path) -> Job:
    run_dir = Path(run_dir)
    record = json.loads((run_dir / JOB_FILE).read_text()) if (run_dir / JOB_FILE).is_file() else {}
    cfg = _load_yaml(run_dir / ".hydra" / "config.yaml") or {}
    # job.json: the job that produced the metrics; Hydra rewrites .hydra/overrides.yaml on every launch,
    # also a resumed one that skipped this finished job
    overrides = record.get("overrides") if isinstance(record.get("overrides"), list) else None
    if overrides is None:
        overrides = _load_yaml(run_dir / ".hydra" / "overrides.yaml") or []
    job = Job(run_dir.name, run_dir, "failed", _fold_from(overrides, cfg), cfg.get("stage") or record.get("stage"), list(overrides), record=record)
    if (run_dir / FAILED).exists():
        text = (run_dir / FAILED).read_text().strip()
        job.reason = text.splitlines()[0] if text else "FAILED"
        return job
    try:
        metrics = finished_metrics(run_dir)
    except ValueError as err:  # a corrupt metrics.json: the summary names it instead of stopping
        job.reason = str(err)
        return job
    if metrics is None:
        job.reason = "no metrics.json: the job crashed, was killed or is still running"
        return job
    job.status, job.metrics = "ok", metrics
    return job


def is_evaluation(run_dir: Path) -> bool:
    """An evaluate.py output dir: its Hydra config's task_name says so (training jobs: train)."""
    return not trained_here(run_dir) and (_load_yaml(Path(run_dir) / ".hydra" / "config.yaml") or {}).get("task_name") == "evaluate"


def read_sweep(sweep_dir: Path) -> list[Job]:
    """Every training job of a sweep dir (its run dirs, in job-number order). An evaluate.py output dir
    kept in the sweep (ensemble_test/: benchmarks/quality.py writes one) is not a fold: its score was
    averaged in as one more."""
    sweep_dir = Path(sweep_dir)
    jobs = (d for d in sweep_dir.iterdir() if d.is_dir() and is_run_dir(d) and not is_evaluation(d))
    runs = sorted(jobs, key=job_sort_key)
    return [read_job(d) for d in runs]


# ----------------------------------------------------------------------------- aggregation
_SCORE_KEY = re.compile(r"(^|/)(val|test)/|^pipeline/")


def is_score(key: str, value: Any) -> bool:
    """Numeric val/test/pipeline metrics (also those of a pipeline's stages) are aggregated."""
    return bool(_SCORE_KEY.search(key)) and (value is None or (isinstance(value, int | float) and not isinstance(value, bool)))


def mean_std(values: Iterable[float | None], ddof: int = 1) -> dict[str, Any]:
    """Mean and standard deviation (ddof=1: sample std) of the defined values; NaN/None are left out."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(float(v))], dtype=float)
    return {
        "mean": float(arr.mean()) if arr.size else None,
        "std": float(arr.std(ddof=ddof)) if arr.size > ddof else None,
        "n": int(arr.size),
    }


def _nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _nanmean(values: Iterable[Any]) -> float | None:
    arr = np.asarray([_nan(v) for v in values], dtype=float)
    return float(np.nanmean(arr)) if arr.size and not np.isnan(arr).all() else None


def summarize_group(jobs: Sequence[Job], ddof: int = 1, pool: bool = True) -> dict:
    """One group's table; `pool`: score its pooled out-of-fold predictions (a fold sweep's group only:
    jobs on one fold would pool the same validation images several times)."""
    ok = [j for j in jobs if j.status == "ok"]
    failed = [j for j in jobs if j.status != "ok"]
    names = sorted({k for j in ok for k, v in j.metrics.items() if is_score(k, v)})
    stats = {name: mean_std((j.metrics.get(name) for j in ok if name in j.metrics), ddof) for name in names}
    summary: dict[str, Any] = {
        "overrides": sorted(set.intersection(*(set(j.group) for j in jobs))) if jobs else [],
        "stage": next((j.stage for j in jobs if j.stage), None),
        "n_jobs": len(jobs),
        "n_ok": len(ok),
        "folds": [j.fold for j in ok],
        "failed_folds": [j.fold for j in failed],
        "failed": [{"job": j.name, "fold": j.fold, "run_dir": str(j.run_dir), "reason": j.reason} for j in failed],
        "std_definition": STD_NOTE if ddof == 1 else f"standard deviation across folds with ddof={ddof}",
        "mean": {k: s["mean"] for k, s in stats.items()},
        "std": {k: s["std"] for k, s in stats.items()},
        "n": {k: s["n"] for k, s in stats.items()},
        "per_fold": [
            {"job": j.name, "fold": j.fold, "run_dir": str(j.run_dir), "status": j.status, "reason": j.reason, "overrides": list(j.group),
             "metrics": {k: v for k, v in j.metrics.items() if is_score(k, v)} if j.status == "ok" else {}}
            for j in jobs
        ],
        "oof": {},
    }
    # folds trained on other code or library versions (a sweep resumed after an upgrade, two machines)
    software = differences({j.name: j.record.get("software") for j in jobs})
    if software:
        summary["software_differences"] = software
        log.warning("CV summary: the jobs of one group ran on different software: %s", "; ".join(software))
    opt = next((j.record.get("optimized_metric") for j in jobs if j.record.get("optimized_metric")), None)
    if opt:
        summary["optimized_metric"] = opt
    for name in STAGES if pool else ():
        pooled = pool_oof(name, ok)
        if pooled is not None:
            summary["oof"][name] = pooled[0]
            n, unique = pooled[0].get("n_cases"), pooled[0].get("n_unique_cases")
            if unique is not None and n != unique:
                log.warning("CV summary: group %s pools %s %s out-of-fold cases but only %s distinct ones: its validation "
                            "folds overlap (or a fold ran twice); the pooled figure counts some images more than once",
                            " ".join(summary["overrides"]) or "(all jobs)", n, name, unique)
    return summary


def pool_oof(stage: str, jobs: Sequence[Job]) -> tuple[dict, list[dict]] | None:
    """The stage's pooled OOF predictions; a file that cannot be read is an error naming it (the
    scoring's own error, e.g. "could not convert string to float", names no file)."""
    scoring = STAGES[stage].scoring
    try:
        return scoring.pool_oof(jobs)
    except Exception as err:
        bad = next((j for j in jobs if _pool_fails(scoring, j)), None)
        where = stage_file(bad.run_dir, scoring.OOF_FILE) if bad else f"{scoring.OOF_FILE} of jobs {[j.name for j in jobs]}"
        raise ValueError(
            f"CV summary: cannot read the {stage} out-of-fold predictions {where}: {type(err).__name__}: {err}; "
            "expected the file as the fold run wrote it"
        ) from err


def _pool_fails(scoring: Any, job: Job) -> bool:
    try:
        scoring.pool_oof([job])
    except Exception:  # noqa: BLE001 - only looking for the job whose file breaks pooling
        return True
    return False


def summarize_jobs(jobs: Sequence[Job], sweep_dir: Path | None = None, ddof: int = 1) -> dict:
    """One summary per group of jobs that differ only in data.fold; one group -> a flat summary."""
    is_cv, groups = group_jobs(jobs)
    head = {"sweep_dir": str(sweep_dir) if sweep_dir else None, "kind": "cv" if is_cv else "sweep"}
    summaries = [summarize_group(g, ddof, pool=is_cv) for g in groups.values()]
    if len(summaries) == 1:
        return {**head, **summaries[0]}
    return {**head, "n_jobs": len(jobs), "failed_folds": [f for s in summaries for f in s["failed_folds"]], "groups": summaries}


def group_jobs(jobs: Sequence[Job]) -> tuple[bool, dict[tuple, list[Job]]]:
    """(a fold sweep?, its groups). A fold sweep: some setting ran on more than one data.fold, one group
    per setting. Any other sweep (Optuna trials, an lr sweep on one fixed fold): one table of all jobs."""
    by_setting: dict[tuple, list[Job]] = defaultdict(list)
    for j in jobs:
        by_setting[j.group].append(j)
    is_cv = any(len({repr(j.fold) for j in g if j.fold is not None}) > 1 for g in by_setting.values())
    return is_cv, (dict(by_setting) if is_cv else {(): list(jobs)})


def group_label(key: tuple, index: int) -> str:
    """How the tables name a group: its overrides, else its number."""
    return " ".join(key) or str(index)


def summarize_sweep(sweep_dir: Path, ddof: int = 1) -> dict:
    return summarize_jobs(read_sweep(Path(sweep_dir)), Path(sweep_dir), ddof)


def groups_of(summary: Mapping) -> list[Mapping]:
    return list(summary.get("groups") or [summary])


def oof_metrics(group: Mapping) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in (group.get("oof") or {}).values():
        out.update(part["metrics"])
    return out


# ----------------------------------------------------------------------------- writing
def summary_table(summary: Mapping) -> tuple[list[str], list[list[Any]]]:
    """The CSV: one row per fold, then `mean`, `std` and (where scored) `oof` rows per group."""
    groups = groups_of(summary)
    names = sorted({k for g in groups for k in g["mean"]}) + sorted({k for g in groups for k in oof_metrics(g)})
    header = ["group", "job", "fold", "status", *names, "note"]
    unit = "folds" if summary.get("kind") == "cv" else "jobs"
    rows: list[list[Any]] = []
    for gi, g in enumerate(groups):
        label = group_label(tuple(g.get("overrides") or ()), gi)
        for f in g["per_fold"]:
            own = [o for o in f.get("overrides", []) if o not in (g.get("overrides") or [])]  # what this job varied
            note = "; ".join(x for x in (" ".join(own), f.get("reason") or "") if x)
            rows.append([label, f["job"], f["fold"], f["status"], *[f["metrics"].get(n) for n in names], note])
        rows.append([label, "mean", "", "", *[g["mean"].get(n) for n in names], f"n={g['n_ok']} {unit}"])
        rows.append([label, "std", "", "", *[g["std"].get(n) for n in names], "sample std (ddof=1)"])
        oof = oof_metrics(g)
        if oof:
            rows.append([label, "oof", "", "", *[oof.get(n) for n in names], "pooled out-of-fold predictions, scored together"])
    return header, rows


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if not math.isfinite(v) else f"{v:.6g}"
    return guard(str(v))


def write_summary(summary: Mapping, out_dir: Path, stem: str | None = None) -> tuple[Path, Path]:
    """`<stem>.json` and `<stem>.csv` in out_dir (stem: cv_summary for fold sweeps, else sweep_summary)."""
    stem = stem or ("cv_summary" if summary.get("kind") == "cv" else "sweep_summary")
    out_dir = Path(out_dir)
    header, rows = summary_table(summary)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows([[_fmt(v) for v in r] for r in rows])
    return write_json(out_dir / f"{stem}.json", summary), write_text(out_dir / f"{stem}.csv", buf.getvalue())


def write_oof_tables(jobs: Sequence[Job], out_dir: Path) -> list[Path]:
    """The pooled OOF cases / crops, one row each with its group (the setting, as the summary names it)
    and fold: cv_oof_cases.csv, cv_oof_predictions.csv. Each group's folds are pooled on their own."""
    _, groups = group_jobs(jobs)
    written = []
    for name in STAGES:
        rows = []
        for i, (key, members) in enumerate(groups.items()):
            pooled = pool_oof(name, [j for j in members if j.status == "ok"])
            rows += [{"group": group_label(key, i), **r} for r in (pooled[1] if pooled is not None else [])]
        if not rows:
            continue
        # every row's columns, in order of appearance: a sweep resumed across versions mixes folds with and
        # without a column (e.g. uncalibrated_p_<class>); those folds' cells stay empty
        keys = list(dict.fromkeys(k for r in rows for k, v in r.items() if not isinstance(v, list | dict)))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: _fmt(r.get(k)) for k in keys} for r in rows)
        written.append(write_text(Path(out_dir) / OOF_TABLES[name], buf.getvalue()))
    return written


HEADLINE = ("test/dice_post", "test/macro_f1", "pipeline/macro_f1", "pipeline/detection_recall")


def format_summary(summary: Mapping, max_metrics: int = 8) -> str:
    """A few lines for the console: folds, failures, headline metrics as mean ± sample std, OOF."""
    lines = []
    if summary.get("kind") != "cv":
        return _format_sweep(summary)
    for g in groups_of(summary):
        label = " ".join(g.get("overrides") or [])
        failed = f"; FAILED folds: {g['failed_folds']}" if g["failed_folds"] else ""
        lines.append(f"{summary.get('kind', 'sweep')} {label}: {g['n_ok']}/{g['n_jobs']} jobs finished (folds {g['folds']}){failed}".replace("  ", " "))
        wanted = [g.get("optimized_metric"), *HEADLINE]
        keys = [k for k in dict.fromkeys(wanted) if k and k in g["mean"]] or list(g["mean"])[:max_metrics]
        for k in keys[:max_metrics]:
            mean, std = g["mean"][k], g["std"][k]
            if mean is None:
                continue
            lines.append(f"  {k} = {mean:.4f}" + (f" ± {std:.4f} (sample std, n={g['n'][k]})" if std is not None else f" (n={g['n'][k]})"))
        for k, v in oof_metrics(g).items():
            if v is not None and k.count("/") == 2:
                lines.append(f"  {k} = {v:.4f} (pooled out-of-fold)")
        lines.extend(f"  different software across folds: {d}" for d in g.get("software_differences", []))
    return "\n".join(lines)


def _format_sweep(summary: Mapping) -> str:
    """Not a fold sweep (e.g. Optuna trials): the jobs, and the best by the optimized metric."""
    failed = f"; FAILED jobs: {[f['job'] for f in summary['failed']]}" if summary["failed"] else ""
    lines = [f"sweep: {summary['n_ok']}/{summary['n_jobs']} jobs finished{failed}"]
    key = summary.get("optimized_metric")
    scored = [f for f in summary["per_fold"] if key and f["metrics"].get(key) is not None]
    if scored:
        best = max(scored, key=lambda f: f["metrics"][key])
        common = set(summary.get("overrides") or [])
        own = " ".join(o for o in best.get("overrides", []) if o not in common)
        lines.append(f"  best {key} = {best['metrics'][key]:.4f} (job {best['job']}: {own})")
    return "\n".join(lines)
