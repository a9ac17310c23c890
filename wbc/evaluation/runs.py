"""Evaluate what training left behind, on one split: a checkpoint, a run of either stage, a pipeline
run (both stages, then the full pipeline), or a fold ensemble (a sweep dir or a list of runs).

One code path: a single model is an ensemble of one. Each member's probabilities are predicted once;
the members are averaged (an ensemble of one: itself) and scored with the stage's scoring
(wbc.stages.Stage). With more than one member each is scored too (`members/<name>/`) and
`ensemble_summary.json` + `.csv` compare them with their mean and the ensemble.

What the networks saw (input size, preprocessing, target) and how masks become nuclei
(`postprocess`) follow the checkpoints; a non-null `postprocess.<key>` given by the user wins and is
logged. The data is the training run's own (`<run>/.hydra/config.yaml`) unless a data node is given.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from wbc.data.bitdepth import AUTO
from wbc.io import write_json, write_text
from wbc.postprocess import PostprocessParams, checkpoint_postprocess
from wbc.review import ReviewOptions
from wbc.rundir import CONFIG, STAGE_DIRS, is_sweep_dir, run_config, run_dir_of
from wbc.scale import ScaleOptions
from wbc.spreadsheet import guard
from wbc.stages import PIPELINE, Stage, get_stage
from wbc.targets import check_targets
from wbc.tta import tta_count

log = logging.getLogger("wbc")

SPLITS = ("train", "val", "test")


def is_pipeline_run(spec: Any) -> bool:
    """A single pipeline run dir (its stage sub-runs hold checkpoints)."""
    if not isinstance(spec, str | Path) or is_sweep_dir(spec):
        return False
    p = Path(str(spec))
    return p.is_dir() and all((p / s).is_dir() for s in STAGE_DIRS)


def data_config(data: DictConfig | None, run_dir: Path, data_info: Mapping | None) -> DictConfig:
    """The training run's data node (resolved in its own config), unless `data` is given. What the
    network saw (image_size, preprocess, target, the crops' geometry) always follows the checkpoint;
    data.bit_depth is the data's own (a differing one is logged)."""
    if data is not None:
        data_cfg = OmegaConf.create(OmegaConf.to_container(data, resolve=True))
        # the DataModule kind (images or cell crops) follows the run: a pipeline run's stages share `data`
        own = (run_config(run_dir).get("data") or {}).get("_target_")
        if own and data_cfg.get("_target_") != own:
            # the run dir is a file anyone can hand over: its target is checked like its whole data node below
            check_targets({"_target_": own}, str(Path(run_dir) / CONFIG), "data")
            with open_dict(data_cfg):
                data_cfg["_target_"] = own
    else:
        run_cfg = run_config(run_dir)
        if not run_cfg.get("data"):
            raise FileNotFoundError(
                f"{run_dir}: no training config with a data node at .hydra/config.yaml, so the data is unknown; "
                "pass data=<config> (e.g. data=synthetic)"
            )
        data_cfg = OmegaConf.create(OmegaConf.to_container(OmegaConf.create(run_cfg).data, resolve=True))
        # a run dir is a file anyone can hand over: its data node is instantiated, so only allowlisted targets
        check_targets(data_cfg, str(Path(run_dir) / CONFIG), "data")
    from wbc.data.transforms import Preprocess

    for key in ("image_size", "preprocess", "target"):
        if data_info and key in data_info and data_cfg.get(key) != data_info[key]:
            if data is not None and not Preprocess.same_setting(key, data_cfg.get(key), data_info[key]):
                log.warning("data.%s=%s differs from the checkpoint's %s: using the checkpoint's", key, data_cfg.get(key), data_info[key])
            with open_dict(data_cfg):
                data_cfg[key] = data_info[key]
    # the camera bit depth describes the data's files, not the network: another data config's own holds (a file
    # over it is refused), but reading them otherwise than training read its own changes what the network sees
    trained, own = (data_info or {}).get("bit_depth", AUTO), data_cfg.get("bit_depth", AUTO)
    if data is not None and str(own) != str(trained):
        log.warning("data.bit_depth=%s differs from the checkpoint's %s: the data is read at data.bit_depth=%s",
                    own, trained, own)
    # the cell crops' geometry too (ROI side, diameters, centring, mask); their augmentation is training's
    saved = dict((data_info or {}).get("crops") or {})
    own = dict(data_cfg.get("crops") or {})
    differ = {k: v for k, v in saved.items() if own.get(k) != v}
    if differ:
        if data is not None:
            log.warning("data.crops %s differ from the checkpoint's %s: using the checkpoint's",
                        {k: own.get(k) for k in differ}, differ)
        with open_dict(data_cfg):
            data_cfg["crops"] = {**own, **saved}
    return data_cfg


def split_label(split: str, data_cfg: Mapping) -> str:
    """The split as scored, for logs: a combined config's test split with `data.holdout_split=dev`
    is the held-out part's development (training) images, not its test images."""
    holdout, which = data_cfg.get("holdout"), data_cfg.get("holdout_split", "test")
    return f"{split} ({holdout}'s {which} images)" if split == "test" and holdout and which != "test" else split


def apply_tta(modules: list, tta: bool | str | None) -> None:
    """`tta=true|false|dihedral` overrides the checkpoints' own test-time-augmentation setting (None keeps it)."""
    if tta is not None:
        tta_count(tta, "tta")
        for m in modules:
            m.hparams.tta = tta


def evaluate_members(
    stage: Stage, spec: Any, split: str, out_dir: Path, data: DictConfig | None = None,
    post_overrides: Mapping | None = None, num_overlays: int = 0, tta: bool | None = None, device: str = "cpu",
    adapt_bn: Sequence[str] = (),
) -> tuple[dict, dict]:
    """Score the members of `spec` (one or more checkpoints / runs of `stage`) on `split`; with
    the stage's model named in `adapt_bn` (wbc.adaptation.adapt_targets), each member's batch-norm
    statistics are first re-estimated on the split's images (AdaBN, no labels read); returns (metrics, objects)."""
    from wbc.ensemble import load_members
    from wbc.fit import build_datamodule

    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {list(SPLITS)}")
    names, ckpts, modules = load_members(spec, stage.name, "ckpt_path", device)
    apply_tta(modules, tta)
    model = modules[0] if len(modules) == 1 else stage.ensemble(modules, names)  # refuses members trained on other inputs
    if hasattr(model, "calibration") and len(modules) > 1:
        from wbc.ensemble import calibrate_from_oof

        calibrate_from_oof(model, ckpts)
    info = dict(model.hparams.get("data_info") or {})
    post = checkpoint_postprocess(info.get("postprocess"), post_overrides, stage.name)
    # one DataModule per input the members were trained on (one, unless segmenters of different preprocessing or
    # classifiers of plain and masked crops)
    group_of = list(getattr(model, "member_group", [0] * len(modules)))
    infos = model.group_infos() if hasattr(model, "group_infos") else [info]  # e.g. RGB + grey segmenters, masked + plain classifiers
    data_cfgs = [data_config(data, run_dir_of(ckpts[group_of.index(g)]), i) for g, i in enumerate(infos)]
    datamodules = [build_datamodule(c, post) for c in data_cfgs]
    data_cfg, datamodule = data_cfgs[0], datamodules[0]
    if stage.name == "classification":
        # torchmetrics: not on predict.py's import path
        from wbc.evaluation.classification import same_classes

        same_classes(list(getattr(datamodule, "classes", None) or []), list(getattr(model, "classes", None) or []), spec)
    shown = split_label(split, data_cfg)
    log.info("Evaluating %s (%s, %d member(s)) on the %s split of %s -> %s", spec, stage.name, len(modules), shown, data_cfg.get("name"), out_dir)
    caveats = validation_caveats(split, ckpts, modules, model)
    for c in caveats:
        log.warning("%s", c)
    scoring = stage.scoring
    if len(datamodules) > 1:
        ids = [case_ids(scoring.eval_dataset(dm, split)) for dm in datamodules]
        if any(i != ids[0] for i in ids[1:]):
            raise ValueError(f"{spec}: the members' data configs give different {split} images; pass data=<config> for all of them")
    adapted = ADAPT_NAME[stage.name] in adapt_bn
    if adapted:
        for g, dm in enumerate(datamodules):
            adapt_members([m for m, k in zip(modules, group_of) if k == g], scoring.eval_dataset(dm, split), device)
    raws, probs = zip(*(predicted(scoring, m, datamodules[g], split) for m, g in zip(modules, group_of)))
    rows: list[dict] = []
    if len(modules) > 1:
        for n, c, p, r, m in zip(names, ckpts, probs, raws, modules):
            member, _ = scoring.score(datamodule, split, p, out_dir / "members" / n, post, 0, f"{n} ({split})", model=m, **before(r))
            rows.append({"member": n, "checkpoint": str(c), **member})
    raw = None if any(r is None for r in raws) else np.mean(np.stack(raws), axis=0)  # an ensemble's: its members' T = 1 mean
    metrics, summary = scoring.score(datamodule, split, scoring.average(list(probs), model), out_dir, post, num_overlays,
                                     f"{split} ({len(modules)} model(s))", model=model, **before(raw))
    n_items = summary["n_cases"]
    if rows:
        write_ensemble_table(stage, split, rows, metrics, out_dir)
    checkpoint: Any = str(ckpts[0]) if len(ckpts) == 1 else [str(c) for c in ckpts]
    write_json(out_dir / "metrics.json", {**metrics, "n_cases": n_items, "checkpoint": checkpoint, "members": names, "split": split,
                                          "scored_on": shown, "adapt_bn": adapted, **({"caveats": caveats} if caveats else {})})
    OmegaConf.save(data_cfg, out_dir / "data_config.yaml")
    if len(modules) == 1:
        from wbc.plots import plot_learning_curves

        plot_learning_curves(run_dir_of(ckpts[0]) / "csv" / "metrics.csv", out_dir / "learning_curves.png")
    key = f"{split}/{stage.main_metric}"
    print(f"\nEvaluation of {spec} ({stage.name}, {shown}, {n_items} {scoring.UNIT}, original resolution): "
          + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float) and k.count("/") == 1))
    if rows:
        print("\n".join(f"  {r['member']}: {key}={r[key]:.4f}" for r in rows) + f"\n  ensemble: {metrics[key]:.4f}")
    print("".join(f"  caveat: {c}\n" for c in caveats), end="")
    return metrics, {"module": model, "datamodule": datamodule, "summary": summary, "checkpoint": ckpts if len(ckpts) > 1 else ckpts[0],
                     "members": rows, "postprocess": post}


