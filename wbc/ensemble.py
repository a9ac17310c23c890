"""Fold ensembles: average the probabilities of several checkpoints of one stage (nnU-Net's
`-f 0 1 2 3 4`).

`SegmentationEnsemble` and `ClassifierEnsemble` expose what a single module exposes to inference
(`predict_probability` / `predict_proba`, `hparams.data_info`, `hparams.stage`, `classes`,
`.to()`, `.eval()`), so wbc.inference.CellPipeline, wbc.evaluation.segmentation and wbc.evaluation.classification take them
unchanged. Members must have been trained on the same inputs (input size, preprocessing, target,
classes, crop geometry): anything else is refused, with two exceptions: members trained on different
preprocessing (e.g. RGB and grey + CLAHE, which each win on another lab's smears) average as one model;
they take the image through every member's preprocessing, stacked along the channels
(`data_info.input_groups`, wbc.data.transforms.StackedPreprocess). Likewise classifiers trained on
nucleus-masked and on plain crops (`data.crops.masked`): their crops stack both views
(`masked: both`, wbc.cells.instance_crops). Each member reads its own channels.

`load_models(spec, stage)` turns what a user passes -- a .ckpt file, a run dir, a sweep dir of
fold runs (`<sweep>/<job>/`), or a list of those (wbc.rundir.expand) -- into one module or an ensemble.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from wbc.data.bitdepth import ABSENT_MEANS
from wbc.rundir import STAGE_DIRS, expand, resolve_checkpoint, run_config, run_dir_of

log = logging.getLogger("wbc")

# what the members must agree on (they see the same input and predict the same classes)
SHARED_INFO = ("preprocess", "image_size", "target", "classes", "crops", "postprocess", "bit_depth")


class AttributeDict(dict):
    """hparams of an ensemble: `ens.hparams.data_info` and `ens.hparams.get("data_info")`."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as err:
            raise AttributeError(key) from err


def _completed(info: dict) -> dict:
    """`info` with its post-processing filled with today's defaults: a key a member's checkpoint
    predates (e.g. `lobe_gap`) was trained with the default and is not a disagreement."""
    if isinstance(info.get("postprocess"), Mapping):
        from wbc.postprocess import PostprocessParams

        info["postprocess"] = dataclasses.asdict(PostprocessParams.from_config(info["postprocess"], "data_info.postprocess"))
    return info


def common_data_info(members: Sequence[Any], may_differ: Sequence[str] = ()) -> dict:
    infos = [_completed(dict(m.hparams.get("data_info") or {})) for m in members]
    for key in SHARED_INFO:
        if key in may_differ:
            continue
        values = [i.get(key, ABSENT_MEANS.get(key)) for i in infos]  # a checkpoint before bit_depth read auto
        if any(v != values[0] for v in values[1:]):
            raise ValueError(
                f"ensemble members disagree on data_info.{key}: {values}; averaging needs folds trained on the "
                "same inputs (same data.image_size, data.preprocess, data.target, data.bit_depth, classes and crops)"
            )
    info = dict(infos[0])
    if any(i.get("appearance") for i in infos):  # like the training images = like any member's (not just the first's)
        from wbc.appearance import merge_profiles

        info["appearance"] = merge_profiles(i.get("appearance") for i in infos)
    return info


def preprocess_groups(members: Sequence[Any]) -> tuple[list[Any], list[int]]:
    """The distinct preprocessings (wbc.data.transforms.Preprocess) the members were trained on, in order
    of first use, and which of them each member reads: an ensemble's input stacks them along the channels."""
    from wbc.data.transforms import Preprocess

    groups: list[Preprocess] = []
    which: list[int] = []
    for m in members:
        pre = Preprocess.from_config((m.hparams.get("data_info") or {}).get("preprocess"))
        if pre not in groups:
            groups.append(pre)
        which.append(groups.index(pre))
    return groups, which


def describe_groups(groups: Sequence[Any], which: Sequence[int]) -> str:
    return "; ".join(f"{sum(i == k for i in which)} x {g.to_dict()}" for k, g in enumerate(groups))


class _Ensemble(torch.nn.Module):
    stage = ""
    may_differ: tuple[str, ...] = ()  # data_info keys the members need not share

    def __init__(self, members: Sequence[torch.nn.Module], names: Sequence[str] | None = None) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        stages = {m.hparams.get("stage", self.stage) for m in members}
        if stages != {self.stage}:
            raise ValueError(f"{type(self).__name__}: members are {sorted(stages)} models, expected {self.stage!r} ones")
        self.members = torch.nn.ModuleList(members)
        self.names = list(names) if names is not None else [f"member{i}" for i in range(len(members))]
        self.hparams = AttributeDict(stage=self.stage, data_info=common_data_info(members, self.may_differ), members=self.names)
        self.member_group = [0] * len(members)  # which input (group_infos) each member reads

    def __len__(self) -> int:
        return len(self.members)

    def group_infos(self) -> list[dict]:
        """The data_info of each distinct member input (evaluation builds one DataModule per group)."""
        return [dict(self.hparams.data_info)]


