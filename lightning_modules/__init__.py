"""LightningModules: nucleus segmentation and cell classification."""
