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
    only copy); `postprocess/checkpoint`: the same keys, all null = "as the segmenter checkpoint has them";
    `review/params`: wbc.review.ReviewOptions likewise (predict.py and serve.py's `review.*`)."""
    from hydra.core.config_store import ConfigStore

    from wbc.postprocess import PostprocessParams
    from wbc.review import ReviewOptions

    cs = ConfigStore.instance()
    cs.store(group="postprocess", name="params", node=mutable_twin(PostprocessParams))
    overrides = make_dataclass("PostprocessOverrides", [(f.name, Any, None) for f in fields(PostprocessParams)])
    cs.store(group="postprocess", name="checkpoint", node=overrides)
    cs.store(group="review", name="params", node=mutable_twin(ReviewOptions))


def mutable_twin(cls: type) -> type:
    """The same fields, types and defaults in a dataclass that is not frozen: OmegaConf makes a frozen
    dataclass's node read-only, so no `key=value` override could reach it."""
    hints = get_type_hints(cls)
    return make_dataclass(cls.__name__, [(f.name, hints[f.name], field(default=f.default)) for f in fields(cls)])


def prepare() -> None:
    """What every command does before Hydra composes its config."""
    from wbc.env import apply_offline_defaults
    from wbc.resolvers import register_resolvers

    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))
    apply_offline_defaults()
    register_resolvers()
    register_configs()