class SegmentationEnsemble(_Ensemble):
    """Nucleus probability = the mean of the members' probabilities (before any threshold). Members trained
    on different preprocessing form input groups: the input then holds each group's channels in turn."""

    stage = "segmentation"
    may_differ = ("preprocess",)

    def __init__(self, members: Sequence[torch.nn.Module], names: Sequence[str] | None = None) -> None:
        super().__init__(members, names)
        self.input_groups, self.member_group = preprocess_groups(members)
        if len(self.input_groups) > 1:
            self.hparams.data_info["input_groups"] = [g.to_dict() for g in self.input_groups]
            log.info("segmentation ensemble over %d inputs (%s): each member sees its own preprocessing",
                     len(self.input_groups), describe_groups(self.input_groups, self.member_group))

    def group_infos(self) -> list[dict]:
        if len(self.input_groups) == 1:
            return super().group_infos()
        return [{**self.hparams.data_info, "preprocess": g.to_dict()} for g in self.input_groups]

    def member_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each member's channels of `x` (all of it when the members share one input)."""
        if len(self.input_groups) == 1:
            return [x] * len(self.members)
        sizes = [g.channels for g in self.input_groups]
        if x.shape[1] != sum(sizes):
            raise ValueError(f"this segmentation ensemble takes {sum(sizes)} channels (its members' inputs {sizes}, "
                             f"stacked: wbc.data.transforms.StackedPreprocess), got {x.shape[1]}")
        chunks = torch.split(x, sizes, dim=1)
        return [chunks[g] for g in self.member_group]

    @torch.no_grad()
    def predict_probability(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m.predict_probability(xi).float() for m, xi in zip(self.members, self.member_inputs(x))]).mean(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict_probability(x)


class ClassifierEnsemble(_Ensemble):
    """Class probabilities = the mean of the members' (calibrated) softmax outputs, then the
    ensemble's own temperature (fitted on the members' pooled out-of-fold predictions when they are
    known: :func:`calibrate_from_oof`; 1 otherwise). Members may differ in preprocessing (e.g. Reinhard
    RGB and grey + CLAHE: `data_info.input_groups`, the crops cut from the stacked preprocessings) and in
    `data.crops.masked` (the crops then stack the plain views, then the masked ones); each reads its own."""

    stage = "classification"
    may_differ = ("crops", "preprocess")  # crops only in `masked`: checked below

    def __init__(self, members: Sequence[torch.nn.Module], names: Sequence[str] | None = None) -> None:
        super().__init__(members, names)
        crops = [dict(_completed(dict(m.hparams.get("data_info") or {})).get("crops") or {}) for m in members]
        rest = [{k: v for k, v in c.items() if k != "masked"} for c in crops]
        if any(r != rest[0] for r in rest[1:]):
            raise ValueError(
                f"ensemble members disagree on data_info.crops: {crops}; averaging needs classifiers trained on the same crop "
                "geometry (data.crops size / diameters / image_size / mode / center; only `masked` may differ)"
            )
        masked = [bool(c.get("masked", False)) for c in crops]
        self.input_groups, pre_of = preprocess_groups(members)
        # a member's view: (masked?, preprocessing); member_group indexes `views` (evaluation: one DataModule each)
        self.views: list[tuple[bool, int]] = list(dict.fromkeys(zip(masked, pre_of)))
        self.member_group = [self.views.index(v) for v in zip(masked, pre_of)]
        self.both_views = len(set(masked)) > 1
        # what each member reads, in order: travels in export.json, so an export says it too (the model card, and
        # the fine-tuning command predict.py prints, which starts from the first member)
        self.hparams.data_info["member_inputs"] = [{"preprocess": self.input_groups[g].to_dict(), "masked": m} for m, g in zip(masked, pre_of)]
        if self.both_views:
            from wbc.cells import BOTH_VIEWS

            self.hparams.data_info["crops"] = {**crops[0], "masked": BOTH_VIEWS}
            log.info("classifier ensemble over plain and nucleus-masked crops (%d masked of %d): each member sees its own view",
                     sum(masked), len(members))
        if len(self.input_groups) > 1:
            self.hparams.data_info["input_groups"] = [g.to_dict() for g in self.input_groups]
            log.info("classifier ensemble over %d inputs (%s): each member sees its own preprocessing",
                     len(self.input_groups), describe_groups(self.input_groups, pre_of))
        self.temperature = 1.0
        self.review_min_probability = max(float(getattr(m, "review_min_probability", 0.0)) for m in members)
        self.calibration_source = "members' thresholds (no out-of-fold predictions)"

    @property
    def classes(self) -> list[str]:
        return list(self.hparams.data_info.get("classes") or [])

    def group_infos(self) -> list[dict]:
        if len(self.views) == 1:
            return super().group_infos()
        info = {k: v for k, v in self.hparams.data_info.items() if k != "input_groups"}
        return [{**info, "preprocess": self.input_groups[g].to_dict(), "crops": {**info["crops"], "masked": m}} for m, g in self.views]

    def member_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each member's channels of `x`: all of it, or its view of crops that stack every preprocessing
        (wbc.data.transforms.StackedPreprocess) and, with plain and masked members, both views of that."""
        if len(self.views) == 1:
            return [x] * len(self.members)
        sizes = [g.channels for g in self.input_groups]
        want = sum(sizes) * (2 if self.both_views else 1)
        if x.shape[1] != want:
            raise ValueError(f"this classifier ensemble takes {want} channels (its members' inputs {sizes}, stacked"
                             f"{', plain then nucleus-masked: data.crops.masked=both' if self.both_views else ''}; "
                             f"wbc.cells.instance_crops), got {x.shape[1]}")
        offsets = [sum(sizes[:g]) + (sum(sizes) if m else 0) for m, g in self.views]
        chunks = [x[:, o:o + sizes[g]] for o, (_, g) in zip(offsets, self.views)]
        return [chunks[v] for v in self.member_group]

    @torch.no_grad()
    def predict_views(self, x: torch.Tensor) -> torch.Tensor:
        """M x B x C: each member's probabilities (do the folds agree on a cell?)."""
        return torch.stack([m.predict_proba(xi).float() for m, xi in zip(self.members, self.member_inputs(x))])

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        prob = self.predict_views(x).mean(0)
        from wbc.calibration import apply_temperature_torch

        return prob if self.temperature == 1.0 else apply_temperature_torch(prob, self.temperature)

    def calibration(self) -> dict[str, float | str]:
        return {"temperature": self.temperature, "review_min_probability": self.review_min_probability, "fitted_on": self.calibration_source}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict_proba(x)


def calibrate_from_oof(ens: ClassifierEnsemble, ckpts: Sequence[Path]) -> None:
    """The ensemble's temperature and review threshold from its members' out-of-fold predictions
    (each run's val_predictions.csv, written with that member's own calibrated inference: TTA
    included). A crop several members saw (seeds or plain + masked twins of one fold) counts once,
    with those members' probabilities averaged as the ensemble averages them; folds' crops are
    disjoint, so for a fold ensemble this is their pooled predictions. Runs without the file, or
    members that disagree on a crop's class, leave the defaults, logged."""
    import numpy as np

    from wbc.calibration import DEFAULT_COVERAGE, apply_temperature, fit_temperature, review_threshold
    from wbc.evaluation.classification import OOF_FILE, read_predictions_csv
    from wbc.rundir import stage_file

    seen: dict[tuple[str, str], list] = {}  # (sample_id, cell) -> [label, [probability rows]]
    for ckpt in ckpts:
        path = stage_file(run_dir_of(ckpt), OOF_FILE)
        if path is None:
            log.info("ensemble calibration: %s has no %s; temperature 1, members' review thresholds", run_dir_of(ckpt), OOF_FILE)
            return
        tested = tested_checkpoint(path.parent)
        if tested is not None and os.path.realpath(tested) != os.path.realpath(ckpt):
            log.warning("ensemble calibration: %s was written by %s, not by the member given (%s); temperature 1, "
                        "members' review thresholds", path, tested, ckpt)
            return
        classes, rows = read_predictions_csv(path)
        if classes != ens.classes:
            log.warning("ensemble calibration: %s has classes %s, expected %s; not used", path, classes, ens.classes)
            return
        for r in rows:
            label, probs = seen.setdefault((r["sample_id"], r["cell"]), [classes.index(r["true"]), []])
            if label != classes.index(r["true"]):
                log.warning("ensemble calibration: %s calls crop %s/%s %r, another member's file %r; not used",
                            path, r["sample_id"], r["cell"], r["true"], classes[label])
                return
            probs.append([float(r[f"p_{c}"]) for c in classes])
    p = np.asarray([np.mean(probs, axis=0) for _, probs in seen.values()], dtype=np.float32)
    y = np.asarray([label for label, _ in seen.values()])
    ens.temperature = fit_temperature(p, y)
    coverage = float(ens.members[0].hparams.get("review_coverage", DEFAULT_COVERAGE))
    ens.review_min_probability = review_threshold(apply_temperature(p, ens.temperature).max(1), coverage)
    shared = sum(len(probs) > 1 for _, probs in seen.values())
    ens.calibration_source = (f"out-of-fold predictions of {len(ckpts)} runs ({len(y)} crops"
                              + (f", {shared} seen by several members, averaged)" if shared else ")"))
    log.info("ensemble calibration: T=%.3f, review below p=%.3f (%s)", ens.temperature, ens.review_min_probability, ens.calibration_source)


def tested_checkpoint(run: Path) -> Path | None:
    """The checkpoint a run tested and scored its out-of-fold file with (metrics.json's best_checkpoint), or
    None when it does not say."""
    from wbc.rundir import METRICS, best_checkpoint_in, read_metrics

    if not (run / METRICS).is_file():
        return None
    try:
        return best_checkpoint_in(run, read_metrics(run).get("best_checkpoint"))
    except ValueError:
        return None


# ----------------------------------------------------------------------------- members
def checkpoint_stage(path: Path) -> str | None:
    """The stage recorded in a checkpoint file (hyper_parameters.stage)."""
    from lightning_modules.common import load_checkpoint
    from wbc.stages import STAGES

    for stage in STAGES:
        try:
            load_checkpoint(str(path), stage)
            return stage
        except ValueError as err:
            if "checkpoint, expected" not in str(err):
                raise
    return None


def detect_stage(spec: Any) -> str:
    """segmentation or classification, read from the first entry's checkpoint (a pipeline run dir
    counts as segmentation; its classification/ sub-run as classification)."""
    from wbc.stages import STAGES

    paths = expand(spec)
    if not paths:
        raise ValueError("no checkpoint given")
    first = paths[0]
    stage = checkpoint_stage(first if first.is_file() else resolve_checkpoint(first, "segmentation"))
    if stage not in STAGES:
        raise ValueError(f"{first}: cannot tell whether it is a segmentation or a classification run (stage={stage!r})")
    return stage


def member_fold(ckpt: Path) -> int | None:
    """The data.fold a member was trained on (its run's config; a pipeline sub-run: its run's), if known."""
    run = run_dir_of(ckpt)
    cfg = run_config(run) or (run_config(run.parent) if run.name in STAGE_DIRS else {})
    fold = (cfg.get("data") or {}).get("fold")
    return fold if isinstance(fold, int) else None


def member_name(ckpt: Path, index: int) -> str:
    fold = member_fold(ckpt)
    return f"fold{fold}" if fold is not None else f"member{index}"


def member_checkpoints(spec: Any, stage: str, key: str = "ckpt_path") -> list[tuple[str, Path]]:
    """[(name, checkpoint file)] for every member: runs resolve to their best checkpoint (a
    pipeline run to its `<stage>/` sub-run's). Names are `fold<k>` (unique) or `member<i>`."""
    ckpts = [resolve_checkpoint(p, stage, key) for p in expand(spec)]
    names = [member_name(c, i) for i, c in enumerate(ckpts)]
    if len(set(names)) != len(names):
        names = [f"member{i}" for i in range(len(ckpts))]
    return list(zip(names, ckpts))


def load_members(spec: Any, stage: str, key: str = "ckpt_path", device: str | torch.device = "cpu") -> tuple[list[str], list[Path], list[torch.nn.Module]]:
    from wbc.stages import get_stage

    members = member_checkpoints(spec, stage, key)
    modules = [get_stage(stage).load(c, str(device), key) for _, c in members]
    return [n for n, _ in members], [c for _, c in members], modules


def load_models(spec: Any, stage: str, key: str = "ckpt_path", device: str | torch.device = "cpu") -> torch.nn.Module:
    """One module (a single checkpoint or run) or the ensemble of several (a sweep dir or a list)."""
    from wbc.stages import get_stage

    names, ckpts, modules = load_members(spec, stage, key, device)
    if len(modules) == 1:
        return modules[0]
    log.info("%s ensemble of %d checkpoints: %s", stage, len(modules), ", ".join(f"{n}={c}" for n, c in zip(names, ckpts)))
    ens = get_stage(stage).ensemble(modules, names)
    if isinstance(ens, ClassifierEnsemble):
        calibrate_from_oof(ens, ckpts)
    return ens


def has_stage(spec: Any, stage: str) -> bool:
    """Whether the (first) run of spec holds a `stage` model (a segmentation sweep has no classifier)."""
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
