"""Untrained tiny models and checkpoints for the hardening tests (no training, no dataset read).

`tiny_modules()` builds the configured segmentation and classification modules with the
`data_info` the tiny synthetic DataModule would give them; `save_checkpoint` writes the part of a
Lightning checkpoint that prediction reads; `DiscSegmenter` is a stand-in segmenter that always
"finds" one centred nucleus (for tests that need a cell whatever the weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.fabric.utilities.data import AttributeDict
from omegaconf import DictConfig, OmegaConf, open_dict

from wbc.cells import CropSpec
from wbc.data.transforms import Preprocess
from wbc.postprocess import PostprocessParams

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
TINY = ("data=synthetic_tiny", "logger=csv", "callbacks.rich_progress_bar=null", "extras.print_config=false")


def compose_cfg(config_name: str, overrides: Sequence[str], output_dir: Path, data_dir: Path | None = None) -> DictConfig:
    """Compose conf/<config_name> as the entry point would (any config, e.g. predict.yaml)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir)
        if data_dir is not None:
            cfg.paths.data_dir = str(data_dir)
        del cfg["hydra"]
    return cfg


def data_infos(cfg: DictConfig) -> tuple[dict, dict]:
    """(segmenter, classifier) data_info as the tiny DataModules would record them."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    post = PostprocessParams.from_config(OmegaConf.to_container(cfg.postprocess, resolve=True))
    crops = dict(data["crops"])
    crops.pop("transforms", None)
    spec = CropSpec.from_config(crops)
    seg = {
        "name": data["name"],
        "classes": list(data["classes"]),
        "preprocess": Preprocess.from_config(data["preprocess"]).to_dict(),
        "image_size": data["image_size"],
        "target": data["target"],
        "single_cell": bool(data.get("single_cell", False)),
        "postprocess": post.to_dict(),
        "bit_depth": data.get("bit_depth", "auto"),
    }
    return seg, {**seg, "crops": spec.to_dict(), "image_size": spec.image_size}


def tiny_modules(tmp_path: Path, overrides: Sequence[str] = (), seed: int = 0) -> tuple[L.LightningModule, L.LightningModule]:
    """Untrained (segmentation, classification) modules from the pipeline config on tiny data."""
    cfg = compose_cfg("train.yaml", [*TINY, "experiment=pipeline", *overrides], tmp_path / "cfg", tmp_path / "data")
    seg_info, cls_info = data_infos(cfg)
    torch.manual_seed(seed)
    seg = instantiate(cfg.segmentation.model, data_info=seg_info).eval()
    clf = instantiate(cfg.classification.model, data_info=cls_info).eval()
    return seg, clf


def save_checkpoint(module: L.LightningModule, path: Path, **extra) -> Path:
    """What `lightning_modules.common.load_checkpoint` reads (a real run's file has more keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": L.__version__,
        **extra,
    }
    torch.save(ckpt, path)
    return path


class DiscSegmenter(torch.nn.Module):
    """Predicts one centred disc of radius `radius` (fraction of the side) as nucleus."""

    def __init__(self, data_info: dict, radius: float = 0.25) -> None:
        super().__init__()
        self.hparams = AttributeDict(data_info=data_info, stage="segmentation")
        self.radius = radius

    @torch.no_grad()
    def predict_probability(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        d2 = ((yy - (h - 1) / 2) / h) ** 2 + ((xx - (w - 1) / 2) / w) ** 2
        return (d2 <= self.radius**2).float().expand(b, 1, h, w).clone()


def fixed_morphology_model(classes):
    """A fixed wbc.morphology model on `classes`, listed in reverse order (a pipeline must reorder them)."""
    from wbc.morphology import FEATURES, MorphologyClassifier

    rng = np.random.default_rng(0)
    n_c, n_f = len(classes), len(FEATURES)
    return MorphologyClassifier(tuple(reversed(classes)), FEATURES, np.zeros(n_f), np.ones(n_f), rng.normal(size=(n_c, n_f)), rng.normal(size=n_c))


def assert_saved_average_and_its_temperature(checkpoint: Path, objects: dict) -> None:
    """A run trained with a weight average (callbacks.ema / callbacks.swa): `checkpoint` holds the
    average (not the raw weights), with the temperature fitted on the average's own validation
    probabilities (not an average of earlier epochs'), and the test stage ran that average."""
    from wbc.calibration import fit_temperature

    model = objects["model"]
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    saved, raw = ckpt["state_dict"], ckpt["current_model_state"]
    weights = [k for k in saved if k.startswith("net.") and saved[k].is_floating_point() and saved[k].ndim > 1]
    assert weights and any(not torch.equal(saved[k], raw[k]) for k in weights)
    model.eval()
    with torch.no_grad():
        batches = list(objects["datamodule"].val_dataloader())
        prob = torch.cat([model.probabilities(b["image"], calibrated=False) for b in batches]).numpy()
    label = torch.cat([b["label"] for b in batches]).numpy()
    assert abs(saved["temperature"].item() - fit_temperature(prob, label)) <= 1e-4 * abs(saved["temperature"].item())
    assert abs(float(model.temperature) - saved["temperature"].item()) <= 1e-6
    for k in weights:
        assert torch.equal(model.state_dict()[k].cpu(), saved[k])
