"""Callbacks that make dashboards useful: prediction overlays for image-capable loggers."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from wbc.overlay import draw_overlay


class ValidationOverlays(L.Callback):
    """Every n epochs, draw predicted (red) and true (green) nucleus contours on a few validation
    images and send them to wandb / TensorBoard (CSV-only runs skip this)."""

    def __init__(self, num_images: int = 4, every_n_epochs: int = 5) -> None:
        self.num_images = num_images
        self.every_n_epochs = max(1, every_n_epochs)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.num_images <= 0 or trainer.current_epoch % self.every_n_epochs:
            return
        loggers = [lg for lg in trainer.loggers if hasattr(lg, "log_image") or hasattr(getattr(lg, "experiment", None), "add_image")]
        if not loggers or not hasattr(pl_module, "predict_probability"):
            return
        dm = trainer.datamodule
        ds = getattr(dm, "datasets", {}).get("val")
        if ds is None or len(ds) == 0:
            return
        items = [ds[i] for i in range(min(self.num_images, len(ds)))]
        x = torch.stack([it["image"] for it in items]).to(pl_module.device)
        prob = pl_module.predict_probability(x).float().cpu().numpy()[:, 0]
        panels = []
        for it, p in zip(items, prob):
            img = (it["image"].numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
            truth = it["mask"].numpy()
            truth = truth[0] > 0.5 if truth.ndim == 3 else truth == 2
            panels.append(draw_overlay(img, p >= 0.5, truth))
        grid = np.concatenate(panels, axis=1)
        for lg in loggers:
            if hasattr(lg, "log_image"):
                lg.log_image(key="val/overlays", images=[grid], step=trainer.global_step)
            else:
                lg.experiment.add_image("val/overlays", grid, trainer.global_step, dataformats="HWC")


class EpochSeed(L.Callback):
    """Reseed torch/numpy/random at every training epoch start from (seed, epoch).

    Dropout and other in-model randomness then depend only on the epoch, so a run resumed
    from last.ckpt continues exactly as the uninterrupted run would have."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import random

        from datamodules.sampling import item_seed

        s = item_seed(self.seed, trainer.current_epoch, -2)
        torch.manual_seed(s)
        np.random.seed(s % 2**32)
        random.seed(s)
