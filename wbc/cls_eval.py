"""Classification scoring helpers: per-crop predictions and metrics from probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_recall,
)

from wbc.io import atomic_write


def classification_report(probs: np.ndarray, labels: np.ndarray, classes: list[str], prefix: str) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1 and per-class recall from probabilities (torchmetrics)."""
    p, t, n = torch.as_tensor(probs, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.long), len(classes)
    out = {
        f"{prefix}/accuracy": float(multiclass_accuracy(p, t, n, average="micro")),
        f"{prefix}/balanced_accuracy": float(multiclass_accuracy(p, t, n, average="macro")),
        f"{prefix}/macro_f1": float(multiclass_f1_score(p, t, n, average="macro")),
    }
    for c, r in zip(classes, multiclass_recall(p, t, n, average=None)):
        out[f"{prefix}/recall/{c}"] = float(r)
    return out


def confusion(probs: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    return multiclass_confusion_matrix(torch.as_tensor(probs).argmax(1), torch.as_tensor(labels, dtype=torch.long), n).numpy()


@torch.no_grad()
def predict_crops(module, dataset, batch_size: int = 64) -> np.ndarray:
    device = next(module.parameters()).device
    out = []
    for start in range(0, len(dataset), batch_size):
        x = torch.stack([dataset[i]["image"] for i in range(start, min(start + batch_size, len(dataset)))]).to(device)
        out.append(module.predict_proba(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(module.classes)))


def write_predictions(path: Path, dataset, probs: np.ndarray, classes: list[str]) -> None:
    header = "sample_id,cell,true,pred," + ",".join(f"p_{c}" for c in classes)
    rows = [
        f"{c.sample_id},{c.cell},{classes[c.label]},{classes[int(np.argmax(p))]}," + ",".join(f"{v:.5f}" for v in p)
        for c, p in zip(dataset.crops, probs)
    ]
    atomic_write(path, lambda f: f.write_text("\n".join([header, *rows]) + "\n"))


def score_classification(cfg: DictConfig):
    """Per-crop test predictions (CSV) next to the run; metrics already come from trainer.test."""

    def _score(model, datamodule, output_dir: Path) -> dict[str, float]:
        ds = datamodule.datasets["test"]
        probs = predict_crops(model, ds)
        write_predictions(output_dir / "test_predictions.csv", ds, probs, model.classes)
        return {"test/n_crops": float(len(ds))}

    return _score
