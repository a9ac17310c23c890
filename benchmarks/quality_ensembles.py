"""Ensemble rows of `benchmarks/quality.py`: the fold runs of other rows, of the same training seed
and fold, scored as one model (`evaluate.py ckpt_path=[<member runs>]`). The rows for another lab's
images are a segmenter trained on RGB and its grey + CLAHE twin, averaged, each member seeing its own
preprocessing (README "Both inputs as one segmenter"), and the cross-source pipeline with its plain and
nucleus-masked classifiers averaged, each reading its own view of the crop (`segmenter=<first run>
classifier=[<runs>]`; README "Plain and masked as one classifier").

An ensemble row trains nothing. Its sweep dir holds `members.json` (the row key and the member sweeps)
and one job dir per (seed, fold) with a `job.json` (the fold, the first member's overrides, the member
runs) and a `metrics.json` merged from evaluate's test and validation runs, so the results table reads
it like any training sweep.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

# the splits an ensemble row is scored on, as a training job's metrics.json holds them
SPLITS = ("test", "val")


def run_seed(job: Path, meta: dict) -> str:
    """The training seed a job ran with: job.json's `trained_from` (the resolved settings its weights come
    from), else its .hydra/config.yaml, else a `seed=` override; "" when none says. Not the override
    alone: a sweep launched without seed= trained with the config's default and then paired with nothing."""
    trained = meta.get("trained_from")
    if isinstance(trained, dict) and isinstance(trained.get("seed"), int | str):
        return str(trained["seed"])
    from wbc.rundir import run_config

    seed = run_config(job).get("seed")
    if isinstance(seed, int | str) and not isinstance(seed, bool):
        return str(seed)
    return next((o.split("=", 1)[1] for o in meta.get("overrides") or [] if o.split("=", 1)[0].lstrip("+") == "seed"), "")


def job_seed_fold(job: Path) -> tuple[str, int]:
    """A training job's (training seed, fold), read from its job.json: what members and paired levers are matched on."""
    meta = json.loads((job / "job.json").read_text())
    return run_seed(job, meta), int(meta.get("fold") or 0)


def finished_jobs(sweep: Path) -> dict[tuple[str, int], Path]:
    """The sweep's finished training jobs (metrics.json written) by (seed, fold)."""
    return {job_seed_fold(p.parent): p.parent for p in sorted(sweep.glob("*/job.json")) if (p.parent / "metrics.json").is_file()}


def is_pipeline(run: Path) -> bool:
    return all((run / stage).is_dir() for stage in ("segmentation", "classification"))


def adapt_setting(run: Path) -> str:
    """A pipeline run's `pipeline.adapt_bn` (what its own test score adapted), as an evaluate.py override value."""
    from wbc.rundir import run_config

    value = (run_config(run).get("pipeline") or {}).get("adapt_bn")
    if isinstance(value, list):
        return "[" + ",".join(value) + "]"
    return str(value) if value else "false"


def evaluate_command(members: list[Path], split: str, out: Path) -> list[str] | None:
    """The evaluate.py command scoring the members as one ensemble on `split` (None: nothing to score).
    Pipeline runs (classifier pairs, e.g. plain + masked crops) are scored as one pipeline: the first
    member's segmenter, the members' classifiers averaged, adapted as the runs adapt; the full
    pipeline is scored on the test images only, and each stage's validation is its member's own."""
    if all(is_pipeline(m) for m in members):
        if split != "test":
            return None
        models = [f"segmenter={members[0] / 'segmentation'}", "classifier=[" + ",".join(str(m / "classification") for m in members) + "]",
                  f"adapt_bn={adapt_setting(members[0])}"]
    else:
        models = ["ckpt_path=[" + ",".join(str(m) for m in members) + "]"]
    return [sys.executable, "evaluate.py", *models, f"split={split}", f"hydra.run.dir={out}", "extras.print_config=false", "num_overlays=4"]


def split_metrics(metrics: dict, split: str) -> dict:
    """The figures of `split` in an evaluate.py metrics.json: `<split>/..`, a stage's `<stage>/<split>/..`
    and, on the test split, the full pipeline's `pipeline/..`."""
    return {k: v for k, v in metrics.items()
            if k.startswith(f"{split}/") or f"/{split}/" in k or (split == "test" and k.startswith("pipeline/"))}


def run_evaluate(members: list[Path], split: str, out: Path) -> dict:
    """evaluate.py on the member runs as one ensemble; its metrics.json ({} when it failed: logged in out/../)."""
    cmd = evaluate_command(members, split, out)
    if cmd is None:
        return {}
    print("$", " ".join(cmd), flush=True)
    root = Path(__file__).resolve().parents[1]
    with open(out.parent / f"{split}_eval.log", "w") as log:
        subprocess.run(cmd, cwd=root, check=False, stdout=log, stderr=subprocess.STDOUT)
    path = out / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def cached(key: str, members: list[Path], out_root: Path) -> Path | None:
    """An ensemble sweep made earlier from exactly these member sweeps."""
    want = [str(m.resolve()) for m in members]
    for made in sorted(out_root.glob(f"{key}_*/members.json")):
        meta = json.loads(made.read_text())
        if meta.get("row") == key and meta.get("members") == want:
            return made.parent
    return None


def build(key: str, members: list[Path], out_root: Path, run: bool = True,
          evaluate: Callable[[list[Path], str, Path], dict] | None = None) -> Path | None:
    """The ensemble sweep of row `key` over member sweeps (one per member row, same settings): one job
    per (seed, fold) that every member finished. Reuses a sweep
    made from the same members; with `run` false it only looks for one (None when there is none).
    `evaluate` (members, split, run dir) -> metrics defaults to evaluate.py.
    Members whose runs share no (seed, fold) are an error naming them."""
    found = cached(key, members, out_root)
    if found is not None or not run:
        return found
    evaluate = evaluate or run_evaluate
    jobs = [finished_jobs(m) for m in members]
    common = sorted(set.intersection(*(set(j) for j in jobs)), key=lambda k: (k[0], k[1]))
    if not common:
        raise ValueError(f"{key}: the member sweeps {[str(m) for m in members]} have no finished run of the same seed and fold")
    seeds = sorted({seed for seed, _ in common})
    sweep = out_root / f"{key}_s{'_'.join(seeds)}_{time.strftime('%Y%m%d_%H%M%S')}"
    sweep.mkdir(parents=True)
    for i, sf in enumerate(common):
        runs = [j[sf] for j in jobs]
        job = sweep / str(i)
        job.mkdir()
        overrides = json.loads((runs[0] / "job.json").read_text()).get("overrides") or []
        (job / "job.json").write_text(json.dumps({"fold": sf[1], "overrides": overrides, "members": [str(r) for r in runs]}, indent=2))
        metrics: dict = {}
        for split in SPLITS:
            got = evaluate(runs, split, job / f"{split}_eval")
            metrics.update(split_metrics(got, split))
        if metrics:
            (job / "metrics.json").write_text(json.dumps(metrics, indent=2))
    # written last: a sweep interrupted half-way is not taken for a finished one
    (sweep / "members.json").write_text(json.dumps({"row": key, "members": [str(m.resolve()) for m in members]}, indent=2))
    return sweep


def row_of(sweep: Path) -> str | None:
    """The row key of an ensemble sweep (None for a training sweep)."""
    path = sweep / "members.json"
    return json.loads(path.read_text()).get("row") if path.is_file() else None
