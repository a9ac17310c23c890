"""`wbc-compare` / `python compare.py runs=[<reference>,<candidate>] annotations=<csv>`: which predict run is
right more often on cells the lab labelled by eye (wbc.evaluation.annotated).

Without annotations=, writes annotate.csv: cells of the first run drawn at random, to be labelled. With
it, scores every run and compares each with the first; writes compare.json and compare_cells.csv.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from wbc.cli import CONFIG_DIR, prepare
from wbc.run import extras, task_wrapper
from wbc.spreadsheet import guard

log = logging.getLogger("wbc")


def run_list(cfg: DictConfig) -> list[str]:
    """cfg.runs as a list of paths (one path alone is a list of one)."""
    if OmegaConf.is_missing(cfg, "runs") or cfg.runs in (None, "", []):
        raise ValueError("runs is required: python compare.py runs=[<predict output dir>,...] [annotations=<csv>]")
    runs = OmegaConf.to_container(cfg.runs) if OmegaConf.is_config(cfg.runs) else [cfg.runs]
    return [str(r) for r in runs]


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows({k: guard(v) for k, v in r.items()} for r in rows)
    return buf.getvalue()


def print_report(report: dict) -> None:
    """The models on the annotated cells, and each one's verdict against the reference, as a rich table."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console() if Console().is_terminal else Console(width=160)
    n, metric = report["cells"], report["metric"]
    counts = ", ".join(f"{c} {k}" for c, k in report["per_class"].items())
    t = Table("run", "found", "macro-F1", "accuracy", "bal. acc.", f"{metric} - reference [{report['confidence']:.0%}]",
              "right only here / in ref.", "permutation p", "verdict", title=f"{n} annotated cells ({counts})")
    for i, m in enumerate(report["models"]):
        a = m.get("against_reference")
        vs = ("reference", "", "", "") if a is None else (
            f"{a['difference']:+.3f} [{a['low']:+.3f}, {a['high']:+.3f}]", f"{a['right_only_here']} / {a['right_only_reference']}",
            f"{a['permutation_p']:.3f}", a["verdict"])
        t.add_row(f"{i}: {escape(Path(m['run']).name)}", f"{m['found']}/{n}", f"{m['macro_f1']:.3f}", f"{m['accuracy']:.3f}",
                  f"{m['balanced_accuracy']:.3f}", *vs)
    console.print(t)


@task_wrapper
def compare(cfg: DictConfig) -> tuple[dict, dict]:
    """annotate.csv (no annotations yet) or the comparison; returns (figures, {"report": ...})."""
    from wbc.evaluation.annotated import compare as compare_runs
    from wbc.evaluation.annotated import sample_template, to_markdown
    from wbc.io import write_json, write_text

    out = Path(cfg.paths.output_dir)
    runs = run_list(cfg)
    if cfg.get("annotations") in (None, ""):
        rows = sample_template(runs[0], int(cfg.template_cells), int(cfg.seed))
        path = write_text(out / "annotate.csv", csv_text(rows))
        print(f"{len(rows)} cells drawn at random from {runs[0]} -> {path}\n"
              "  fill in the label column by eye, looking at each image around x, y (the nucleus box bbox_*); the overlays\n"
              "  show the model's calls, so label from the images, then\n"
              f"  python compare.py runs=[{','.join(runs)}] annotations={path}")
        return {"template_cells": len(rows)}, {"rows": rows}
    report = compare_runs(runs, cfg.annotations, cfg.metric, int(cfg.bootstrap), float(cfg.confidence), int(cfg.seed),
                          float(cfg.match_margin))
    write_json(out / "compare.json", report)
    write_text(out / "compare_cells.csv", csv_text(report["calls"]))
    write_text(out / "compare.md", to_markdown(report))
    if report["unlabelled_rows"]:
        log.info("compare: %d row(s) of %s have no label yet and were left out", report["unlabelled_rows"], cfg.annotations)
    print_report(report)
    print(f"compare.json, compare.md and compare_cells.csv in {out}")
    figures = {f"model{i}/{cfg.metric}": m[cfg.metric] for i, m in enumerate(report["models"])}
    return figures, {"report": report}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="compare.yaml")
def run(cfg: DictConfig) -> None:
    run_list(cfg)  # one clear error before anything else
    extras(cfg)
    compare(cfg)


def main() -> None:
    """Console script `wbc-compare` (and `python compare.py`)."""
    prepare()
    run()
