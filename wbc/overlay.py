"""Contour overlays: what a person checks first when a Dice number looks wrong."""

from __future__ import annotations

import cv2
import numpy as np

PRED_COLOUR = (255, 40, 40)
TRUE_COLOUR = (40, 220, 40)


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image.astype(np.uint8))


def draw_overlay(image: np.ndarray, pred: np.ndarray | None, truth: np.ndarray | None = None, thickness: int = 1) -> np.ndarray:
    """RGB copy of image with true (green) and predicted (red) mask contours."""
    out = _rgb(image).copy()
    for mask, colour in ((truth, TRUE_COLOUR), (pred, PRED_COLOUR)):
        if mask is None:
            continue
        contours, _ = cv2.findContours(np.asarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, colour, thickness)
    return out


def label_cells(image: np.ndarray, labels: np.ndarray, texts: list[str], boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """Draw each instance contour with a text label (class + probability) next to its box. Text
    size and line width follow the cells' typical size, not the image's (a 2592 x 1944 field keeps
    labels the size of its cells); each contour is traced inside its own box (fast on big fields)."""
    out = _rgb(image).copy()
    sides = [max(y1 - y0, x1 - x0) for y0, x0, y1, x1 in boxes]
    typical = float(np.median(sides)) if sides else 60.0
    scale = float(np.clip(typical / 90.0, 0.35, 1.0))
    width = int(np.clip(round(typical / 40.0), 1, 4))
    h, w = labels.shape[:2]
    for i, (text, (y0, x0, y1, x1)) in enumerate(zip(texts, boxes), start=1):
        ya, xa, yb, xb = max(0, y0 - 1), max(0, x0 - 1), min(h, y1 + 1), min(w, x1 + 1)
        contours, _ = cv2.findContours((labels[ya:yb, xa:xb] == i).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE, offset=(xa, ya))
        cv2.drawContours(out, contours, -1, PRED_COLOUR, width)
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
        org = (int(np.clip(x0, 0, max(0, out.shape[1] - tw))), int(np.clip(y0 - 3, th + 1, out.shape[0] - 2)))  # keep the label inside the image
        cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 2, cv2.LINE_AA)
        cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 0), 1, cv2.LINE_AA)
    return out
