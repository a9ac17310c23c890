"""Shared set-up for the benchmark scripts: quiet library logs, a fixed thread count, and conf/train.yaml
composed as the entry points compose it."""

from __future__ import annotations

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def quiet_torch(threads: int | None) -> int:
    """Silence warnings and Lightning's info logs; set torch's intra-op threads; return the count."""
    import logging
    import warnings

    import lightning  # noqa: F401  (configures its loggers on import; quieted below)
    import torch

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def compose_train(overrides: list[str], config_name: str = "train.yaml"):
    """conf/train.yaml (or another entry point's config) with `overrides`, after the entry points' set-up
    (offline defaults, resolvers, structured configs); Hydra's runtime config is set, so `${hydra:...}`
    interpolations resolve."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from wbc.cli import prepare

    prepare()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)
    return cfg
