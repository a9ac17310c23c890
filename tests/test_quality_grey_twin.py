"""The grey + CLAHE twin of the cross-source pipeline rows and the triple row (plain + masked + grey
classifiers as one): the twin differs from the plain row only in its classifier's preprocessing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers_models import compose_cfg

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("direction", ["d1_to_d2", "d2_to_d1"])
def test_grey_twin_differs_only_in_the_classifiers_preprocessing(direction: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import quality

    plain = compose_cfg("train", [f"experiment=quality_cross_pipeline_{direction}"], tmp_path / "plain")
    twin = compose_cfg("train", [f"experiment=quality_cross_pipeline_{direction}_grey"], tmp_path / "grey")
    assert plain.classification.data.preprocess.stain_norm == "reinhard"
    assert dict(twin.classification.data.preprocess) == {"stain_norm": None, "grayscale": True, "clahe": True}
    assert {k: v for k, v in twin.classification.data.items() if k != "preprocess"} == {
        k: v for k, v in plain.classification.data.items() if k != "preprocess"}
    assert twin.segmentation == plain.segmentation and twin.data == plain.data and twin.pipeline == plain.pipeline
    a, b = direction.split("_to_")
    assert quality.ROWS[f"cross_pipe_{a}_{b}_triple"].members == (f"cross_pipe_{a}_{b}", f"cross_pipe_{a}_{b}_masked", f"cross_pipe_{a}_{b}_grey")
