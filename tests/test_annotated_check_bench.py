"""benchmarks/annotated_check.py: the lab-sized draws and the verdict shares it prints."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import annotated_check

    return annotated_check


def test_draws_take_n_at_random_or_k_of_each_class(bench) -> None:
    truth = np.array(["a"] * 30 + ["b"] * 3)
    rng = np.random.default_rng(0)
    assert len(set(bench.draw(truth, rng, 10, None))) == 10
    per = bench.draw(truth, rng, None, 5)
    assert sorted(truth[per]).count("a") == 5 and sorted(truth[per]).count("b") == 3  # all of a smaller class


def test_a_clearly_better_candidate_is_found_more_often_with_more_cells(bench) -> None:
    rng = np.random.default_rng(1)
    truth = np.array(list("abc") * 40)
    ref = np.where(rng.random(120) < 0.5, truth, "a")  # about half wrong
    cand = np.where(rng.random(120) < 0.9, truth, "b")
    args = Namespace(metric="macro_f1", bootstrap=200, confidence=0.95, draws=40, seed=0)
    out = bench.simulate(truth, ref, cand, [("10", 10, None), ("60", 60, None)], args)
    assert out["full"]["verdict"] == "better"
    small, large = out["sizes"]["10"], out["sizes"]["60"]
    assert large["better"] > small["better"] and large["better"] >= 0.9 and large["worse"] == 0
    assert large["decisive_right_sign"] == 1.0
