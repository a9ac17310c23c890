"""Fold ensembles: average the probabilities of several checkpoints of one stage (nnU-Net's
`-f 0 1 2 3 4`).

`SegmentationEnsemble` and `ClassifierEnsemble` expose what a single module exposes to inference
(`predict_probability` / `predict_proba`, `hparams.data_info`, `hparams.stage`, `classes`,
`.to()`, `.eval()`), so wbc.inference.CellPipeline, wbc.seg_eval and wbc.cls_eval take them
unchanged. Members must have been trained on the same inputs (input size, preprocessing, target,
classes, crop geometry): anything else is refused.

`load_models(spec, stage)` turns what a user passes -- a .ckpt file, a run dir, a sweep dir of
fold runs (`<sweep>/<job>/`), or a list of those -- into one module or an ensemble.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("wbc")

# what the members must agree on (they see the same input and predict the same classes)
SHARED_INFO = ("preprocess", "image_size", "target", "classes", "crops")


class AttributeDict(dict):
    """hparams of an ensemble: `ens.hparams.data_info` and `ens.hparams.get("data_info")`."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as err:
            raise AttributeError(key) from err


def common_data_info(members: Sequence[Any]) -> dict:
    infos = [dict(m.hparams.get("data_info") or {}) for m in members]
    for key in SHARED_INFO:
        values = [i.get(key) for i in infos]
        if any(v != values[0] for v in values[1:]):
            raise ValueError(
                f"ensemble members disagree on data_info.{key}: {values}; averaging needs folds trained on the "
                "same inputs (same data.image_size, data.preprocess, data.target, classes and crops)"
            )
    return infos[0]


class _Ensemble(torch.nn.Module):
    stage = ""

    def __init__(self, members: Sequence[torch.nn.Module], names: Sequence[str] | None = None) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        stages = {m.hparams.get("stage", self.stage) for m in members}
        if stages != {self.stage}:
            raise ValueError(f"{type(self).__name__}: members are {sorted(stages)} models, expected {self.stage!r} ones")
        self.members = torch.nn.ModuleList(members)
        self.names = list(names) if names is not None else [f"member{i}" for i in range(len(members))]
        self.hparams = AttributeDict(stage=self.stage, data_info=common_data_info(members), members=self.names)

    def __len__(self) -> int:
        return len(self.members)


