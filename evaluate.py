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
            raise NotImplementedError(
                f"ckpt_path={ckpt_path} is a sweep dir with {len(runs)} runs: fold ensembles: see issue 5. "
                "For now pass one run dir or one .ckpt file."
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
    from wbc.fit import build_datamodule
    from wbc.io import write_json
    from wbc.plots import plot_learning_curves
    from wbc.seg_eval import evaluate_segmentation, headline

    ckpt = resolve_checkpoint(ckpt_argument(cfg))
    if cfg.split not in SPLITS:
        raise ValueError(f"split={cfg.split!r}: expected one of {list(SPLITS)}")
    L.seed_everything(cfg.seed, workers=True)
    module = module_from_checkpoint(SegmentationModule, str(ckpt), "segmentation")
    module = module.to(eval_device(cfg))
    run_dir = run_dir_of(ckpt)
    data_cfg = data_config(cfg, run_dir, module.hparams.get("data_info"))
    datamodule = build_datamodule(data_cfg)
    out_dir = Path(cfg.paths.output_dir)
    log.info("Evaluating %s on the %s split of %s -> %s", ckpt, cfg.split, data_cfg.get("name"), out_dir)
    summary = evaluate_segmentation(module, datamodule, cfg.split, cfg.get("postprocess"), out_dir, cfg.num_overlays)
    curves = plot_learning_curves(run_dir / "csv" / "metrics.csv", out_dir / "learning_curves.png")
    if curves is None:
        log.info("No %s: learning curves not drawn", run_dir / "csv" / "metrics.csv")
    metrics = headline(summary, cfg.split)
    write_json(out_dir / "metrics.json", {**metrics, "n_cases": summary["n_cases"], "checkpoint": str(ckpt), "split": cfg.split})
    OmegaConf.save(data_cfg, out_dir / "data_config.yaml")
    shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
    print(f"\nEvaluation of {ckpt} ({cfg.split}, {summary['n_cases']} images, original resolution): {shown}")
    return metrics, {"module": module, "datamodule": datamodule, "summary": summary, "checkpoint": ckpt}


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate.yaml")
def main(cfg: DictConfig) -> None:
    if ckpt_argument(cfg) in (None, ""):  # before extras prints the config (which would fail on `???`)
        resolve_checkpoint(None)
    extras(cfg)
    evaluate(cfg)


if __name__ == "__main__":
    main()
