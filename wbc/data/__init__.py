"""Pure data code: image I/O, manifests, splits, the synthetic smear generator, transforms (no Lightning, no Hydra)."""
