"""Cells flagged for review: the reasons a haematologist should look at a cell before trusting it.

A cell is flagged, with every reason that applies, when
- its calibrated top probability is below the classifier's `review_min_probability` (fitted on
  validation data so that `model.review_coverage` of the validation crops stay unflagged; a
  user's `review.min_probability` wins);
- the views disagree: the test-time flips of one model, or the members of a fold ensemble, do not
  all pick the same class;
- its nucleus touches the image border (the crop and the class may miss part of the cell);
- its nucleus is implausibly small or large for the training data: an equivalent diameter, at the
  network's scale, outside [size_low x q25, size_high x q75] of the training nuclei
  (`data_info.scale`);
- the whole image is unlike the model's training images (wbc.appearance: its colour statistics are
  further from the training images' than `appearance_coverage` of the validation images): every cell
  of it, since a model from another lab's smears is confidently wrong there.
Pure numpy: no Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from wbc.postprocess import Instance


@dataclass(frozen=True)
class ReviewOptions:
    """`review.*` of predict.yaml / serve.yaml. None = the checkpoint's threshold."""

    min_probability: float | None = None
    views_disagree: bool = True
    border: bool = True
    size_low: float = 0.5
    size_high: float = 2.0
    # flag every cell of an image unlike the model's training images (wbc.appearance)
    unlike_training: bool = True
    # that image's colour distance limit, for every training source; None = each source's own (data_info.appearance)
    appearance_threshold: float | None = None

    @classmethod
    def from_config(cls, cfg: Mapping | None) -> ReviewOptions:
        cfg = dict(cfg or {})
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"review: unknown key(s) {sorted(unknown)}; expected {sorted(cls.__dataclass_fields__)}")
        limit = cfg.get("appearance_threshold")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | float) or limit <= 0):
            raise ValueError(f"review.appearance_threshold={limit!r}: expected a positive colour distance, or null for the checkpoint's")
        return cls(**cfg)


def review_reasons(
    class_probs: np.ndarray,
    views: np.ndarray | None,
    instances: Sequence[Instance],
    shape: tuple[int, int],
    classes: Sequence[str],
    min_probability: float,
    diameter_range: tuple[float, float] | None = None,
    px_to_network: float = 1.0,
    options: ReviewOptions = ReviewOptions(),
    appearance: Mapping | None = None,
    confidence: np.ndarray | None = None,
) -> list[list[str]]:
    """One list of plain-language reasons per cell (empty: not flagged).

    class_probs: n x C calibrated probabilities (n x 0 without a classifier); views: V x n x C
    (flips or ensemble members) or None; shape: the image's (H, W); diameter_range: the plausible
    nucleus diameters in network px; px_to_network: image px -> network px for this image;
    appearance: the image's appearance check (CellPipeline.check_appearance) or None; confidence: per cell, the
    calibrated probability the threshold was fitted on when class_probs are not it (a morphology model averaged
    in: the threshold reads the classifier's own top probability, and says so)."""
    h, w = shape
    has_classes = class_probs is not None and np.size(class_probs) > 0
    threshold = options.min_probability if options.min_probability is not None else min_probability
    out: list[list[str]] = []
    for k, inst in enumerate(instances):
        reasons = []
        if has_classes:
            top = float(class_probs[k].max() if confidence is None else confidence[k])
            if threshold and top < threshold:
                reasons.append(f"low {'classifier ' if confidence is not None else ''}confidence ({top:.2f} < {threshold:.2f})")
            if options.views_disagree and views is not None and len(views) > 1:
                picks = sorted({classes[int(i)] for i in np.argmax(views[:, k], axis=1)})
                if len(picks) > 1:
                    reasons.append("views disagree (" + " / ".join(picks) + ")")
        y0, x0, y1, x1 = inst.bbox
        if options.border and (y0 <= 0 or x0 <= 0 or y1 >= h or x1 >= w):
            reasons.append("nucleus touches the image border")
        if diameter_range is not None:
            d = inst.equivalent_diameter * px_to_network
            lo, hi = diameter_range[0] * options.size_low, diameter_range[1] * options.size_high
            if d < lo:
                reasons.append(f"nucleus small for the training data ({d:.0f} < {lo:.0f} network px)")
            elif d > hi:
                reasons.append(f"nucleus large for the training data ({d:.0f} > {hi:.0f} network px)")
        if appearance and appearance.get("unlike_training"):
            reasons.append(f"image unlike the {appearance['model']}'s training images (colour distance "
                           f"{appearance['distance']:.1f} > {appearance['threshold']:.1f})")
        out.append(reasons)
    return out
