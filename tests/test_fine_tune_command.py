"""The train.py / fit_morphology.py commands predict.py prints for a lab's labelled (or pseudo-labelled)
cells take the cut-out nuclei as they are: they were post-processed by that predict already, and the
default 30 px minimum / 5 px opening dropped small ones, so the printed command stopped ("no nucleus found")."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.helpers_models import compose_cfg
from wbc.cli.predict import AS_DRAWN
from wbc.postprocess import PostprocessParams, union_instance


def test_the_printed_postprocess_keeps_a_small_cut_out_nucleus(tmp_path: Path) -> None:
    mask = np.zeros((40, 40), np.uint8)
    mask[18:22, 17:22] = 255  # a 20 px nucleus, as a small-cell predict cut it out
    default = compose_cfg("train.yaml", [], tmp_path / "a").postprocess
    printed = compose_cfg("train.yaml", list(AS_DRAWN), tmp_path / "b").postprocess
    assert union_instance(mask, PostprocessParams.from_config(default))[1] == []  # what stopped the command
    (cell,) = union_instance(mask, PostprocessParams.from_config(printed))[1]
    assert cell.area == 20
    morph = compose_cfg("fit_morphology.yaml", list(AS_DRAWN), tmp_path / "c").postprocess
    assert union_instance(mask, PostprocessParams.from_config(morph))[1][0].area == 20
