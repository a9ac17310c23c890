"""What a run dir, a sweep dir and a stage sub-dir are, and what a job leaves in them.

- run dir: one training run (`outputs/<task>/runs/<time>/`, or `<sweep>/<job>/`). It holds
  `.hydra/config.yaml` (the full composed config it ran with), `checkpoints/`, `metrics.json`
  (written last: the run finished), and in a multirun `job.json` (which job this dir holds: fold,
  stage, overrides, loggers) or `FAILED` (the job raised; the sweep went on).
- stage sub-dir: a pipeline run's `segmentation/` and `classification/`, each a run dir of its own
  (with its own `.hydra/config.yaml`).
- sweep dir: a multirun's dir of run dirs (`<sweep>/<job number>/`).

`resolve_checkpoint(path, stage)` turns what a user passes (a .ckpt, a run dir, a pipeline run dir, a
sweep dir with one run) into the checkpoint file; `expand` turns a sweep dir or a list into its runs.
Under data parallelism (DDP: Lightning's child processes, SLURM tasks) every rank runs the job, and
only global rank zero writes a run dir's files (`is_rank_zero`). Pure: no Lightning, no Hydra.
"""

from __future__ import annotations

import json
import logging
import os
import re
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wbc.io import write_json, write_text

log = logging.getLogger("wbc")

FAILED = "FAILED"
JOB_FILE = "job.json"
METRICS = "metrics.json"
CONFIG = Path(".hydra") / "config.yaml"
CHECKPOINTS = "checkpoints"
# the stage sub-dirs of a pipeline run ("" = the run itself)
STAGE_DIRS = ("segmentation", "classification")
# overrides that do not change what a job computes (ignored when grouping jobs and checking a resume)
NEUTRAL_OVERRIDES = ("resume", "ckpt_path", "logger", "extras", "callbacks.rich_progress_bar", "tags")


# how launchers tell a process its rank: torchrun (RANK), Lightning's DDP child processes (LOCAL_RANK,
# NODE_RANK), SLURM tasks (SLURM_PROCID, which Lightning's SLURMEnvironment takes as the global rank)
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def is_rank_zero(environ: Mapping[str, str] | None = None) -> bool:
    """True unless a launcher marked this process as a rank other than zero. Read from the
    environment because job.json, FAILED and the config tree are written before any Trainer (and
    process group) exists; a DDP run's other ranks run the same job in the same run dir."""
    env = os.environ if environ is None else environ
    for name in RANK_VARIABLES:
        value = str(env.get(name, "") or "0").strip()
        if value.lstrip("-").isdigit() and int(value) != 0:
            return False
    return True


# ----------------------------------------------------------------------------- what a dir is
def is_run_dir(path: Path) -> bool:
    return any((Path(path) / n).exists() for n in (".hydra", METRICS, FAILED, JOB_FILE, CHECKPOINTS))


def trained_here(path: Path) -> bool:
    """A training run (its own checkpoints/, or a pipeline run's stage sub-runs), not an
    evaluate.py output dir kept inside a sweep dir (ensemble_test/, ...)."""
    return any((Path(path) / sub / CHECKPOINTS).is_dir() for sub in ("", *STAGE_DIRS))


def is_sweep_dir(path: str | Path) -> bool:
    """A dir that is not a run dir itself but holds run dirs (a multirun's sweep dir)."""
    p = Path(str(path))
    return p.is_dir() and not is_run_dir(p) and any(d.is_dir() and is_run_dir(d) for d in p.iterdir())


def job_sort_key(path: Path) -> tuple:
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def run_dir_of(ckpt: Path) -> Path:
    """Checkpoints live at <run>/checkpoints/x.ckpt."""
    ckpt = Path(ckpt)
    return ckpt.parent.parent if ckpt.parent.name == CHECKPOINTS else ckpt.parent


def stage_file(run_dir: Path, rel: str | Path) -> Path | None:
    """A stage's file inside a run dir: the run itself, or one of a pipeline run's stage sub-dirs."""
    for sub in ("", *STAGE_DIRS):
        path = Path(run_dir) / sub / rel
        if path.is_file():
            return path
    return None


