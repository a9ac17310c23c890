"""predict.py's and serve.py's review and scale settings have one home each: `review.*` is
wbc.review.ReviewOptions registered as Hydra's schema (its defaults the only copy, a typo refused), the
scale / tile keys live in conf/inference/scale.yaml; both entry points compose the same values (they were
copied into predict.yaml, serve.yaml and the dataclasses, free to drift apart)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers_models import compose_cfg
from wbc.review import ReviewOptions
from wbc.scale import ScaleOptions

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name, extra", [("predict.yaml", ["input=x"]), ("serve.yaml", [])])
def test_both_entry_points_compose_the_one_copy(name: str, extra: list[str], tmp_path: Path) -> None:
    cfg = compose_cfg(name, extra, tmp_path)
    assert OmegaConf.to_container(cfg.review) == asdict(ReviewOptions())
    default = ScaleOptions()
    assert (cfg.scale, cfg.diameter, cfg.pixel_size_um, cfg.tile_overlap, cfg.tile_batch) == (
        default.scale, default.diameter, default.pixel_size_um, default.overlap, default.batch)
    cfg = compose_cfg(name, [*extra, "review.min_probability=0.8", "scale=0.5"], tmp_path)
    assert ReviewOptions.from_config(OmegaConf.to_container(cfg.review)).min_probability == 0.8 and cfg.scale == 0.5
    with pytest.raises(Exception, match="review.size_lo"):
        compose_cfg(name, [*extra, "review.size_lo=0.4"], tmp_path)


def holders(key: str) -> list[str]:
    """The config files that set `key` (comments left out)."""
    return sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "conf").rglob("*.yaml")
                  if any(line.split("#")[0].strip().startswith(f"{key}:") for line in p.read_text().splitlines()))


def test_no_yaml_repeats_the_review_or_scale_keys() -> None:
    assert holders("views_disagree") == [] and holders("size_low") == []
    assert holders("tile_overlap") == ["conf/inference/scale.yaml"] and holders("tile_batch") == ["conf/inference/scale.yaml"]