ADAPT_NAME = {"segmentation": "segmenter", "classification": "classifier"}  # stage -> adapt_bn's model name


def predicted(scoring: Any, module: Any, datamodule: Any, split: str) -> tuple[np.ndarray | None, Any]:
    """(probabilities before the temperature or None, those scored) of one member: a classifier's both from
    one forward pass (its scoring's predict_pair), so the "before calibration" figures are exact, not T undone."""
    pair = getattr(scoring, "predict_pair", None)
    return pair(module, datamodule, split) if pair is not None else (None, scoring.predict(module, datamodule, split))


def before(raw: np.ndarray | None) -> dict:
    """score()'s `uncalibrated` argument where there is one (a segmentation scoring takes none)."""
    return {} if raw is None else {"uncalibrated": raw}


def validation_caveats(split: str, ckpts: Sequence[Path], modules: Sequence, model: Any = None) -> list[str]:
    """Why one classifier's calibration figures on a validation split are in-sample, and why an ensemble's figure
    there favours it, when these are its members' own validation
    images: members of other folds trained on them, and classifiers' temperatures were fitted on them (the
    members are averaged calibrated; benchmarks/seed_ensemble.py averages the probabilities before them), as
    were the ensemble's own temperature and review threshold (wbc.ensemble.calibrate_from_oof)."""
    if split != "val":
        return []
    if len(modules) == 1:  # one classifier: its temperature and review threshold were fitted on its validation crops
        t, floor = float(getattr(modules[0], "temperature", 1.0)), float(getattr(modules[0], "review_min_probability", 0.0))
        if t == 1.0 and floor == 0.0:
            return []
        return [f"the checkpoint's temperature (T={t:.3g}) and review threshold ({floor:.3g}) were fitted on its own validation "
                "crops: if these are they, the calibration and review figures are in-sample (the uncalibrated ones and the "
                "classes called are not)"]
    from wbc.ensemble import member_fold

    out = []
    folds = sorted({f for f in (member_fold(c) for c in ckpts) if f is not None})
    if len(folds) > 1:
        out.append(f"members of folds {folds}: each was trained on the others' validation images, so if these are the members' "
                   "own data this figure is not out of fold")
    fitted = getattr(model, "calibration_source", "").startswith("out-of-fold")  # calibrate_from_oof's
    if fitted or any(float(getattr(m, "temperature", 1.0)) != 1.0 for m in modules):
        out.append("the members are averaged after their temperatures, each fitted on its own validation crops, and the "
                   "ensemble's temperature and review threshold on their out-of-fold crops: if these are they, the ensemble's "
                   "figure favours it (benchmarks/seed_ensemble.py averages the probabilities before the temperatures)")
    return out


