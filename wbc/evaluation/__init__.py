"""Scoring, by stage: segmentation (per-image Dice/IoU at original resolution), classification (per-crop
metrics), the full pipeline (matched cells), and any stage's members as one model or an ensemble."""
