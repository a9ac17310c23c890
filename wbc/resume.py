"""Resume safety: a run dir's weights and metrics are only reused (or continued) by the job that
made them. `job_record` is what `<run>/job.json` holds (which fold and stage, the overrides, and
`trained_from`: the resolved settings its weights come from); `check_same_job` and, for a pipeline's
stage sub-dirs, `check_same_stage` compare it with the job about to run and raise ValueError naming
the keys that differ. Locations (`root`, `*dir`) and the schedule may differ. Pure: no Lightning, no Hydra.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from wbc.data.bitdepth import ABSENT_MEANS
from wbc.rundir import CHECKPOINTS, CONFIG, JOB_FILE, METRICS, STAGE_DIRS, is_neutral, run_config

log = logging.getLogger("wbc")

# what a stage's weights were trained from; keys that only say where things are may differ (a moved
# checkout), and so may the schedule (its T_max follows trainer.max_epochs, which a resume may raise)
TRAINED_FROM = ("data", "model")
LOCATION_KEYS = ("root", "dir", "data_dir", "output_dir", "log_dir")
MAY_DIFFER = ("model.scheduler.", "segmentation.model.scheduler.", "classification.model.scheduler.")
# the top-level nodes job.json's `trained_from` is taken from (`trained_from`)
JOB_SETTINGS = ("seed", "init_from", *TRAINED_FROM, *STAGE_DIRS)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def _describe_differences(keys: list[str], old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """'key: old -> new' per differing key; a whole node present on one side only is one entry
    ('data.parts.all_idb2: absent -> present'), not one per leaf."""
    def top_absent(key: str, side: Mapping[str, Any]) -> str:
        parts = key.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if not any(k == prefix or k.startswith(prefix + ".") for k in side):
                return prefix
        return key

    out: list[str] = []
    for k in keys:
        if k not in old or k not in new:
            node = top_absent(k, old if k not in old else new)
            line = f"{node}: absent -> present" if k not in old else f"{node}: present -> absent"
        else:
            line = f"{k}: {old[k]!r} -> {new[k]!r}"
        if line not in out:
            out.append(line)
    return out


def _differing(old: Mapping[str, Any], new: Mapping[str, Any], may_differ: tuple[str, ...] = ()) -> list[str]:
    """'key: old -> new' lines for the leaves that differ, locations (`root`, `*dir`) and keys under
    `may_differ` left out."""
    old, new = _flatten(old), _flatten(new)

    def value(side: Mapping[str, Any], k: str) -> Any:
        leaf = k.rsplit(".", 1)[-1]
        implied = leaf in ABSENT_MEANS and "data" in k.split(".")[:-1]  # a data setting added since that run
        return side.get(k, ABSENT_MEANS[leaf]) if implied else side.get(k)

    keys = sorted(k for k in old.keys() | new.keys() if value(old, k) != value(new, k)
                  and k.rsplit(".", 1)[-1] not in LOCATION_KEYS and not k.startswith(may_differ))
    return _describe_differences(keys, old, new)


def _refuse(where: Path, lines: list[str], remedy: str) -> None:
    if lines:
        shown = "; ".join(lines[:6]) + (f" (+{len(lines) - 6} more)" if len(lines) > 6 else "")
        raise ValueError(f"resume=true: {where} holds a model trained with other settings ({shown}); {remedy}")


def check_same_stage(stage_dir: Path, cfg: Mapping) -> None:
    """resume=true into a pipeline stage's dir that already holds weights: they must have been
    trained from the same data and model settings as `cfg` (the stage's resolved config), else the
    run would reuse (or continue) a model of other settings under this config's name. Compares the
    stage's saved .hydra/config.yaml; raises ValueError naming the keys that differ."""
    stage_dir = Path(stage_dir)
    if not (stage_dir / CONFIG).is_file() or not ((stage_dir / METRICS).is_file() or (stage_dir / CHECKPOINTS).is_dir()):
        return
    before = run_config(stage_dir)
    lines = _differing({k: before.get(k) for k in TRAINED_FROM}, {k: cfg.get(k) for k in TRAINED_FROM}, MAY_DIFFER)
    _refuse(stage_dir, lines, f"resume with the settings it was trained with, use a new run dir, or delete {stage_dir} to train it again")



def job_record(
    fold: Any, stage: str | None, overrides: Sequence[str], job: Any = None, task_name: str | None = None,
    optimized_metric: str | None = None, loggers: Mapping[str, Any] | None = None, cfg: Mapping | None = None,
    software: Mapping[str, Any] | None = None,
) -> dict:
    """What job.json holds: enough to recognise the job on resume (`trained_from`: the resolved
    settings its weights come from, taken from `cfg`), to log the sweep summary to the same
    dashboards (`loggers`: the job's resolved logger configs), and the code and library versions it
    ran with (`software`, `wbc.provenance.software_record`; a resume does not compare it)."""
    return {
        "job": job,
        "fold": fold,
        "stage": stage,
        "task_name": task_name,
        "optimized_metric": optimized_metric,
        "overrides": list(overrides),
        "loggers": {name: dict(entry) for name, entry in (loggers or {}).items() if entry},
        "trained_from": trained_from(cfg) if cfg is not None else None,
        "software": dict(software) if software is not None else None,
    }


def trained_from(cfg: Mapping) -> dict:
    """The resolved settings a job's weights come from: the seed, `data` and `model`, and a pipeline's
    stage nodes' own `data` and `model` (their trainer, e.g. max_epochs, may change on a resume)."""
    out: dict[str, Any] = {k: cfg[k] for k in JOB_SETTINGS if k in cfg and k not in STAGE_DIRS}
    for stage in STAGE_DIRS:
        node = cfg.get(stage)
        if isinstance(node, Mapping):
            out[stage] = {k: node[k] for k in TRAINED_FROM if k in node}
    return out


def check_same_job(run_dir: Path, record: Mapping) -> None:
    """A resumed sweep must find the same job in a run dir: job numbers follow the order of the
    swept values, so `-m data.fold=2,3` resumed into a `data.fold=0,1,2,3,4` sweep dir would
    otherwise reuse fold 0's results as fold 2's. Nor may a run dir's weights or metrics be reused
    (or continued) under other settings: `trained_from` must match, else ValueError naming the keys."""
    path = Path(run_dir) / JOB_FILE
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"resume=true: {path} is not readable JSON ({err}): the job record a resume checks; "
                         "restore it, or use a new run dir (hydra.run.dir / hydra.sweep.dir)") from err
    if not isinstance(old, dict):
        raise ValueError(f"resume=true: {path} holds a {type(old).__name__}, expected the job record (a JSON object)")
    for key in ("fold", "stage"):
        if old.get(key) != record.get(key):
            raise ValueError(
                f"resume=true: {run_dir} holds a job with {key}={old.get(key)!r}, this job has {key}={record.get(key)!r} "
                "(job numbers follow the swept values: resume with the same sweep, or use a new hydra.sweep.dir)"
            )
    if old.get("trained_from") is not None and record.get("trained_from") is not None:
        # Hydra rewrote the run's .hydra/config.yaml when this job started: job.json is the record
        lines = _differing(old["trained_from"], record["trained_from"], MAY_DIFFER)
        _refuse(run_dir, lines, "resume with the settings it was trained with, or use a new run dir (hydra.run.dir / hydra.sweep.dir)")
        return
    before = sorted(o for o in old.get("overrides", []) if not is_neutral(o))
    now = sorted(o for o in record.get("overrides", []) if not is_neutral(o))
    if before != now:  # a job.json written before `trained_from` existed: the overrides are all there is
        log.warning("resume=true: %s was run with overrides %s, this job has %s", run_dir, before, now)


