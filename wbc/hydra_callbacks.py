"""Hydra callbacks (configured under `hydra.callbacks`, conf/hydra/callbacks/).

`CVSummary` runs once at the end of a multirun, in the process that launched it (also with the
SLURM launcher): it reads every job's run dir and writes the sweep's summary next to them
(wbc.cv does the work; this class only wires it to Hydra and to the dashboards the jobs used).

A summary that cannot be written is an error, not a warning: Hydra's `Callbacks._notify` turns any
`Exception` a callback raises into a `UserWarning` (the multirun exits 0 with no summary), so the
failure is logged and re-raised as `SweepCallbackError`, a `SystemExit` Hydra lets through: the
process exits 1 with the reason on stderr. Dashboards stay best effort (the files are written first).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from wbc import cv, cv_dashboards

log = logging.getLogger("wbc")


class SweepCallbackError(SystemExit):
    """A sweep-end callback failed. A SystemExit (exit status 1, the message on stderr) because
    Hydra would demote any Exception to a warning and the multirun would still exit 0."""


class CVSummary(Callback):
    """At multirun end: `cv_summary.json/.csv` (a sweep over data.fold; `sweep_summary.*` for any
    other sweep), the pooled out-of-fold tables, and, if the jobs logged there, a wandb Table
    (a short run in the folds' group) and TensorBoard scalars/text."""

    def __init__(self, ddof: int = 1, dashboards: bool = True, oof_tables: bool = True) -> None:
        self.ddof = ddof
        self.dashboards = dashboards
        self.oof_tables = oof_tables

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            self.summarize(sweep_dir)
        except Exception as err:
            log.exception("CV summary of %s failed", sweep_dir)
            raise SweepCallbackError(f"CV summary of the sweep {sweep_dir} failed: {type(err).__name__}: {err}") from err

    def summarize(self, sweep_dir: Path) -> None:
        """Write the sweep's summary files (then the dashboards); raises on any failure."""
        if not sweep_dir.is_dir():
            return
        jobs = cv.read_sweep(sweep_dir)
        if not jobs:
            log.warning("CV summary: no job run dirs in %s", sweep_dir)
            return
        summary = cv.summarize_jobs(jobs, sweep_dir, self.ddof)
        json_path, csv_path = cv.write_summary(summary, sweep_dir)
        if self.oof_tables and summary["kind"] == "cv":
            cv.write_oof_tables(jobs, sweep_dir)
        # printed, not logged: after the jobs, the logging file handler is still the last job's
        print(f"\n{cv.format_summary(summary)}\nSweep summary: {json_path} (+ {csv_path.name})")
        if self.dashboards:
            self._dashboards(summary, jobs, sweep_dir)

    def _dashboards(self, summary: dict, jobs: list[cv.Job], sweep_dir: Path) -> None:
        """Best effort: a dashboard that cannot be written never hides the summary files."""
        wandb_settings = cv_dashboards.logger_settings(jobs, "wandb")
        if wandb_settings is not None:
            try:
                cv_dashboards.log_wandb_summary(summary, wandb_settings, sweep_dir)
                log.info("CV summary logged to wandb (group %s)", wandb_settings.get("group"))
            except Exception:  # noqa: BLE001 - never lose the sweep over a dashboard
                log.exception("CV summary: logging to wandb failed")
        if cv_dashboards.logger_settings(jobs, "tensorboard") is not None:
            try:
                cv_dashboards.log_tensorboard_summary(summary, sweep_dir / "tensorboard" / "cv_summary")
            except Exception:  # noqa: BLE001
                log.exception("CV summary: logging to TensorBoard failed")