class SegmentationEnsemble(_Ensemble):
    """Nucleus probability = the mean of the members' probabilities (before any threshold)."""

    stage = "segmentation"

    @torch.no_grad()
    def predict_probability(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m.predict_probability(x).float() for m in self.members]).mean(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict_probability(x)


class ClassifierEnsemble(_Ensemble):
    """Class probabilities = the mean of the members' softmax outputs."""

    stage = "classification"

    @property
    def classes(self) -> list[str]:
        return list(self.hparams.data_info.get("classes") or [])

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m.predict_proba(x).float() for m in self.members]).mean(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict_proba(x)


ENSEMBLES = {"segmentation": SegmentationEnsemble, "classification": ClassifierEnsemble}


# ----------------------------------------------------------------------------- finding members
def _is_run_dir(path: Path) -> bool:
    return any((path / n).exists() for n in ("checkpoints", "metrics.json", ".hydra"))


def _trained_here(path: Path) -> bool:
    """A training run (its own checkpoints/, or a pipeline run's stage sub-runs), not an
    evaluate.py output dir kept inside the sweep (ensemble_test/, ...)."""
    return any((path / sub / "checkpoints").is_dir() for sub in ("", "segmentation", "classification"))


def is_sweep_dir(path: str | Path) -> bool:
    """A dir that is not a run dir itself but holds run dirs (a multirun's sweep dir)."""
    p = Path(str(path))
    return p.is_dir() and not _is_run_dir(p) and any(d.is_dir() and _is_run_dir(d) for d in p.iterdir())


def sweep_runs(sweep_dir: str | Path) -> list[Path]:
    """The finished runs of a sweep dir (metrics.json, no FAILED marker), in job-number order;
    failed and unfinished ones are left out with a warning."""
    from wbc.cv import FAILED, job_sort_key

    p = Path(str(sweep_dir))
    runs, skipped = [], []
    for d in sorted((d for d in p.iterdir() if d.is_dir() and _is_run_dir(d) and _trained_here(d)), key=job_sort_key):
        (runs if (d / "metrics.json").is_file() and not (d / FAILED).exists() else skipped).append(d)
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


def is_ensemble(spec: Any) -> bool:
    return len(expand(spec)) > 1


def run_config(run_dir: Path) -> dict:
    """A run's (unresolved) config: Hydra's copy, else the CSV logger's (pipeline sub-runs), else the parent run's."""
    from omegaconf import OmegaConf

    for c in (run_dir / ".hydra" / "config.yaml", run_dir / "csv" / "hparams.yaml", run_dir.parent / ".hydra" / "config.yaml"):
        if c.is_file():
            cfg = OmegaConf.to_container(OmegaConf.load(c), resolve=False)
            if isinstance(cfg, dict) and cfg.get("stage"):
                return cfg
    return {}


def run_dir_of(ckpt: Path) -> Path:
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def checkpoint_stage(path: Path) -> str | None:
    """The stage recorded in a checkpoint file (hyper_parameters.stage)."""
    from lightning_modules.common import load_checkpoint

    for stage in ("segmentation", "classification"):
        try:
            load_checkpoint(str(path), stage)
            return stage
        except ValueError as err:
            if "checkpoint, expected" not in str(err):
                raise
    return None


def detect_stage(spec: Any) -> str:
    """segmentation or classification, read from the first entry's checkpoint (a pipeline run dir
    counts as segmentation, as in evaluate.py; its classification/ sub-run as classification)."""
    from wbc.checkpoints import resolve_checkpoint

    paths = expand(spec)
    if not paths:
        raise ValueError("no checkpoint given")
    first = paths[0]
    stage = checkpoint_stage(first if first.is_file() else resolve_checkpoint(first, "segmentation"))
    if stage not in ENSEMBLES:
        raise ValueError(f"{first}: cannot tell whether it is a segmentation or a classification run (stage={stage!r})")
    return stage


def member_name(ckpt: Path, index: int) -> str:
    fold = (run_config(run_dir_of(ckpt)).get("data") or {}).get("fold")
    return f"fold{fold}" if isinstance(fold, int) else f"member{index}"


def member_checkpoints(spec: Any, stage: str, key: str = "ckpt_path") -> list[tuple[str, Path]]:
    """[(name, checkpoint file)] for every member: runs resolve to their best checkpoint (a
    pipeline run to its `<stage>/` sub-run's). Names are `fold<k>` (unique) or `member<i>`."""
    from wbc.checkpoints import resolve_checkpoint

    ckpts = [resolve_checkpoint(p, stage, key) for p in expand(spec)]
    names = [member_name(c, i) for i, c in enumerate(ckpts)]
    if len(set(names)) != len(names):
        names = [f"member{i}" for i in range(len(ckpts))]
    return list(zip(names, ckpts))


def load_members(spec: Any, stage: str, key: str = "ckpt_path", device: str | torch.device = "cpu") -> tuple[list[str], list[Path], list[torch.nn.Module]]:
    from lightning_modules.common import module_from_checkpoint

    if stage == "segmentation":
        from lightning_modules.segmentation import SegmentationModule as cls
    else:
        from lightning_modules.classification import ClassifierModule as cls
    members = member_checkpoints(spec, stage, key)
    modules = [module_from_checkpoint(cls, str(c), stage, str(device)) for _, c in members]
    return [n for n, _ in members], [c for _, c in members], modules


def load_models(spec: Any, stage: str, key: str = "ckpt_path", device: str | torch.device = "cpu") -> torch.nn.Module:
    """One module (a single checkpoint or run) or the ensemble of several (a sweep dir or a list)."""
    names, ckpts, modules = load_members(spec, stage, key, device)
    if len(modules) == 1:
        return modules[0]
    log.info("%s ensemble of %d checkpoints: %s", stage, len(modules), ", ".join(f"{n}={c}" for n, c in zip(names, ckpts)))
    return ENSEMBLES[stage](modules, names)


def has_stage(spec: Any, stage: str) -> bool:
    """Whether the (first) run of spec holds a `stage` model (a segmentation sweep has no classifier)."""
    from wbc.checkpoints import resolve_checkpoint

    paths = expand(spec)
    if not paths:
        return False
    first = paths[0]
    if first.is_dir() and (first / stage).is_dir():  # a pipeline run
        return True
    try:
        return checkpoint_stage(first if first.is_file() else resolve_checkpoint(first, stage)) == stage
    except FileNotFoundError:
        return False
