"""Find the checkpoint a user means: a .ckpt file, a run dir, or a pipeline run dir."""

from __future__ import annotations

import json
from pathlib import Path


def resolve_checkpoint(path: str | Path, stage: str, key: str = "ckpt_path") -> Path:
    """A file is used as is; a run dir gives its best checkpoint (metrics.json), else last.ckpt;
    a pipeline run dir gives its `<stage>/` sub-run's checkpoint."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"{key}={path}: no such checkpoint file or run directory")
    for run in (p / stage, p):
        metrics = run / "metrics.json"
        if metrics.is_file():
            best = json.loads(metrics.read_text()).get("best_checkpoint")
            if best and Path(best).is_file():
                return Path(best)
            if best and (run / "checkpoints" / Path(best).name).is_file():  # run dir was moved
                return run / "checkpoints" / Path(best).name
        if (run / "checkpoints" / "last.ckpt").is_file():
            return run / "checkpoints" / "last.ckpt"
    raise FileNotFoundError(f"{key}={path}: directory holds no {stage} checkpoint (expected metrics.json or checkpoints/last.ckpt)")
