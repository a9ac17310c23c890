"""`wbc-predict` / `python predict.py input=<image or folder> run=<pipeline run dir>`: image -> nucleus
mask -> cells -> class + probability, for new images.

Writes per image a nucleus mask PNG, a 16-bit instance label PNG, QuPath GeoJSON, an overlay with each
cell's contour, class and probability, the crops (wbc.cell_outputs, the web app's writers too), and
one predictions.csv + predictions.json for all cells (wbc.predict_io: unique output names
per input, rows appended as images finish, one run per output dir). Unreadable images are reported
and skipped. An output dir that already holds results is refused unless `overwrite=true`.
`onnx=<export dir>` runs on onnxruntime and never imports Lightning. `adapt_bn=true` (images from
another lab or microscope) first re-estimates both models' batch-norm statistics on the input images (two extra passes).
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig, OmegaConf

from wbc.cli import CONFIG_DIR, prepare
from wbc.run import extras, task_wrapper

if TYPE_CHECKING:
    from wbc.inference import CellPipeline

log = logging.getLogger("wbc")


def build_pipeline(cfg: DictConfig):
    """The CellPipeline (or its ONNX twin) that `cfg` names, with the user's post-processing and
    bit_depth overrides (null = the checkpoints')."""
    from wbc.evaluation.runs import inference_options, postprocess_overrides
    from wbc.rundir import is_sweep_dir

    overrides = postprocess_overrides(cfg.get("postprocess"))
    scale, review = inference_options(cfg)  # conf/inference/scale.yaml and review.*, as evaluate.py and train.py's pipeline
    if cfg.get("onnx"):  # the models exported by export.py, on onnxruntime
        from wbc.onnx_backend import pipeline_from_export

        given = [k for k in ("run", "ensemble", "segmenter", "classifier") if cfg.get(k)]
        if given:  # the export holds both models: a checkpoint given too would be silently ignored
            raise ValueError(f"onnx={cfg.onnx} and {given[0]}={cfg.get(given[0])} were both given: onnx= runs the export's own models; "
                             f"expected one of them (drop {given[0]}= to run the export, or onnx= to run the checkpoints)")

        pipe = pipeline_from_export(cfg.onnx, cfg.device, overrides, scale=scale, review=review, bit_depth=cfg.get("bit_depth"))
        return with_morphology(pipe, cfg.get("morphology"))
    runs = cfg.get("ensemble") or cfg.run  # a run dir, or a sweep dir of fold runs / a list (fold ensemble)
    segmenter = cfg.segmenter or runs
    classifier = cfg.classifier or runs
    if segmenter is None:
        raise ValueError(
            "predict.py needs run=<pipeline run dir>, ensemble=<sweep dir of fold runs>, segmenter=<checkpoint> or onnx=<export.py dir>"
        )
    from wbc.ensemble import has_stage
    from wbc.inference import CellPipeline

    from_sweep = runs is not None and (cfg.get("ensemble") or is_sweep_dir(str(runs)))
    if cfg.classifier is None and from_sweep and not has_stage(runs, "classification"):
        log.info("%s holds no classifier: nucleus masks and crops only (add classifier=<run, sweep dir or ckpt>)", runs)
        classifier = None
    pipe = CellPipeline.from_checkpoints(segmenter, classifier, cfg.device, overrides, scale, review, cfg.get("bit_depth"))
    return with_morphology(pipe, cfg.get("morphology"))


def with_morphology(pipe, path: str | None):
    """The pipeline with `morphology=<model.json>` averaged into its class probabilities (if given; it
    replaces one an ONNX export carries, and says so)."""
    if path:
        from wbc.morphology import MorphologyClassifier

        if getattr(pipe, "morphology_source", None):
            log.info("morphology=%s replaces the export's morphology model %s", path, pipe.morphology_source)
        pipe.use_morphology(MorphologyClassifier.load(path), str(path))
    return pipe


@task_wrapper
def predict(cfg: DictConfig) -> tuple[dict, dict]:
    from wbc.adaptation import adapt_targets
    from wbc.cells import CropSpec
    from wbc.predict_io import check_output_dir, list_inputs, predict_images, readable_images

    files = list_inputs(cfg.input)
    out_dir = Path(cfg.paths.output_dir)
    overwrite = bool(cfg.get("overwrite", False))
    check_output_dir(out_dir, overwrite)  # before loading the models; predict_images checks again under its lock
    targets = adapt_targets(cfg.get("adapt_bn"))  # before the models load: a bad value is one clear error
    pipe = build_pipeline(cfg)
    if cfg.get("crops"):
        pipe.crop_spec = CropSpec.from_config({**pipe.crop_spec.to_dict(), **OmegaConf.to_container(cfg.crops, resolve=True)})
    if targets:  # AdaBN: batch-norm statistics from these images first (extra passes)
        pipe.adapt_batchnorm(lambda: readable_images(files, cfg.max_file_mb, cfg.get("max_pixels"), pipe.bit_depth), models=targets)
    rows, failures = predict_images(pipe, files, out_dir, cfg.max_file_mb, cfg.save_crops, cfg.get("max_pixels"), overwrite=overwrite)
    msg = f"{len(files) - len(failures)} image(s) -> {len(rows)} cell(s) in {out_dir}"
    if failures:
        msg += f"; {len(failures)} skipped: " + ", ".join(Path(f["image"]).name for f in failures)
    log.info(msg)
    print(msg)
    if (cfg.get("pseudo_dataset") or {}).get("per_class") is not None:
        pseudo_dataset(cfg, out_dir, overwrite, pipe)
    if (cfg.get("annotated_dataset") or {}).get("annotations"):
        annotated_dataset(cfg, out_dir, overwrite, pipe)
    return {"cells": len(rows), "failed": len(failures)}, {"pipeline": pipe}


def pseudo_dataset(cfg: DictConfig, out_dir: Path, overwrite: bool, pipe: CellPipeline) -> dict:
    """`pseudo_dataset.per_class=K`: the labelled set of the classifier's surest calls (wbc.data.pseudo_labels),
    and the command that fine-tunes the classifier on it."""
    from wbc.data.pseudo_labels import DATASET_DIR, write_pseudo_dataset

    record = write_pseudo_dataset(out_dir, cfg.pseudo_dataset.per_class, cfg.pseudo_dataset.get("context", 4.0), overwrite, pipe.bit_depth)
    head = f"pseudo_dataset: {record['cells']} of {record['of_cells']} cells labelled with the classifier's own calls"
    # the labels are the model's own calls: only cells labelled by eye can tell whether fine-tuning helped
    check = (f"then predict again with the fine-tuned classifier and check both runs on cells you label yourself:\n"
             f"  python compare.py runs=[{out_dir},<the new predict dir>]")
    return fine_tune_message(cfg, out_dir / DATASET_DIR, pipe, record, head, check)


def annotated_dataset(cfg: DictConfig, out_dir: Path, overwrite: bool, pipe: CellPipeline) -> dict:
    """`annotated_dataset.annotations=<labels.csv>`: the lab's labelled points as a training set of their
    cells (wbc.data.cell_dataset), and the command that fine-tunes the classifier on it."""
    from wbc.data.cell_dataset import ANNOTATED_DIR, write_annotated_dataset

    spec = cfg.annotated_dataset
    record = write_annotated_dataset(out_dir, spec.annotations, spec.get("context", 4.0), overwrite, float(spec.get("match_margin", 0.5)),
                                     int(spec.get("seed", 0)), pipe.bit_depth)
    head = f"annotated_dataset: {record['cells']} cells with your labels from {spec.annotations}"
    if record["not_found"]:
        rows = ", ".join(str(p["row"]) for p in record["not_found"][:10])
        log.warning("annotated_dataset: %d labelled point(s) are on no cell this run found (%s%s); they are not in the set "
                    "(listed in annotated_dataset.json)", len(record["not_found"]), rows, ", ..." if len(record["not_found"]) > 10 else "")
        head += f" ({len(record['not_found'])} point(s) on no found cell left out)"
    check = ("then score the fine-tuned model on other labelled cells than these (python compare.py runs=[<before>,<after>] "
             "annotations=<held-out labels>)")
    return fine_tune_message(cfg, out_dir / ANNOTATED_DIR, pipe, record, head, check, morphology=True)


# a cell dataset's masks are nuclei this predict already post-processed: taken as they are (the default 30 px
# minimum and 5 px opening, made for probability maps, dropped small nuclei and stopped the printed command)
AS_DRAWN = ("postprocess.min_area=0", "postprocess.opening_kernel=0", "postprocess.watershed=false")


def fine_tune_message(cfg: DictConfig, dataset: Path, pipe: CellPipeline, record: dict, head: str, check: str, morphology: bool = False) -> dict:
    """Print (and log) what a cell dataset holds and the `train.py` command that fine-tunes the classifier on
    it (with `morphology`, also the `fit_morphology.py` command that fits the nucleus-morphology model on the
    same cells: the lab's own labels, not the model's calls), or, when a class has no cell (fine-tuning keeps
    every class), which classes are missing."""
    from wbc.data.bitdepth import AUTO
    from wbc.data.cell_dataset import SPLITS_FILE
    from wbc.rundir import as_overrides

    members, shipped, choices = fine_tune_start(cfg)
    # the fine-tuning rebuilds its network and sees the pixels and crops it was trained with (as this predict used them)
    inputs = fine_tune_inputs(pipe)
    if getattr(pipe, "bit_depth", AUTO) != AUTO:  # the cut cells are 8-bit (unaffected); the new classifier records it
        inputs.append(f"data.bit_depth={pipe.bit_depth}")
    split = dataset / SPLITS_FILE  # every labelled cell trains but a few (wbc.data.cell_dataset.held_out_split)
    data = ["data=folder", "data.layout=csv", f"data.root={dataset}", *([f"data.splits.file={split}"] if split.is_file() else []),
            f"data.classes=[{','.join(pipe.classes)}]", *AS_DRAWN]
    command = shlex.join(["python", "train.py", *choices, *data, *inputs, f"init_from={shipped or '<the classifier run>'}"])
    # the morphology model measures the raw image: only the cell finding (data.crops) has to match
    fit = shlex.join(["python", "fit_morphology.py", *data, *as_overrides("data.crops", pipe.crop_spec.to_dict()), "fit_on=train+val"])
    msg = f"{head} ({', '.join(f'{c} {n}' for c, n in record['counts'].items())}) in {dataset}"
    never = [c for c, n in record["counts"].items() if not n]
    if never:  # fine-tuning keeps the classifier's classes, and a class without images is refused
        msg += (f"; no cell is labelled {never}, and fine-tuning needs every class ({pipe.classes}): predict more images "
                "(with adapt_bn=classifier), or label a few cells of those classes")
        log.warning(msg)
    else:
        msg += f"; fine-tune with\n  {command}"
        if len(members) > 1:
            msg += f"\n  ({len(members)} models: fine-tune each with its own init_from=<member>)"
        if morphology:
            msg += f"\nand/or fit the nucleus-morphology model on the same cells (predict.py ... morphology=<its morphology.json>) with\n  {fit}"
        msg += f"\n  {check}"
        log.info(msg)
    print(msg)
    return {**record, "command": None if never else command, **({"fit_morphology_command": None if never else fit} if morphology else {})}


def fine_tune_inputs(pipe: CellPipeline) -> list[str]:
    """The overrides that give the fine-tuning the pixels and crops its starting network was trained on: the
    first member's preprocessing and crop view for an ensemble, checkpoints or export (whose crops stack every
    member's inputs: data_info.member_inputs says which is whose)."""
    from wbc.cells import BOTH_VIEWS
    from wbc.data.transforms import Preprocess, StackedPreprocess
    from wbc.rundir import as_overrides

    pre, crops = pipe.cls_pre, pipe.crop_spec.to_dict()
    info = dict(getattr(getattr(pipe.classifier, "hparams", None), "data_info", None) or {})
    first = (info.get("member_inputs") or [None])[0]
    if isinstance(first, dict):
        pre, crops["masked"] = Preprocess.from_config(first.get("preprocess")), bool(first.get("masked", False))
    elif isinstance(pre, StackedPreprocess) or crops.get("masked") == BOTH_VIEWS:  # an export made before member_inputs
        log.warning("the classifier ensemble does not record which input its first member read (data_info.member_inputs): the "
                    "fine-tuning command assumes the first input group on plain crops; check it against that run's data.preprocess")
        pre = pre.parts[0] if isinstance(pre, StackedPreprocess) else pre
        crops["masked"] = False
    return [*as_overrides("data.preprocess", pre.to_dict()), *as_overrides("data.crops", crops)]


def fine_tune_start(cfg: DictConfig) -> tuple[list[Path], str | None, list[str]]:
    """(the classifier's members, the one to start from, the choices that rebuild its network). An ensemble
    starts from its first member; each member can be fine-tuned on the ensemble's labels alike (the README's
    seed-ensemble recipe). Choices from its run's job.json, else `experiment=classify` alone."""
    from wbc.rundir import expand, model_choices, override_key, resolve_checkpoint, run_dir_of

    members = expand(cfg.get("classifier") or cfg.get("ensemble") or cfg.get("run"))
    shipped, choices = (str(members[0]) if members else None), None
    if shipped:
        try:
            ckpt = resolve_checkpoint(shipped, "classification", key="classifier")
            choices = model_choices(ckpt)
        except (FileNotFoundError, ValueError):
            choices = None
        try:
            checked_choices(choices or [], f"{run_dir_of(ckpt)}/job.json" if choices else "")
        except ValueError as err:  # a received run's job.json must not make the printed command run code
            log.warning("%s: the fine-tuning command names only experiment=classify", err)
            choices = None
    if not any(override_key(c) in ("experiment", "stage") for c in choices or []):
        choices = ["experiment=classify", *(choices or [])]
    return members, shipped, choices


def checked_choices(overrides: list[str], where: str) -> None:
    """The overrides a received run recorded, parsed as Hydra will parse the printed command: a
    `_target_` outside the allowlist (`+model.loss={_target_:torch.load,...}`) is refused
    (wbc.targets.check_targets, UnsafeConfigError naming `where`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from wbc.targets import check_targets

    parser = OverridesParser.create()
    for text in overrides:
        try:
            override = parser.parse_override(text)
        except Exception as err:  # noqa: BLE001 - Hydra's grammar errors: say which override
            raise ValueError(f"{where}: override {text!r} does not parse ({err})") from err
        key = override.key_or_group
        value = None if override.is_delete() else override.value()
        node: dict = {"_target_": value} if key.split(".")[-1] == "_target_" else {key: value}
        check_targets(node, where, key.rsplit(".", 1)[0] if key.endswith("_target_") else "")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict.yaml")
def run(cfg: DictConfig) -> None:
    extras(cfg)
    predict(cfg)


def main() -> None:
    """Console script `wbc-predict` (and `python predict.py`)."""
    prepare()
    run()