def run_config(run_dir: Path) -> dict:
    """The full (unresolved) config a run or stage sub-run ran with; {} when it has none."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as err:  # noqa: BLE001 - name the file whatever YAML/OmegaConf raised
        raise ValueError(f"{path}: not a readable run config ({type(err).__name__}: {err})") from err
    return cfg if isinstance(cfg, dict) else {}


def save_config(run_dir: Path, cfg: Mapping) -> Path:
    """`<run>/.hydra/config.yaml`, as Hydra writes it for a top-level run (a stage sub-run's too)."""
    from omegaconf import OmegaConf

    text = OmegaConf.to_yaml(OmegaConf.create(dict(cfg)))
    return write_text(Path(run_dir) / CONFIG, text)


# ----------------------------------------------------------------------------- sweeps and members
def sweep_runs(sweep_dir: str | Path) -> list[Path]:
    """The finished runs of a sweep dir (metrics.json, no FAILED marker), in job-number order;
    failed and unfinished ones are left out with a warning."""
    p = Path(str(sweep_dir))
    runs, skipped = [], []
    for d in sorted((d for d in p.iterdir() if d.is_dir() and is_run_dir(d) and trained_here(d)), key=job_sort_key):
        (runs if (d / METRICS).is_file() and not (d / FAILED).exists() else skipped).append(d)
    if skipped:
        log.warning("%s: left out of the ensemble (failed or unfinished): %s", p, ", ".join(d.name for d in skipped))
    if not runs:
        raise FileNotFoundError(f"{p}: a sweep dir without a finished run (no <job>/metrics.json); nothing to ensemble")
    return runs


def as_list(spec: Any) -> list[str]:
    """One path, or a list of paths (a Hydra list `[a,b]` or a ListConfig)."""
    if spec is None or spec == "":
        return []
    if isinstance(spec, str | Path):
        return [str(spec)]
    return [str(s) for s in spec]


def expand(spec: Any) -> list[Path]:
    """Paths as given, with every sweep dir replaced by its finished runs."""
    out: list[Path] = []
    for s in as_list(spec):
        out.extend(sweep_runs(s) if is_sweep_dir(s) else [Path(s)])
    return out


def resolve_checkpoint(path: str | Path, stage: str, key: str = "ckpt_path") -> Path:
    """A file is used as is; a run dir gives its best checkpoint (metrics.json), else last.ckpt;
    a pipeline run dir gives its `<stage>/` sub-run's checkpoint."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"{key}={path}: no such checkpoint file or run directory")
    for run in (p / stage, p):
        metrics = read_metrics(run) if (run / METRICS).is_file() else {}
        best = best_checkpoint_in(run, metrics.get("best_checkpoint"))
        if best is not None:
            return best
        if (run / CHECKPOINTS / "last.ckpt").is_file():
            return run / CHECKPOINTS / "last.ckpt"
    raise FileNotFoundError(f"{key}={path}: directory holds no {stage} checkpoint (expected metrics.json or checkpoints/last.ckpt)")


def last_checkpoint_in(path: str | Path, stage: str) -> Path | None:
    """The checkpoint a resume continues: a file as is; a run dir's (or a pipeline run dir's `<stage>/`
    sub-run's) checkpoints/last.ckpt; None when there is none."""
    p = Path(str(path)).expanduser()
    if p.is_file():
        return p
    return next((r / CHECKPOINTS / "last.ckpt" for r in (p / stage, p) if (r / CHECKPOINTS / "last.ckpt").is_file()), None)


def best_checkpoint_in(run: Path, best: Any) -> Path | None:
    """metrics.json's `best_checkpoint`, only inside the run dir: metrics.json is a file anyone can hand
    over, and a path elsewhere would load whatever file it names. A moved run dir finds its file by
    name in checkpoints/. None when neither exists (the caller falls back to last.ckpt)."""
    if not best:
        return None
    where = f"{Path(run) / METRICS}: best_checkpoint={best!r}"
    if not isinstance(best, str):
        raise ValueError(f"{where}: expected the path of a .ckpt file inside the run dir")
    root = Path(os.path.abspath(run))
    given = Path(best).expanduser()
    given = given if given.is_absolute() else Path(run) / given
    for candidate in (given, Path(run) / CHECKPOINTS / given.name):  # the second: the run dir was moved
        # inside the run dir as written (a checkpoints/ folder symlinked to scratch storage, an HPC habit, stays
        # inside, as the last.ckpt fallback does); `..` cannot climb out: the path is normalised first
        if candidate.is_file() and Path(os.path.normpath(os.path.abspath(candidate))).is_relative_to(root):
            return candidate
    if given.is_file():
        raise ValueError(
            f"{where} is outside the run dir {root}; a run dir's checkpoint must be inside it "
            "(to use that file, pass the .ckpt itself)"
        )
    return None


# ----------------------------------------------------------------------------- job protocol
def read_metrics(run_dir: Path) -> dict:
    """`<run>/metrics.json`; a corrupt one is one clear error naming the file."""
    path = Path(run_dir) / METRICS
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: corrupt metrics file ({err}); delete it to re-run this job") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of metrics, got {type(data).__name__}")
    return data


def override_key(override: str) -> str:
    """`++data.fold=3` -> `data.fold`."""
    return override.split("=", 1)[0].lstrip("+~")


