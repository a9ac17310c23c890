"""Pieces both LightningModules share: config-built parts, optimizer wiring, safe loading."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from wbc.targets import check_targets


def plain(cfg: Any) -> Any:
    """DictConfig -> plain dict (resolved), so checkpoints hold only primitives (weights-only loadable)."""
    if isinstance(cfg, DictConfig | ListConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def check_encoder_name(cfg: Mapping) -> None:
    """An smp network's `encoder_name` must be an smp encoder or `tu-<timm model>`; smp's own error
    (a KeyError listing every encoder, or timm's "Unknown model") does not name the config key."""
    name = cfg.get("encoder_name")
    target = str(cfg.get("_target_", ""))
    if name is None or not (target.startswith("segmentation_models_pytorch") or target.endswith("networks.smp_net")):
        return
    name = str(name)
    if name.startswith("tu-"):
        import timm

        if not timm.is_model(name[3:]):
            raise ValueError(f"model.net.encoder_name={name!r}: {name[3:]!r} is not a timm model (see timm.list_models())")
        return
    import segmentation_models_pytorch as smp

    known = smp.encoders.get_encoder_names()
    if name not in known:
        raise ValueError(
            f"model.net.encoder_name={name!r} is not an smp encoder; expected one of smp's encoders "
            f"(e.g. {', '.join(known[:4])}, ...; see smp.encoders.get_encoder_names()) or 'tu-<timm model>'"
        )


def build(cfg: Mapping | None, **kwargs: Any) -> Any:
    """Instantiate a `_target_` mapping (None stays None).

    Config errors that already name their key (`model.loss.name=...`) are re-raised as they are,
    without Hydra's InstantiationException wrapper."""
    if cfg is None:
        return None
    cfg = dict(cfg)
    check_encoder_name(cfg)
    try:
        return instantiate(cfg, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, ValueError) and str(cause).startswith("model."):
            raise cause from None
        raise


def configure_optimizers(module: L.LightningModule) -> dict:
    """Optimizer and scheduler come from `_partial_` configs in hparams (LHT convention)."""
    hp = module.hparams
    optimizer = build(hp.optimizer)(params=[p for p in module.parameters() if p.requires_grad])
    if not hp.get("scheduler"):
        return {"optimizer": optimizer}
    scheduler = build(hp.scheduler)(optimizer=optimizer)
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler, "interval": hp.get("scheduler_interval", "epoch"), "monitor": hp.get("scheduler_monitor")},
    }