def case_ids(dataset) -> list:
    """What an evaluation dataset scores, in order: its images, or its cells (image id, cell label)."""
    if hasattr(dataset, "crops"):
        return [(c.sample_id, c.cell) for c in dataset.crops]
    return [it.sample.id for it in dataset.items]


def adapt_members(modules: list, dataset, device: str, batch_size: int = 16, seed: int = 0) -> None:
    """AdaBN of each member on the network-size images of `dataset` (wbc.adaptation), in batches
    of a seeded random order (a manifest is often sorted by class: sorted batches would understate
    the variances)."""
    import torch

    from wbc.adaptation import adapt_batchnorm, batches_of

    order = np.random.default_rng(seed).permutation(len(dataset))
    for m in modules:
        batches = (torch.stack([dataset[i]["image"] for i in order[s]]).to(device) for s in batches_of(len(dataset), batch_size))
        n = adapt_batchnorm(m, batches)
    log.info("adapt_bn: batch-norm statistics of %d member(s) re-estimated on %d images", len(modules), n)


def write_ensemble_table(stage: Stage, split: str, rows: list[dict], metrics: dict, out_dir: Path) -> None:
    """ensemble_summary.json + .csv: one row per member, the members' mean, and the ensemble."""
    keys = list(metrics)
    members_mean = {k: float(np.nanmean([np.nan if r.get(k) is None else r[k] for r in rows])) for k in keys}
    write_json(out_dir / "ensemble_summary.json", {
        "stage": stage.name,
        "split": split,
        "averaging": "arithmetic mean of the members' probabilities, before threshold / post-processing / argmax",
        "members": rows,
        "members_mean": members_mean,
        "ensemble": metrics,
    })
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["member", *keys, "checkpoint"])
    for r in [*rows, {"member": "members_mean", **members_mean}, {"member": "ensemble", **metrics}]:
        writer.writerow([guard(str(r["member"])), *(f"{r[k]:.6g}" if r.get(k) is not None else "" for k in keys), guard(str(r.get("checkpoint", "")))])
    write_text(out_dir / "ensemble_summary.csv", buf.getvalue())


