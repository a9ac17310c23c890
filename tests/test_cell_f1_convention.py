"""pipeline/cell_macro_f1 averages the classes as test/macro_f1 does (torchmetrics' macro F1: the classes true or
predicted at least once, a predicted-only class 0), so on cells that are all found the two are equal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import multiclass_f1_score

from wbc.evaluation.pipeline import cell_f1


@pytest.mark.parametrize("seed", range(5))
def test_all_cells_found_equals_the_crop_macro_f1(seed: int) -> None:
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 3, 40)  # class 3 never true
    pred = np.where(rng.random(40) < 0.6, true, rng.integers(0, 4, 40))  # ... but sometimes given
    out = cell_f1(list(zip(true.tolist(), pred.tolist())), ["a", "b", "c", "d"], "p")
    expected = float(multiclass_f1_score(torch.as_tensor(pred), torch.as_tensor(true), 4, average="macro"))
    assert out["p/cell_macro_f1"] == pytest.approx(expected, abs=1e-6)


def test_a_class_only_given_to_spurious_cells_counts_zero() -> None:
    out = cell_f1([(0, 0), (0, 0), (None, 1)], ["a", "b", "c"], "p")
    assert out["p/cell_f1/b"] == 0.0 and "p/cell_f1/c" not in out
    assert out["p/cell_macro_f1"] == pytest.approx(0.5)
