"""Offline-safe environment defaults.

This project must run on machines without internet (CI, clusters behind firewalls). Several
libraries phone home unless told not to; we set the switches here, but never override a value
the user exported themselves.
"""

from __future__ import annotations

import os

OFFLINE_DEFAULTS: dict[str, str] = {
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "WANDB_MODE": "offline",
    "HF_HUB_OFFLINE": "1",
    "WANDB_SILENT": "true",
}


def apply_offline_defaults() -> dict[str, str]:
    """Set the offline defaults the user has not set; return what was set. A user who exports
    `HF_HUB_OFFLINE=0` (or `WANDB_MODE=online`) keeps it: downloads and online logging then work."""
    applied = {}
    for key, value in OFFLINE_DEFAULTS.items():
        if key not in os.environ:
            os.environ[key] = value
            applied[key] = value
    return applied
