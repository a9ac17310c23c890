"""Score a trained segmentation checkpoint: `python evaluate.py ckpt_path=<run dir | .ckpt> [split=val] [data=...]`.

A run dir resolves to its best checkpoint (metrics.json's `best_checkpoint`, else
checkpoints/last.ckpt). The data config is the training run's own (`<run>/.hydra/config.yaml`)
unless `data=...` is given. Writes to this run's output dir: summary.json (per-case, means,
per-class means), masks/, overlays/, learning_curves.png (of the training run) and metrics.json.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
import lightning as L  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402

import wbc  # noqa: E402,F401  (offline defaults + config resolvers)
from wbc.run import extras, log, task_wrapper  # noqa: E402

SPLITS = ("train", "val", "test")


def _is_run_dir(path: Path) -> bool:
    return any((path / name).exists() for name in ("checkpoints", "metrics.json", ".hydra"))


def resolve_checkpoint(ckpt_path: str | None) -> Path:
    """ckpt_path (a .ckpt file, a run dir, or a sweep dir) -> the checkpoint file to load.

    A run dir gives its best checkpoint (metrics.json's best_checkpoint, else checkpoints/last.ckpt;
    a pipeline run dir, its segmentation sub-run's)."""
    from wbc.checkpoints import resolve_checkpoint as resolve_run_checkpoint

    if ckpt_path in (None, ""):
        raise ValueError("ckpt_path is required: python evaluate.py ckpt_path=<run dir or .ckpt file>")
    path = Path(str(ckpt_path)).expanduser()
    if path.is_dir() and not _is_run_dir(path):
        runs = sorted(d for d in path.iterdir() if d.is_dir() and _is_run_dir(d))
        if len(runs) > 1:
            raise ValueError(
                f"ckpt_path={ckpt_path} is a sweep dir with {len(runs)} runs: a fold ensemble, scored by evaluate() "
                "(python evaluate.py ckpt_path=<sweep dir>), not one checkpoint"
            )
        if not runs:
            raise FileNotFoundError(f"ckpt_path={ckpt_path}: not a checkpoint file, a run dir or a sweep dir")
        path = runs[0]
    return resolve_run_checkpoint(path, "segmentation", "ckpt_path")


def ckpt_argument(cfg: DictConfig) -> str | None:
    """cfg.ckpt_path, or None when it is left at `???` or absent."""
    return None if "ckpt_path" not in cfg or OmegaConf.is_missing(cfg, "ckpt_path") else cfg.ckpt_path


def run_dir_of(ckpt: Path) -> Path:
    """Checkpoints live at <run>/checkpoints/x.ckpt."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def data_config(cfg: DictConfig, run_dir: Path, data_info: dict | None) -> DictConfig:
    """The training run's data node (resolved in its own config), unless `data=...` was given.

    What the network saw (input size, preprocessing, target) always follows the checkpoint."""
    if cfg.get("data") is not None:
        data_cfg = OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))
    else:
        # Hydra's copy of the run config; else the resolved copy the CSV logger kept (pipeline sub-runs)
        candidates = [run_dir / ".hydra" / "config.yaml", run_dir / "csv" / "hparams.yaml"]
        run_cfgs = [OmegaConf.load(c) for c in candidates if c.is_file()]
        run_cfgs = [c for c in run_cfgs if isinstance(c, DictConfig) and c.get("data") is not None]
        if not run_cfgs:
            raise FileNotFoundError(
                f"ckpt_path={cfg.ckpt_path}: no training config with a data node at {candidates[0]} (or "
                f"{candidates[1].name}), so the data is unknown; pass data=<config> (e.g. data=synthetic)"
            )
        # resolved inside the run's own config: its paths.data_dir and seed
        data_cfg = OmegaConf.create(OmegaConf.to_container(run_cfgs[0].data, resolve=True))
    for key in ("image_size", "preprocess", "target"):
        if data_info and key in data_info and data_cfg.get(key) != data_info[key]:
            if cfg.get("data") is not None:
                log.warning("data.%s=%s differs from the checkpoint's %s: using the checkpoint's", key, data_cfg.get(key), data_info[key])
            with open_dict(data_cfg):
                data_cfg[key] = data_info[key]
    return data_cfg


def post_config(cfg: DictConfig, data_cfg: DictConfig) -> dict:
    """`postprocess`, with `clear_border: null` taken from the evaluated data (as training did)."""
    post = dict(OmegaConf.to_container(cfg.get("postprocess") or {}, resolve=True))
    if post.get("clear_border") is None:
        post["clear_border"] = bool(OmegaConf.select(data_cfg, "crops.instance_params.clear_border", default=False))
    return post


def apply_tta(cfg: DictConfig, modules: list) -> None:
    """`tta=true|false` overrides the checkpoints' own test-time-flip setting (null keeps it)."""
    if cfg.get("tta") is None:
        return
    for m in modules:
        m.hparams.tta = bool(cfg.tta)


def eval_device(cfg: DictConfig) -> torch.device:
    accelerator = str((cfg.get("trainer") or {}).get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


@task_wrapper
def evaluate(cfg: DictConfig) -> tuple[dict, dict]:
    """Load the checkpoint, score the split at original resolution; returns (metrics, objects)."""
    from lightning_modules.common import module_from_checkpoint
    from lightning_modules.segmentation import SegmentationModule
    from wbc.ensemble import expand, is_sweep_dir
    from wbc.fit import build_datamodule
    from wbc.io import write_json
    from wbc.plots import plot_learning_curves
    from wbc.seg_eval import evaluate_segmentation, headline

    spec = ckpt_argument(cfg)
    if cfg.split not in SPLITS:
        raise ValueError(f"split={cfg.split!r}: expected one of {list(SPLITS)}")
    if spec not in (None, "") and (not isinstance(spec, str) or is_sweep_dir(spec)):
        members = expand(spec)  # a list, or a sweep dir's finished runs
        if len(members) > 1:
            return evaluate_ensemble(cfg, spec)
        spec = str(members[0]) if members else None
    ckpt = resolve_checkpoint(spec)
    L.seed_everything(cfg.seed, workers=True)
    module = module_from_checkpoint(SegmentationModule, str(ckpt), "segmentation")
    apply_tta(cfg, [module])
    module = module.to(eval_device(cfg))
    run_dir = run_dir_of(ckpt)
    data_cfg = data_config(cfg, run_dir, module.hparams.get("data_info"))
    datamodule = build_datamodule(data_cfg)
    out_dir = Path(cfg.paths.output_dir)
    log.info("Evaluating %s on the %s split of %s -> %s", ckpt, cfg.split, data_cfg.get("name"), out_dir)
    summary = evaluate_segmentation(module, datamodule, cfg.split, post_config(cfg, data_cfg), out_dir, cfg.num_overlays)
    curves = plot_learning_curves(run_dir / "csv" / "metrics.csv", out_dir / "learning_curves.png")
    if curves is None:
        log.info("No %s: learning curves not drawn", run_dir / "csv" / "metrics.csv")
    metrics = headline(summary, cfg.split)
    write_json(out_dir / "metrics.json", {**metrics, "n_cases": summary["n_cases"], "checkpoint": str(ckpt), "split": cfg.split})
    OmegaConf.save(data_cfg, out_dir / "data_config.yaml")
    shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
    print(f"\nEvaluation of {ckpt} ({cfg.split}, {summary['n_cases']} images, original resolution): {shown}")
    return metrics, {"module": module, "datamodule": datamodule, "summary": summary, "checkpoint": ckpt}


def evaluate_ensemble(cfg: DictConfig, spec) -> tuple[dict, dict]:
    """A fold ensemble (a sweep dir of fold runs, or a list of runs / checkpoints) on one split:
    each member alone, then the ensemble (probabilities averaged over members, then thresholded and
    post-processed as for one model). Writes `members/<name>/summary.json` per member, the
    ensemble's summary.json (+ masks/, overlays/) at the top, `ensemble_summary.json` + `.csv` (one
    row per member, their mean, and the ensemble) and metrics.json (the ensemble's figures)."""
    import numpy as np

    from wbc.ensemble import ENSEMBLES, detect_stage, load_members
    from wbc.fit import build_datamodule
    from wbc.io import write_json, write_text

    stage = detect_stage(spec)
    L.seed_everything(cfg.seed, workers=True)
    names, ckpts, modules = load_members(spec, stage, "ckpt_path")
    apply_tta(cfg, modules)
    device = eval_device(cfg)
    ensemble = ENSEMBLES[stage]([m.to(device) for m in modules], names)  # refuses members trained on other inputs
    run_dir = run_dir_of(ckpts[0])
    data_cfg = data_config(cfg, run_dir, ensemble.hparams.data_info)
    datamodule = build_datamodule(data_cfg)
    datamodule.setup()
    out_dir = Path(cfg.paths.output_dir)
    split = cfg.split
    dataset = datamodule.datasets[split]
    if split == "train":  # scored without the training augmentation
        dataset = datamodule.make_dataset("eval", dataset.items)
    log.info("Evaluating a %s ensemble of %d on the %s split of %s -> %s", stage, len(modules), split, data_cfg.get("name"), out_dir)
    rows: list[dict] = []
    if stage == "segmentation":
        from wbc.seg_eval import evaluate_segmentation, headline, predict_probabilities

        post = post_config(cfg, data_cfg)
        probs = {n: predict_probabilities(m, dataset) for n, m in zip(names, modules)}
        for n, c in zip(names, ckpts):
            member = evaluate_segmentation(modules[names.index(n)], datamodule, split, post, out_dir / "members" / n, 0, probabilities=probs[n])
            rows.append({"member": n, "checkpoint": str(c), **headline(member, split)})
        mean_probs = [np.mean([probs[n][i] for n in names], axis=0) for i in range(len(dataset))]
        summary = evaluate_segmentation(ensemble, datamodule, split, post, out_dir, cfg.num_overlays, probabilities=mean_probs)
        metrics = headline(summary, split)
        n_items = summary["n_cases"]
    else:
        from wbc.cls_eval import classification_report, confusion, predict_crops, write_predictions
        from wbc.plots import plot_confusion

        classes = ensemble.classes
        labels = np.asarray([c.label for c in dataset.crops])
        probs = {n: predict_crops(m, dataset) for n, m in zip(names, modules)}

        def _score(p: np.ndarray, where: Path, title: str) -> dict:
            report = classification_report(p, labels, classes, split)
            matrix = confusion(p, labels, len(classes))
            write_predictions(where / "predictions.csv", dataset, p, classes)
            plot_confusion(matrix, classes, where / "confusion.png", title)
            write_json(where / "summary.json", {"split": split, "n_crops": len(labels), "classes": classes, "metrics": report, "confusion": matrix})
            return report

        for n, c in zip(names, ckpts):
            rows.append({"member": n, "checkpoint": str(c), **_score(probs[n], out_dir / "members" / n, f"{n} ({split})")})
        metrics = _score(np.mean([probs[n] for n in names], axis=0), out_dir, f"fold ensemble ({split})")
        summary = {"n_crops": len(labels), "metrics": metrics}
        n_items = len(labels)
    keys = list(metrics)
    members_mean = {k: float(np.nanmean([np.nan if r.get(k) is None else r[k] for r in rows])) for k in keys}
    table = {
        "stage": stage,
        "split": split,
        "averaging": "arithmetic mean of the members' probabilities, before threshold / post-processing / argmax",
        "members": rows,
        "members_mean": members_mean,
        "ensemble": metrics,
    }
    write_json(out_dir / "ensemble_summary.json", table)
    header = ["member", *keys, "checkpoint"]
    lines = [",".join(header)]
    for r in [*rows, {"member": "members_mean", **members_mean}, {"member": "ensemble", **metrics}]:
        lines.append(",".join([r["member"], *(f"{r[k]:.6g}" if r.get(k) is not None else "" for k in keys), r.get("checkpoint", "")]))
    write_text(out_dir / "ensemble_summary.csv", "\n".join(lines) + "\n")
    write_json(out_dir / "metrics.json", {**metrics, "n_cases": n_items, "checkpoint": [str(c) for c in ckpts], "members": names, "split": split})
    OmegaConf.save(data_cfg, out_dir / "data_config.yaml")
    main_key = f"{split}/dice_post" if stage == "segmentation" else f"{split}/macro_f1"
    shown = "\n".join(f"  {r['member']}: {main_key}={r[main_key]:.4f}" for r in rows)
    print(f"\nFold ensemble of {len(rows)} ({split}, {n_items} {'images' if stage == 'segmentation' else 'crops'}):\n{shown}\n"
          f"  members' mean: {members_mean[main_key]:.4f}\n  ensemble: {metrics[main_key]:.4f}")
    return metrics, {"module": ensemble, "datamodule": datamodule, "summary": summary, "checkpoint": ckpts, "members": rows}


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate.yaml")
def main(cfg: DictConfig) -> None:
    if ckpt_argument(cfg) in (None, ""):  # before extras prints the config (which would fail on `???`)
        resolve_checkpoint(None)
    extras(cfg)
    evaluate(cfg)


if __name__ == "__main__":
    main()
