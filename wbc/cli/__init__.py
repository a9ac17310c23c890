"""Entry points (`wbc-train`, `wbc-evaluate`, `wbc-predict`, `wbc-export`; the top-level train.py ...
are shims to these). Everything with a process-wide effect happens here, when a command starts,
never on import: offline environment defaults (only where the user has not set the variable),
OmegaConf resolvers, and the structured configs Hydra composes (`postprocess/params`)."""

from __future__ import annotations

import os
from dataclasses import field, fields, make_dataclass
from pathlib import Path
from typing import Any, get_type_hints

# the repository root: conf/ lives next to the packages (an editable install, as the README says)
PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = str(PROJECT_ROOT / "conf")


def register_configs() -> None:
    """`postprocess/params`: wbc.postprocess.PostprocessParams as Hydra's schema (its defaults are the
    only copy); `postprocess/checkpoint`: the same keys, all null = "as the segmenter checkpoint has them"."""
    from hydra.core.config_store import ConfigStore

    from wbc.postprocess import PostprocessParams

    cs = ConfigStore.instance()
    hints = get_type_hints(PostprocessParams)
    # a mutable twin (the params themselves are frozen; OmegaConf would make the node read-only)
    schema = make_dataclass("PostprocessParams", [(f.name, hints[f.name], field(default=f.default)) for f in fields(PostprocessParams)])
    cs.store(group="postprocess", name="params", node=schema)
    overrides = make_dataclass("PostprocessOverrides", [(f.name, Any, None) for f in fields(PostprocessParams)])
    cs.store(group="postprocess", name="checkpoint", node=overrides)


def prepare() -> None:
    """What every command does before Hydra composes its config."""
    from wbc.env import apply_offline_defaults
    from wbc.resolvers import register_resolvers

    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))
    apply_offline_defaults()
    register_resolvers()
    register_configs()