# ----------------------------------------------------------------------------- a run stopped after training
def checkpoint_state(path: Path) -> dict | None:
    """A checkpoint's saved dict (weights-only load, memory-mapped); None when it cannot be read
    (fit's own checks report unreadable files with the path)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not ours to report here
        return None
    return ckpt if isinstance(ckpt, dict) else None


def schedule_reached(ckpt: Path, trainer_cfg: Mapping) -> str | None:
    """'its N epoch(s) reach trainer.max_epochs=M' (or max_steps) when `ckpt` already ran the whole schedule
    of `trainer_cfg`: resuming it trains nothing. None when it did not, or cannot tell."""
    state = checkpoint_state(Path(ckpt)) if Path(ckpt).is_file() else None
    try:
        epochs = int(state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])  # type: ignore[index]
        step = int(state["global_step"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return None
    max_epochs, max_steps = trainer_cfg.get("max_epochs"), trainer_cfg.get("max_steps") or -1
    if max_epochs is None and max_steps == -1:
        max_epochs = 1000  # Lightning's default
    if max_steps > 0 and step >= max_steps:
        return f"its {step} steps reach trainer.max_steps={max_steps}"
    if max_epochs is not None and max_epochs >= 0 and epochs >= max_epochs:
        return f"its {epochs} epoch(s) reach trainer.max_epochs={max_epochs}"
    return None


def early_stopped(ckpt: Path, trainer_cfg: Mapping, callbacks_cfg: Mapping | None) -> str | None:
    """'early stopping stopped it (...)' when `ckpt` was saved by a run an EarlyStopping callback had told to
    stop: Lightning keeps trainer.should_stop out of the checkpoint, so a resume would train on (and test
    another epoch's weights) where the uninterrupted run went on to test. Read from the callback's saved
    state (`stopping_reason`, Lightning >= 2.6; else `stopped_epoch` > 0 or `wait_count` >= `patience`).
    None when it was not stopped, when trainer.min_epochs had not been reached (Lightning trains on then),
    or when `callbacks_cfg` (the resumed run's callbacks) has no early stopping: that resume trains on."""
    targets = [str(c.get("_target_", "")) for c in (callbacks_cfg or {}).values() if isinstance(c, Mapping)]
    if not any(t.rsplit(".", 1)[-1] == "EarlyStopping" for t in targets):
        return None
    state = checkpoint_state(Path(ckpt)) if Path(ckpt).is_file() else None
    try:
        epochs = int(state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return None
    if epochs < int(trainer_cfg.get("min_epochs") or 0):
        return None
    for key, es in ((state or {}).get("callbacks") or {}).items():
        if not str(key).startswith("EarlyStopping") or not isinstance(es, Mapping):
            continue
        reason = es.get("stopping_reason")
        if reason is not None:
            stopped = int(reason) != 0  # EarlyStoppingReason.NOT_STOPPED
        else:
            stopped = int(es.get("stopped_epoch") or 0) > 0 or int(es.get("wait_count") or 0) >= int(es.get("patience") or 1)
        if stopped:
            why = es.get("stopping_reason_message") or f"wait_count {es.get('wait_count')} of patience {es.get('patience')}"
            return f"early stopping stopped it after {epochs} epoch(s): {str(why).strip()}"
    return None


def fit_ended(ckpt: Path, trainer_cfg: Mapping, callbacks_cfg: Mapping | None) -> str | None:
    """Why trainer.fit would train nothing more from `ckpt` (its schedule reached, or early stopping had
    stopped it), None when it would: a run stopped after that goes straight to testing."""
    return schedule_reached(ckpt, trainer_cfg) or early_stopped(ckpt, trainer_cfg, callbacks_cfg)


def recorded_best(last: Path) -> Path | None:
    """The best checkpoint a monitoring ModelCheckpoint had chosen when `last` was saved (its callback
    state records best_model_path), found inside the run dir (also a moved one); None when it recorded
    none. A run stopped after training tests that file, as the uninterrupted run would have."""
    from wbc.rundir import best_checkpoint_in, run_dir_of

    states = (checkpoint_state(Path(last)) or {}).get("callbacks") or {}
    for key, state in states.items():
        if str(key).startswith("ModelCheckpoint") and isinstance(state, Mapping) and state.get("monitor") and state.get("best_model_path"):
            run = run_dir_of(Path(last))
            try:
                found = best_checkpoint_in(run, str(state["best_model_path"]))
            except ValueError:  # outside the run dir: not this run's file to load
                found = None
            if found is None:
                raise FileNotFoundError(
                    f"{last} records the best checkpoint {state['best_model_path']}, which is gone (not in {run / CHECKPOINTS}): "
                    "test the last one with eval_checkpoint=last, or another with train=false ckpt_path=<a .ckpt>")
            return found
    return None


def differing_overrides(run_dir: Path, record: Mapping) -> list[str]:
    """'key: old -> new' for each override that differs between the job that finished in `run_dir` (its
    job.json) and `record` (the job now launched), neutral keys (resume, loggers, hydra.*) left out; []
    without a job.json."""
    path = Path(run_dir) / JOB_FILE
    try:
        old = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return []

    def settings(overrides: Any) -> dict[str, str]:
        from wbc.rundir import override_key

        out = {}
        for o in overrides or []:
            key = override_key(str(o))
            if not is_neutral(str(o)) and key != "hydra" and not key.startswith("hydra."):
                out[key] = str(o).split("=", 1)[1] if "=" in str(o) else "(deleted)"
        return out

    before, now = settings(old.get("overrides") if isinstance(old, dict) else None), settings(record.get("overrides"))
    keys = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    return [f"{k}: {before.get(k, '(not set)')} -> {now.get(k, '(not set)')}" for k in keys]


def logged_fit_metrics(csv_log: Path, last: Path) -> dict[str, float]:
    """What trainer.fit's metrics were at its end, for a run whose fit finished before an interruption:
    each metric's last value in its CSV log (test/ columns left out: tested again), and the best-so-far
    the module keeps in the checkpoint (`val_dice_best` -> val/dice_best) where the CSV has none."""
    import csv
    import re

    out: dict[str, float] = {}
    if Path(csv_log).is_file():
        with open(csv_log, newline="") as fh:
            for row in csv.DictReader(fh):
                for k, v in row.items():
                    if k in ("epoch", "step") or not k or k.startswith("test/") or v in (None, ""):
                        continue
                    try:
                        out[k] = float(v)
                    except ValueError:
                        continue
    for k, v in (checkpoint_state(Path(last)) or {}).items():
        m = re.fullmatch(r"val_(.+)_best", str(k))
        if m and isinstance(v, float):
            out.setdefault(f"val/{m.group(1)}_best", v)
    return out