def evaluate_spec(spec: Any, split: str, out_dir: Path, data: DictConfig | None = None, post_overrides: Mapping | None = None,
                  num_overlays: int = 0, tta: bool | None = None, device: str = "cpu", adapt_bn: Sequence[str] = (),
                  morphology: str | None = None, iou_threshold: float | None = None, scale: ScaleOptions | None = None,
                  review: ReviewOptions | None = None) -> tuple[dict, dict]:
    """Any run: a pipeline run dir, or a mapping {"segmentation": run, "classification": run} of two
    separate runs (evaluate.py segmenter=... classifier=...), scores both stages (`<out>/segmentation/`,
    `<out>/classification/`) and, on the test split, the full pipeline; anything else is one stage's
    member(s). With `adapt_bn` (model names) those models first re-estimate their batch-norm
    statistics on the images they are scored on (a stage on the split's images or crops, the
    pipeline as predict.py does). `morphology` (a wbc.morphology model file) is averaged into the
    full pipeline's class probabilities, as predict.py's morphology= does; the stages are scored without it.
    `iou_threshold`: the full pipeline's cell-matching IoU (None: a pipeline run's own
    pipeline.iou_threshold, else 0.5), so a re-scored run matches cells as its training run did.
    `scale` / `review`: the full pipeline's, as predict.py's (`inference_options`; None = their defaults)."""
    from wbc.ensemble import detect_stage

    if spec in (None, ""):
        raise ValueError("ckpt_path is required: python evaluate.py ckpt_path=<run dir, sweep dir or .ckpt file>")
    composed = isinstance(spec, Mapping)
    if morphology and (split != "test" or not (composed or is_pipeline_run(spec))):
        raise ValueError(f"morphology={morphology} acts on the full pipeline, scored on the test split of a pipeline run "
                         "or of segmenter= + classifier=; it is not used by one stage or another split")
    if iou_threshold is not None and (split != "test" or not (composed or is_pipeline_run(spec))):
        raise ValueError(f"iou_threshold={iou_threshold} matches the full pipeline's cells, scored on the test split of a "
                         "pipeline run or of segmenter= + classifier=; it is not used by one stage or another split")
    if not composed and not is_pipeline_run(spec):
        stage = get_stage(detect_stage(spec))
        return evaluate_members(stage, spec, split, out_dir, data, post_overrides, num_overlays, tta, device, adapt_bn)
    metrics: dict = {}
    objects: dict = {}
    for name in STAGE_DIRS:
        m, objects[name] = evaluate_members(get_stage(name), spec[name] if composed else spec, split, out_dir / name, data, post_overrides,
                                            num_overlays, tta, device, adapt_bn)
        metrics.update({f"{name}/{k}": v for k, v in m.items()})
    if split == "test":
        from wbc.evaluation.pipeline import score_pipeline
        from wbc.inference import CellPipeline

        seg, clf = objects["segmentation"]["module"], objects["classification"]["module"]
        pipe = CellPipeline(seg, clf, device, postprocess_overrides=dict(post_overrides or {}), scale=scale, review=review)
        if morphology:
            from wbc.morphology import MorphologyClassifier

            pipe.use_morphology(MorphologyClassifier.load(morphology), str(morphology))
        if iou_threshold is not None:
            iou = float(iou_threshold)
        else:
            iou = 0.5 if composed else float((run_config(Path(str(spec))).get(PIPELINE) or {}).get("iou_threshold", 0.5))
        metrics.update(score_pipeline(pipe, objects["classification"]["datamodule"], out_dir, iou, tuple(adapt_bn)))
    write_json(out_dir / "metrics.json", {**metrics, "split": split, "run": {k: str(v) for k, v in spec.items()} if composed else str(spec)})
    return metrics, objects


def inference_options(cfg: Mapping) -> tuple[ScaleOptions, ReviewOptions]:
    """The scale / tile keys (conf/inference/scale.yaml) and `review.*` (conf/review/, wbc.review.ReviewOptions)
    of an entry point's config: predict.py, serve.py, evaluate.py and a pipeline run's scoring read them here,
    so the pipeline that scores is set up as the one that predicts."""
    node = cfg.get("review")
    review = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    return ScaleOptions.from_config(cfg), ReviewOptions.from_config(review)


def postprocess_overrides(node: Any) -> dict:
    """The user's non-null `postprocess.<key>` values (evaluate.yaml / predict.yaml)."""
    if node is None:
        return {}
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    PostprocessParams.from_config(values)  # unknown keys / bad values: one clear error before any work
    return {k: v for k, v in values.items() if v is not None}