def as_overrides(prefix: str, values: Mapping[str, Any]) -> list[str]:
    """`prefix.key=value` Hydra overrides of settings a run recorded (null, true/false, [a,b], quoted strings
    where needed), to rebuild a command line that uses them."""
    def value(v: Any) -> str:
        if v is None:
            return "null"
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, list | tuple):
            return "[" + ",".join(value(x) for x in v) + "]"
        if isinstance(v, str) and not re.fullmatch(r"[\w.\-/]+", v):
            return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return str(v)

    return [f"{prefix}.{k}={value(v)}" for k, v in values.items()]


def model_choices(ckpt: Path) -> list[str] | None:
    """The command-line choices that built a checkpoint's network and schedule (`experiment=`, `stage=`,
    `model...`, `trainer.max_epochs`), from its run's job.json, for a fine-tuning command that must rebuild
    the same network; None when that run recorded none (a bare .ckpt, or a pipeline's stage sub-run)."""
    job = run_dir_of(Path(ckpt)) / JOB_FILE
    if not job.is_file():
        return None
    try:
        overrides = json.loads(job.read_text()).get("overrides") or []
    except (OSError, ValueError, AttributeError):  # unreadable: the caller falls back to naming no choices
        return None
    keys = ("experiment", "stage", "model", "trainer.max_epochs")
    return [o for o in overrides if any(override_key(o) == k or override_key(o).startswith(k + ".") for k in keys)]


def is_neutral(override: str) -> bool:
    key = override_key(override)
    return any(key == n or key.startswith(n + ".") for n in NEUTRAL_OVERRIDES)


def results_in(run_dir: Path) -> list[str]:
    """What an earlier run left in run_dir that a new job would mix with its own: metrics.json and
    checkpoints (also a pipeline run's stage sub-dirs'), relative to run_dir."""
    run_dir = Path(run_dir)
    found = []
    for sub in ("", *STAGE_DIRS):
        d = run_dir / sub
        if (d / METRICS).is_file():
            found.append(str(Path(sub) / METRICS))
        if (d / CHECKPOINTS).is_dir() and any((d / CHECKPOINTS).iterdir()):
            found.append(str(Path(sub) / CHECKPOINTS) + "/")
    return found


def check_fresh(run_dir: Path, multirun: bool = False, ckpt_path: Any = None) -> None:
    """A job without resume=true starts in a run dir that holds no earlier results: its scoring files
    (val_eval/, test_eval/, metrics.json) would otherwise stay beside the new job's until overwritten,
    and a killed re-launch be taken as finished with the old figures. Refused, nothing deleted. A run
    continued in place (`ckpt_path` inside run_dir) is the same run. Rank zero only: a DDP job's other
    ranks join the dir rank zero started."""
    given = Path(os.path.abspath(Path(str(ckpt_path)).expanduser())) if ckpt_path else None
    if not is_rank_zero() or (given is not None and given.is_relative_to(os.path.abspath(run_dir))):
        return
    found = results_in(run_dir)
    if found:
        new_dir = "hydra.sweep.dir" if multirun else "hydra.run.dir"
        raise FileExistsError(
            f"{run_dir} already holds results of an earlier run ({', '.join(found)}): pass resume=true to continue "
            f"or keep them (a finished job is skipped), or a new {new_dir} to start over; nothing was deleted"
        )


def start_job(run_dir: Path, record: Mapping) -> None:
    """Before a job runs: forget an earlier attempt's failure, record which job this dir holds
    (rank zero only: the other ranks of a DDP job run in the same dir)."""
    if not is_rank_zero():
        return
    run_dir = Path(run_dir)
    (run_dir / FAILED).unlink(missing_ok=True)
    write_json(run_dir / JOB_FILE, dict(record))


def finished_metrics(run_dir: Path) -> dict | None:
    """metrics.json of a finished run (None when the run did not finish or failed; a corrupt
    metrics.json is an error naming it, never a silent re-run)."""
    run_dir = Path(run_dir)
    if (run_dir / FAILED).exists() or not (run_dir / METRICS).is_file():
        return None
    return read_metrics(run_dir)


def write_failure(run_dir: Path, err: BaseException) -> Path:
    """`<run>/FAILED`: the exception and the last frames of its traceback (the full one is in the log).
    Written by rank zero only; another rank's error is in its log (and stops rank zero's job too)."""
    if not is_rank_zero():
        log.error("rank %s: job in %s failed (%s: %s); FAILED is rank zero's to write", os.environ.get("LOCAL_RANK"), run_dir, type(err).__name__, err)
        return Path(run_dir) / FAILED
    frames = traceback.format_exception(type(err), err, err.__traceback__)
    tail = "".join(frames[-3:])
    return write_text(Path(run_dir) / FAILED, f"{type(err).__name__}: {err}\n\n{tail}")


def returned_metric(metrics: Mapping[str, Any], name: str | None) -> float | None:
    """The value a finished job returns to the sweeper (None when none is configured or logged)."""
    if not name or metrics.get(name) is None:
        return None
    return float(metrics[name])
