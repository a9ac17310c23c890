"""CV summaries on dashboards: a wandb table run and TensorBoard scalars (CSV/JSON come from wbc.cv)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from wbc.cv import STD_NOTE, Job, _fmt, groups_of, oof_metrics, summary_table

log = logging.getLogger("wbc")


def logger_settings(jobs: Sequence[Job], name: str) -> dict | None:
    """The resolved settings of logger `name` as a job used it (job.json), or None if no job used it."""
    for j in jobs:
        entry = (j.record.get("loggers") or {}).get(name)
        if entry:
            return dict(entry)
    return None


def log_wandb_summary(summary: Mapping, settings: Mapping, out_dir: Path) -> str | None:
    """A short wandb run (same project and group as the folds, job_type cv_summary) holding the CV
    table and the means/stds as its summary; offline unless the folds' logger was online."""
    import os

    import wandb

    header, rows = summary_table(summary)
    offline = bool(settings.get("offline", True)) or os.environ.get("WANDB_MODE") in ("offline", "disabled")
    group = settings.get("group")
    run = wandb.init(
        project=settings.get("project") or "wbc-lab",
        entity=settings.get("entity"),
        group=group,
        job_type="cv_summary",
        name=f"{group or 'sweep'}-cv_summary",
        dir=str(out_dir),
        mode=os.environ.get("WANDB_MODE") if os.environ.get("WANDB_MODE") == "disabled" else ("offline" if offline else "online"),
        config={"sweep_dir": summary.get("sweep_dir"), "kind": summary.get("kind"), "std": STD_NOTE},
        reinit="finish_previous",
    )
    try:
        # one type per column (wandb checks): labels as text, metrics as float (NaN when undefined)
        n = len(header)
        data = [[_fmt(v) if i < 4 or i == n - 1 else (float("nan") if v is None else float(v)) for i, v in enumerate(r)] for r in rows]
        table = wandb.Table(columns=header, data=data)
        run.log({"cv_summary": table})
        for g in groups_of(summary):
            for k, v in g["mean"].items():
                if v is not None:
                    run.summary[f"cv_mean/{k}"] = v
            for k, v in g["std"].items():
                if v is not None:
                    run.summary[f"cv_std/{k}"] = v
            for k, v in oof_metrics(g).items():
                if v is not None:
                    run.summary[k] = v
        return run.dir
    finally:
        run.finish()


def log_tensorboard_summary(summary: Mapping, log_dir: Path) -> Path:
    """Scalars (`cv/<metric>` per fold as the step, `cv_mean/`, `cv_std/`, `oof/`) and the table as text."""
    from torch.utils.tensorboard import SummaryWriter

    header, rows = summary_table(summary)
    writer = SummaryWriter(str(log_dir))
    try:
        for g in groups_of(summary):
            for f in g["per_fold"]:
                step = f["fold"] if isinstance(f["fold"], int) else 0
                for k, v in f["metrics"].items():
                    if v is not None:
                        writer.add_scalar(f"cv/{k}", v, step)
            for k, v in g["mean"].items():
                if v is not None:
                    writer.add_scalar(f"cv_mean/{k}", v, 0)
            for k, v in g["std"].items():
                if v is not None:
                    writer.add_scalar(f"cv_std/{k}", v, 0)
            for k, v in oof_metrics(g).items():
                if v is not None:
                    writer.add_scalar(k, v, 0)
        md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows]
        writer.add_text("cv_summary", "\n".join(md), 0)
    finally:
        writer.close()
    return Path(log_dir)
