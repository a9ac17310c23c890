"""benchmarks/quality.py's statistics: a pipeline row's gap is taken within each run; levers are paired
with the configured row on the seed each run trained with (job.json's trained_from), never across splits,
and come with the counts lower and higher and a Wilcoxon signed-rank p (the README quotes such p-values)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from scipy.stats import wilcoxon

ROOT = Path(__file__).resolve().parents[1]
TASK = "quality_cls_all_idb2"
LABEL = "lymphoblast vs non-blast, all_idb2, balanced accuracy"


@pytest.fixture
def quality(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import quality

    return quality


def sweep(root: Path, seed: int | None, extra: list[str], vals: list[float], record: str = "trained_from") -> Path:
    """A finished sweep of the ALL-IDB2 row, one job per fold with its validation figure. The seed the jobs
    trained with is recorded in job.json's trained_from (`record`), only in .hydra/config.yaml ("config") or
    only as a seed= override ("override"); `seed` None: launched without seed=, trained with the default 42."""
    trained = 42 if seed is None else seed
    for fold, value in enumerate(vals):
        job = root / str(fold)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "config.yaml").write_text(f"task_name: {TASK}\n" + (f"seed: {trained}\n" if record != "override" else ""))
        overrides = [f"experiment={TASK}", f"data.fold={fold}", *([f"seed={seed}"] if seed is not None else []), *extra]
        meta = {"fold": fold, "overrides": overrides, "trained_from": {"seed": trained} if record == "trained_from" else None}
        (job / "job.json").write_text(json.dumps(meta))
        (job / "metrics.json").write_text(json.dumps({"val/balanced_accuracy": value}))
    return root


BASE = [0.90, 0.95, 0.97, 0.99, 0.93, 0.91]
LEVER = ["model.net.name=lite2"]


def test_gap_pairs_each_runs_own_figures(quality, tmp_path: Path) -> None:
    """Fold 0 has no pipeline figure: the gap is fold 1's and 2's (0 each), not fold 1's pipeline minus fold 0's crops."""
    runs = [{"pipeline/macro_f1": None, "classification/test/macro_f1": 0.90},
            {"pipeline/macro_f1": 0.70, "classification/test/macro_f1": 0.70},
            {"pipeline/macro_f1": 0.80, "classification/test/macro_f1": 0.80, "pipeline/extra": 1}]
    for i, m in enumerate(runs):
        (tmp_path / str(i) / ".hydra").mkdir(parents=True)
        (tmp_path / str(i) / ".hydra" / "config.yaml").write_text("task_name: quality_pipeline_wbc\n")
        (tmp_path / str(i) / "job.json").write_text(json.dumps({"fold": i}))
        (tmp_path / str(i) / "metrics.json").write_text(json.dumps(m))
    line = quality.table([("pipeline_wbc", [tmp_path], 0.0)], ensembles=False).splitlines()[-1]
    assert "gap 0.0000 +- 0.0000 (n=2) [meets]" in line
    assert "ground-truth crops 0.7500 +- 0.0707 (n=2)" in line  # the crops of the runs with a gap


@pytest.mark.parametrize("record", ["trained_from", "config"])
def test_a_sweep_without_a_seed_override_pairs_on_the_seed_it_trained_with(quality, tmp_path: Path, record: str) -> None:
    """The configured sweep was launched without seed= (trained with the config's 42); the lever with seed=42."""
    var = [0.91, 0.95, 0.98, 0.97, 0.95, 0.90]
    results = [("cls_idb2", [sweep(tmp_path / "base", None, [], BASE, record)], 0.0),
               ("cls_idb2", [sweep(tmp_path / "lite2", 42, LEVER, var, record)], 0.0)]
    diffs = [v - b for v, b in zip(var, BASE)]
    last = quality.paired_table(results).splitlines()[-1]
    assert last.startswith(f"| {LABEL} | model.net.name=lite2 | val/balanced_accuracy | {statistics.mean(diffs):.4f} +- "
                           f"{statistics.stdev(diffs):.4f} (n=6) | 3 higher, 2 lower of 6 |")


def test_a_variant_without_pairs_is_said(quality, tmp_path: Path) -> None:
    results = [("cls_idb2", [sweep(tmp_path / "base", 42, [], BASE)], 0.0),
               ("cls_idb2", [sweep(tmp_path / "lite2", 43, LEVER, BASE)], 0.0)]
    assert quality.paired_table(results) == (
        f"{LABEL} [model.net.name=lite2]: no run pairs with the configured row on a training seed and fold with "
        "val/balanced_accuracy (variant's seeds ['43'], configured row's ['42'])")


def test_a_variant_of_another_split_is_not_paired(quality, tmp_path: Path) -> None:
    """data.splits.seed=7: fold k is other images than the configured row's fold k."""
    results = [("cls_idb2", [sweep(tmp_path / "base", 42, [], BASE)], 0.0),
               ("cls_idb2", [sweep(tmp_path / "split7", 42, ["data.splits.seed=7"], BASE[::-1])], 0.0),
               ("cls_idb2", [sweep(tmp_path / "lite2", 42, LEVER, BASE)], 0.0)]
    lines = quality.paired_table(results).splitlines()
    assert lines[-1] == (f"{LABEL} [data.splits.seed=7]: not paired, data.splits.seed=7 changes the split "
                         "(its folds are other images than the configured row's)")
    assert not any(line.startswith("|") and "data.splits" in line for line in lines)
    assert f"| {LABEL} | model.net.name=lite2 | val/balanced_accuracy | 0.0000 +- 0.0000 (n=6) | 0 higher, 0 lower of 6 | n/a (0 non-zero pairs, needs 5) |" in lines


def test_paired_rows_carry_the_wilcoxon_p(quality, tmp_path: Path) -> None:
    """Two seeds of six folds: 12 pairs, one tie dropped -> scipy's Wilcoxon p on the 11 others, exact over all sign flips."""
    base43 = [0.92, 0.94, 0.96, 0.98, 0.92, 0.95]
    var42 = [0.93, 0.97, 0.98, 0.99, 0.96, 0.93]
    var43 = [0.95, 0.96, 0.97, 1.00, 0.95, 0.94]
    results = [("cls_idb2", [sweep(tmp_path / "b42", 42, [], BASE), sweep(tmp_path / "b43", 43, [], base43)], 0.0),
               ("cls_idb2", [sweep(tmp_path / "v42", 42, LEVER, var42), sweep(tmp_path / "v43", 43, LEVER, var43)], 0.0)]
    diffs = [round(v - b, 12) for v, b in zip(var42 + var43, BASE + base43)]
    assert diffs.count(0) == 1 and sum(d > 0 for d in diffs) == 10
    p = wilcoxon(diffs, zero_method="wilcox").pvalue
    last = quality.paired_table(results).splitlines()[-1]
    assert last.endswith(f"| 10 higher, 1 lower of 12 | p {p:.4f} (n=11, 1 zeros dropped, exact (all sign flips; ties or zeros)) |")


def test_wilcoxon_text_says_the_method_scipy_uses(quality) -> None:
    from bench_stats import wilcoxon_text

    no_ties = [0.011, -0.002, 0.023, 0.034, 0.045, 0.056]
    assert wilcoxon_text(no_ties) == f"p {wilcoxon(no_ties).pvalue:.4f} (n=6, 0 zeros dropped, exact)"
    # 20 pairs: 8 higher, 5 lower, 7 ties (README's lever): zeros dropped, too many flips to enumerate
    d = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, -0.015, -0.025, -0.035, -0.045, -0.055, *[0.0] * 7]
    assert wilcoxon_text(d) == f"p {wilcoxon(d, zero_method='wilcox').pvalue:.4f} (n=13, 7 zeros dropped, normal approx. (ties or zeros))"
    assert wilcoxon_text([0.01, 0.02, -0.01, 0.03, 0.0]) == "n/a (4 non-zero pairs, needs 5)"