def load_checkpoint(path: str, expected_stage: str, map_location: str | torch.device = "cpu", key: str = "ckpt_path") -> dict:
    """Load a checkpoint weights-only (no arbitrary unpickling) and check it is the right stage
    (`key`: the setting that named the file, for the errors)."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{key}={path}: file not found")
    with open(p, "rb") as fh:
        head = fh.read(4)
    if head != b"PK\x03\x04" and not head.startswith(b"\x80"):  # torch.save: zip archive (or legacy pickle)
        raise ValueError(f"{key}={path}: not a PyTorch/Lightning checkpoint file (neither a zip archive nor a pickle)")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - turn any unpickling/zip error into one clear message
        raise ValueError(f"{key}={path}: not a loadable Lightning checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ValueError(f"{key}={path}: not a Lightning checkpoint of this project (no state_dict/hyper_parameters)")
    if not isinstance(ckpt["hyper_parameters"], Mapping):
        raise ValueError(f"{key}={path}: hyper_parameters is a {type(ckpt['hyper_parameters']).__name__}, expected a mapping")
    # before anything is built from it: weights-only unpickling does not stop `_target_: os.system`
    check_targets(ckpt["hyper_parameters"], f"{key}={path}", "hyper_parameters")
    stage = ckpt["hyper_parameters"].get("stage")
    if stage != expected_stage:
        raise ValueError(f"{key}={path}: is a {stage!r} checkpoint, expected a {expected_stage!r} one")
    return ckpt


def init_weights_from(model: torch.nn.Module, path: str, stage: str) -> dict:
    """Fine-tuning (`init_from=<.ckpt>`): start from a trained model's weights, with a fresh optimizer,
    schedule and epoch count (`ckpt_path` would continue the old run instead). The checkpoint must be
    this stage's and hold the same network and classes, in the same order; returns its data_info.
    Errors name the weights or classes that differ."""
    ckpt = load_checkpoint(path, stage, key="init_from")
    saved_info = ckpt["hyper_parameters"].get("data_info") or {}
    own_info = getattr(model, "hparams", {}).get("data_info") or {}
    if stage == "classification" and list(saved_info.get("classes") or []) != list(own_info.get("classes") or []):
        raise ValueError(f"init_from={path}: its classes {saved_info.get('classes')} differ from this run's {own_info.get('classes')}; "
                         "fine-tuning keeps the classes of the model it starts from, in its order (data.classes / data.drop_classes)")
    # compared and loaded as plain networks: either side may have been torch.compile'd (model.compile=true)
    state, own_keys = uncompiled_state(ckpt["state_dict"]), {k.replace("._orig_mod.", ".", 1): k for k in model.state_dict()}
    own = {plain: model.state_dict()[k] for plain, k in own_keys.items()}
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    shapes = sorted(f"{k} {tuple(state[k].shape)} -> {tuple(own[k].shape)}" for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        found = [f"{len(missing)} missing ({', '.join(missing[:3])})" if missing else "",
                 f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})" if unexpected else "",
                 f"other shapes: {'; '.join(shapes[:3])}" if shapes else ""]
        raise ValueError(f"init_from={path}: its weights do not fit this run's network ({', '.join(f for f in found if f)}); "
                         "use the model.net settings it was trained with (its name, and grey vs colour input: data.preprocess.grayscale)")
    model.load_state_dict({own_keys[k]: v for k, v in state.items()})
    return dict(saved_info)


# what a resumed run must read as the run it continues: another class order makes each output another class
RESUME_SAME_INPUTS = ("classes", "image_size", "preprocess", "target", "crops")


def check_resume_checkpoint(path: str | None, expected_stage: str, data_info: Mapping | None = None) -> None:
    """Before `trainer.fit(ckpt_path=...)`: the file exists, loads weights-only, is this stage's, holds the
    training state (optimizer, loops) a resume needs and, given this run's `data_info`, was trained on the
    same classes and inputs. Lightning's own errors for the first cases are a bare FileNotFoundError, or a
    state-dict key mismatch deep inside the restore; the last went unnoticed (init_from refuses it)."""
    if not path:
        return
    ckpt = load_checkpoint(path, expected_stage)
    missing = [k for k in ("optimizer_states", "loops", "epoch", "global_step") if k not in ckpt]
    if missing:
        raise ValueError(
            f"ckpt_path={path}: cannot resume training from it: it has no {missing} (saved with "
            "save_weights_only?); resume from a run's checkpoints/last.ckpt"
        )
    if data_info is not None:
        from wbc.data.transforms import Preprocess

        saved = ckpt["hyper_parameters"].get("data_info") or {}
        differ = [f"data_info.{k}: {saved.get(k)!r} -> {data_info.get(k)!r}" for k in RESUME_SAME_INPUTS
                  if k in saved and not Preprocess.same_setting(k, saved.get(k), data_info.get(k))]
        if differ:
            raise ValueError(f"ckpt_path={path}: it was trained with other classes or inputs than this run's ({'; '.join(differ)}): "
                             "a resume continues the same run; start a new one from its weights with init_from=<it>")


def without_pretrained_weights(hparams: Mapping) -> dict:
    """Hyperparameters for rebuilding a trained network: its weights come from the checkpoint, so
    ImageNet weights are not fetched (no download, no `pretrained` extra needed to predict)."""
    hp = dict(hparams)
    hp.pop("threshold", None)  # checkpoints before 0.2 kept it here; it is data_info.postprocess.threshold now
    net = dict(hp.get("net") or {})
    if net.get("pretrained"):
        net["pretrained"] = False
    if net.get("encoder_weights"):
        net["encoder_weights"] = None
    hp["net"] = net
    if hp.get("compile"):  # inference and export run the plain network (torch.compile needs a C compiler, and ONNX refuses it)
        hp["compile"] = False
    return hp


def uncompiled_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A state dict saved from a torch.compile'd network (`net._orig_mod.<...>` keys) for the plain network."""
    return {k.replace("._orig_mod.", ".", 1) if "._orig_mod." in k else k: v for k, v in state.items()}


def module_from_checkpoint(cls: type[L.LightningModule], path: str, stage: str, map_location: str = "cpu", key: str = "ckpt_path") -> L.LightningModule:
    ckpt = load_checkpoint(path, stage, map_location, key)
    module = cls(**without_pretrained_weights(ckpt["hyper_parameters"]))
    module.load_state_dict(uncompiled_state(ckpt["state_dict"]))
    module.eval()
    return module


class BestValidationMetric:
    """Mixin for LightningModules: logs `<metric>_best` (the max so far of a validation metric,
    LHT's `val/acc_best`) and keeps it in the checkpoint, so a resumed run does not forget it
    (torchmetrics states are not saved). Subclasses set `best_of` and call `init_best()`."""

    best_of: str = "val/metric"

    def init_best(self) -> None:
        from torchmetrics import MaxMetric

        self.val_best = MaxMetric()
        self._restored_best: float | None = None

    @property
    def _best_key(self) -> str:  # checkpoint key, e.g. val_dice_best
        return self.best_of.replace("/", "_") + "_best"

    def track_best(self, values: dict) -> None:
        """Call in on_validation_epoch_end with the epoch's computed metrics."""
        current = values[self.best_of]
        if not self.trainer.sanity_checking:
            self.val_best(current)
        best = self.val_best.compute() if self.val_best.update_called else current
        self.log(f"{self.best_of}_best", best, prog_bar=True, sync_dist=True)  # equal on every rank (synced metrics)

    def on_train_start(self) -> None:
        self.val_best.reset()
        if self._restored_best is not None:
            self.val_best.update(torch.tensor(self._restored_best))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.val_best.update_called:
            checkpoint[self._best_key] = float(self.val_best.compute())

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._restored_best = checkpoint.get(self._best_key)

