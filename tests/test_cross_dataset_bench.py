"""benchmarks/cross_dataset.py: the seed ensemble row averages the runs' held-out probabilities."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cross(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import cross_dataset

    monkeypatch.setattr(cross_dataset, "ROOT", tmp_path)
    return cross_dataset


def write_run(cross, seed: int, probs: list[tuple[str, list[float]]], variant: str = "cells_grey") -> None:
    out = cross.run_dir("d1_to_d2", variant, "dev", seed, "adabn")
    out.mkdir(parents=True)
    with open(out / "test_predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sample_id", "cell", "true", "pred", *(f"p_{c}" for c in cross.CLASSES)])
        for i, (true, p) in enumerate(probs):
            w.writerow([f"s{i}", 1, true, cross.CLASSES[p.index(max(p))], *p])


def test_ensemble_of_seeds_scores_the_averaged_probabilities(cross) -> None:
    # each seed alone gets one of the two cells wrong; their average gets both right
    write_run(cross, 42, [("neutrophil", [0.9, 0.1, 0, 0]), ("lymphocyte", [0.6, 0.4, 0, 0])])
    write_run(cross, 43, [("neutrophil", [0.4, 0.6, 0, 0]), ("lymphocyte", [0.0, 1.0, 0, 0])])
    line = cross.ensemble_row("d1_to_d2", ["cells_grey"], "dev", [42, 43], "adabn")
    assert line.startswith("| dataset1 -> dataset2 | cells_grey + AdaBN, ensemble of seeds 42, 43 | dev | ")
    assert "| 1.00 / 1.00 / 0.00 / 0.00 |" in line  # recall per class
    assert cross.ensemble_row("d1_to_d2", ["cells_grey"], "dev", [42, 44], "adabn") is None  # seed 44 not run


def test_ensemble_of_variants_scores_their_averaged_probabilities(cross, capsys: pytest.CaptureFixture[str]) -> None:
    # the grey run and the Reinhard run of one seed as one model (--ensemble-variants)
    write_run(cross, 42, [("neutrophil", [0.9, 0.1, 0, 0]), ("lymphocyte", [0.6, 0.4, 0, 0])])
    write_run(cross, 42, [("neutrophil", [0.4, 0.6, 0, 0]), ("lymphocyte", [0.0, 1.0, 0, 0])], variant="cells_reinhard")
    line = cross.ensemble_row("d1_to_d2", ["cells_grey", "cells_reinhard"], "dev", [42], "adabn")
    # macro-F1 over the classes true or predicted (metrics.json's): monocyte and eosinophil, neither, are left out
    assert line.startswith("| dataset1 -> dataset2 | cells_grey + cells_reinhard + AdaBN, ensemble of seed 42 | dev | 1.000 | 1.000 | 1.00 / 1.00 / 0.00 / 0.00 |")
    assert cross.ensemble_row("d1_to_d2", ["cells_grey", "cells_reinhard_masked"], "dev", [42], "adabn") is None
    cross.main(["--collect", "--directions", "d1_to_d2", "--variants", "cells_grey", "--ensemble-variants", "cells_grey", "cells_reinhard"])
    assert "cells_grey + cells_reinhard + AdaBN, ensemble of seed 42 | dev | 1.000 | 1.000 | 1.00 / 1.00 / 0.00 / 0.00 |" in capsys.readouterr().out


def test_ensemble_refuses_runs_scored_on_other_crops(cross) -> None:
    write_run(cross, 42, [("neutrophil", [0.9, 0.1, 0, 0])])
    write_run(cross, 43, [("neutrophil", [0.9, 0.1, 0, 0]), ("lymphocyte", [0.0, 1.0, 0, 0])])
    with pytest.raises(SystemExit, match="not the same classes and crops as .* must score the same crops"):
        cross.ensemble_row("d1_to_d2", ["cells_grey"], "dev", [42, 43], "adabn")


def test_label_budget_table_reads_each_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import label_budget

    monkeypatch.setattr(label_budget, "ROOT", tmp_path)
    run = label_budget.out_dir("d2_to_d1", "cells_reinhard", 10, "source", 42)
    run.mkdir(parents=True)
    (run / "metrics.json").write_text('{"val/macro_f1": 0.75, "test/macro_f1": 0.76, "test/recall/eosinophil": 0.57}')
    (run / "cross_cls.log").write_text("[..][datamodules.base][INFO] - data.train_per_class=10: 40 of 168 training images kept (eosinophil 10, ...)\n")
    (run / "seconds.txt").write_text("419\n")
    assert label_budget.table().splitlines()[-1] == (
        "| dataset2 -> dataset1 | cells_reinhard | other source | 10 | 42 | 40 |  | 0.750 | 0.760 | 0.57 | 419 s |")


def test_label_budget_pipeline_fine_tunes_the_segmenter_on_the_same_cells(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--segmenter: the LODO segmenter is fine-tuned with the target's in-domain recipe, its input size,
    preprocessing and training patches, on data.train_per_class=K (the classifier's draw), and each
    pipeline score is one table row naming its segmenter."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import label_budget

    monkeypatch.setattr(label_budget, "ROOT", tmp_path)
    lodo = tmp_path / "lodo"
    (lodo / ".hydra").mkdir(parents=True)
    (lodo / ".hydra" / "config.yaml").write_text("data:\n  train_crop: 128\n")
    monkeypatch.setattr("wbc.rundir.resolve_checkpoint", lambda *a, **k: lodo / "last.ckpt")
    monkeypatch.setattr(label_budget, "source_inputs", lambda ckpt, stage="classification": ["data.image_size=256"])
    calls = []
    monkeypatch.setattr(label_budget, "timed", lambda cmd, out: calls.append(cmd))
    out = label_budget.run_segmenter("d2_to_d1", 10, "source", 42, lodo, 20)
    cmd = " ".join(calls[0])
    assert out == label_budget.seg_dir("d2_to_d1", 10, "source", 42)
    for part in ("experiment=quality_seg_d1", "data.train_per_class=10", "data.train_crop=128", "trainer.max_epochs=20",
                 "data.image_size=256", f"init_from={lodo}", f"hydra.run.dir={out}"):
        assert part in cmd
    label_budget.run_segmenter("d2_to_d1", 10, "imagenet", 42, lodo, 20)
    assert "init_from" not in " ".join(calls[1])

    run = label_budget.out_dir("d2_to_d1", "cells_reinhard", 10, "source", 42)
    for tag, recall in (("lodo", 0.72), ("finetuned", 1.0)):
        (run / f"pipeline_{tag}").mkdir(parents=True)
        (run / f"pipeline_{tag}" / "metrics.json").write_text(
            f'{{"pipeline/nucleus_dice": 0.9, "pipeline/detection_recall": {recall}, "pipeline/cell_macro_f1": 0.5, '
            '"pipeline/macro_f1": 0.6, "classification/test/macro_f1": 0.76}')
    rows = label_budget.pipeline_table().splitlines()[2:]
    assert rows == [
        "| dataset2 -> dataset1 | other source | 10 | 42 | fine-tuned on the same cells | 0.900 | 1.000 | 0.500 | 0.600 | 0.760 | ? s |",
        "| dataset2 -> dataset1 | other source | 10 | 42 | the other sources' (LODO), as is | 0.900 | 0.720 | 0.500 | 0.600 | 0.760 | ? s |",
    ]


def test_label_budget_refuses_scores_made_with_another_segmenter(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A finished pipeline score is reused only for the segmenter it was made with: a second --segmenter
    run is refused (naming both), not given the first one's figures."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import label_budget

    monkeypatch.setattr(label_budget, "ROOT", tmp_path)
    classifier = label_budget.out_dir("d2_to_d1", "cells_reinhard", 10, "source", 42)
    classifier.mkdir(parents=True)
    (classifier / "metrics.json").write_text("{}")
    calls = []
    monkeypatch.setattr(label_budget, "timed", lambda cmd, out: (calls.append(cmd), (out / "metrics.json").write_text("{}")))
    first, second = tmp_path / "lodo_a", tmp_path / "lodo_b"
    label_budget.run_pipeline("d2_to_d1", classifier, first, "lodo")
    label_budget.run_pipeline("d2_to_d1", classifier, first, "lodo")
    assert len(calls) == 1
    with pytest.raises(SystemExit, match="lodo_a.*not.*lodo_b"):
        label_budget.run_pipeline("d2_to_d1", classifier, second, "lodo")


def test_label_budget_pseudo_start_fine_tunes_on_the_source_models_own_calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import cross_dataset
    import label_budget

    monkeypatch.setattr(label_budget, "ROOT", tmp_path)
    monkeypatch.setattr(cross_dataset, "ROOT", tmp_path)
    monkeypatch.setattr(label_budget, "source_inputs", lambda ckpt, stage="classification": ["data.preprocess.stain_norm=reinhard"])
    calls = []
    monkeypatch.setattr(label_budget, "timed", lambda cmd, out: calls.append(cmd))
    source = cross_dataset.run_dir("d2_to_d1", "cells_reinhard", "dev", 42) / "checkpoints" / "last.ckpt"
    source.parent.mkdir(parents=True)
    source.write_bytes(b"")
    with pytest.raises(SystemExit, match=r"no AdaBN predictions; run .*--adapt-bn"):
        label_budget.run("d2_to_d1", "cells_reinhard", 10, "pseudo", 42)
    preds = cross_dataset.run_dir("d2_to_d1", "cells_reinhard", "dev", 42, "adabn") / "test_predictions.csv"
    preds.parent.mkdir(parents=True)
    preds.write_text("sample_id,cell,true,pred,p_neutrophil\nsegmentation_wbc_d2/dataset2/7,1,x,y,0.5\n")
    with pytest.raises(SystemExit, match=r"1 rows are not of segmentation_wbc_d1 \(e.g. \['segmentation_wbc_d2/dataset2/7'\]\)"):
        label_budget.run("d2_to_d1", "cells_reinhard", 10, "pseudo", 42)
    preds.write_text("sample_id,cell,true,pred,p_neutrophil\nsegmentation_wbc_d1/dataset1/7,1,x,y,0.5\n")
    label_budget.run("d2_to_d1", "cells_reinhard", 10, "pseudo", 42)
    own = label_budget.out_dir("d2_to_d1", "cells_reinhard", 10, "pseudo", 42) / "pseudo_source.csv"
    assert f"data.pseudo_labels={{file:'{own}',per_class:10}}" in calls[0] and f"init_from={source}" in calls[0]
    assert own.read_text().splitlines()[1] == "dataset1/7,1,x,y,0.5"  # the target set's own image ids
    assert not any(c.startswith("data.train_per_class") for c in calls[0])  # the labels are the model's, not a budget's

    run = label_budget.out_dir("d2_to_d1", "cells_reinhard", 10, "pseudo", 42)
    (run / "metrics.json").write_text('{"val/macro_f1": 0.5, "test/macro_f1": 0.55, "test/recall/eosinophil": 0.25}')
    (run / "cross_cls.log").write_text("[..] - data.pseudo_labels: 31 of 168 training images kept, labelled by x.csv (eosinophil 1, ...)\n")
    # the share of chosen labels that are right: a (right) and c (wrong) chosen; b is a validation image
    (run / "pseudo_source.csv").write_text("sample_id,cell,true,pred,p_neutrophil,p_lymphocyte\na,1,neutrophil,neutrophil,0.9,0.1\n"
                                           "b,1,lymphocyte,lymphocyte,0.1,0.9\nc,1,neutrophil,lymphocyte,0.2,0.8\n")
    (run / "val_predictions.csv").write_text("sample_id,cell,true,pred,p_neutrophil,p_lymphocyte\nb,1,lymphocyte,lymphocyte,0.1,0.9\n")
    assert label_budget.table().splitlines()[-1] == (
        "| dataset2 -> dataset1 | cells_reinhard | other source, its own labels (none annotated) | 10 | 42 | 31 | 0.50 | 0.500 | 0.550 | 0.25 | ? s |")


def test_pseudo_label_override_composes(tmp_path: Path) -> None:
    from tests.helpers_models import compose_cfg

    cfg = compose_cfg("train.yaml", ["experiment=cross_cls", "data=segmentation_wbc_d1", "data.pseudo_labels={file:'/runs/a b/p.csv',per_class:10}"],
                      tmp_path)
    assert dict(cfg.data.pseudo_labels) == {"file": "/runs/a b/p.csv", "per_class": 10}


def test_label_budget_pseudo_labels_of_a_seed_ensemble_average_the_calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import label_budget

    head = "sample_id,cell,true,pred,p_neutrophil,p_lymphocyte\n"
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    a.write_text(head + "d1/x,1,neutrophil,neutrophil,0.6,0.4\nd1/y,1,lymphocyte,lymphocyte,0.1,0.9\n")
    b.write_text(head + "d1/x,1,neutrophil,lymphocyte,0.0,1.0\nd1/y,1,lymphocyte,lymphocyte,0.3,0.7\n")
    out = label_budget.own_ids([a, b], "d1", tmp_path / "own.csv")
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    # x: (0.6 + 0.0) / 2 = 0.3 neutrophil, 0.7 lymphocyte: the ensemble calls it lymphocyte
    assert [(r["sample_id"], r["pred"], r["p_neutrophil"], r["p_lymphocyte"]) for r in rows] == [
        ("x", "lymphocyte", "0.30000", "0.70000"), ("y", "lymphocyte", "0.20000", "0.80000")]
    c.write_text(head + "d1/y,1,lymphocyte,lymphocyte,0.1,0.9\n")
    with pytest.raises(SystemExit, match=r"c.csv: scored other images than .*a.csv"):
        label_budget.own_ids([a, c], "d1", tmp_path / "own.csv")


def test_label_budget_second_round_is_labelled_by_the_first_rounds_models(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import cross_dataset
    import label_budget

    monkeypatch.setattr(label_budget, "ROOT", tmp_path)
    monkeypatch.setattr(cross_dataset, "ROOT", tmp_path)
    monkeypatch.setattr(label_budget, "source_inputs", lambda ckpt, stage="classification": ["data.preprocess.stain_norm=reinhard"])
    head = "sample_id,cell,true,pred,p_neutrophil,p_lymphocyte\n"
    calls = []

    def fake_timed(cmd: list[str], out: Path) -> None:  # a relabel run writes the first-round model's calls
        calls.append(cmd)
        if "train=false" in cmd:
            seed = next(c for c in cmd if c.startswith("seed="))
            out.mkdir(parents=True, exist_ok=True)
            p = "0.8,0.2" if seed == "seed=42" else "0.2,0.8"
            (out / "test_predictions.csv").write_text(head + f"segmentation_wbc_d1/dataset1/7,1,x,y,{p}\n")

    monkeypatch.setattr(label_budget, "timed", fake_timed)
    source = cross_dataset.run_dir("d2_to_d1", "cells_reinhard", "dev", 43) / "checkpoints" / "last.ckpt"
    source.parent.mkdir(parents=True)
    source.write_bytes(b"")
    with pytest.raises(SystemExit, match=r"no first-round model; run .*--budgets 20 --starts pseudoens --seed 42"):
        label_budget.run("d2_to_d1", "cells_reinhard", 40, "pseudoens2", 43, (42, 43), first_budget=20)
    for s in (42, 43):
        ckpt = label_budget.out_dir("d2_to_d1", "cells_reinhard", 20, "pseudoens", s) / "checkpoints" / "last.ckpt"
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(b"")
    label_budget.run("d2_to_d1", "cells_reinhard", 40, "pseudoens2", 43, (42, 43), first_budget=20)
    relabels, train = calls[:2], calls[2]
    first = label_budget.out_dir("d2_to_d1", "cells_reinhard", 20, "pseudoens", 42)
    assert f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}" in relabels[0] and "data.holdout_split=dev" in relabels[0]
    assert not any("adapt_bn" in c for c in relabels[0])  # the fine-tuned model's statistics are the target's already
    out = label_budget.out_dir("d2_to_d1", "cells_reinhard", 40, "pseudoens2from20", 43)
    assert f"data.pseudo_labels={{file:'{out / 'pseudo_source.csv'}',per_class:40}}" in train and f"init_from={source}" in train
    assert (out / "pseudo_source.csv").read_text().splitlines()[1] == "dataset1/7,1,x,neutrophil,0.50000,0.50000"
    (out / "metrics.json").write_text('{"val/macro_f1": 0.5, "test/macro_f1": 0.55, "test/recall/eosinophil": 0.25}')
    assert "second round: labels of the first round's (K = 20) seed ensemble | 40 | 43 |" in label_budget.table()


def test_label_budget_self_training_keeps_the_segmenter_as_shipped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A pseudo-label start has no annotated cells, so no masks to fine-tune the segmenter on: its
    pipeline row uses the LODO segmenter as is, while an annotated start also fine-tunes it."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import label_budget

    monkeypatch.setattr(label_budget, "ROOT", tmp_path)
    monkeypatch.setattr(label_budget, "run", lambda *a, **k: None)
    pipelines, tuned = [], []
    monkeypatch.setattr(label_budget, "run_pipeline", lambda d, clf, seg, tag: pipelines.append((clf.name, tag)))
    monkeypatch.setattr(label_budget, "run_segmenter", lambda d, k, start, seed, seg, ep: tuned.append(start) or tmp_path / "none")
    label_budget.main(["--budgets", "20", "--starts", "pseudoens2", "source", "--first-budget", "10", "--segmenter", str(tmp_path)])
    assert pipelines == [("d2_to_d1_cells_reinhard_k20_pseudoens2from10_s42", "lodo"), ("d2_to_d1_cells_reinhard_k20_source_s42", "lodo")]
    assert tuned == ["source"]


def test_prior_em_recovers_a_pure_class_frequency_shift(cross) -> None:
    """Posteriors that are right about the images, scored on a set whose class mix differs from
    training: EM finds the new mix, and the re-weighted posteriors are the ones Bayes gives for it."""
    import numpy as np

    rng = np.random.default_rng(0)
    source, target = np.array([0.25, 0.25, 0.25, 0.25]), np.array([0.6, 0.2, 0.15, 0.05])
    means = np.eye(4) * 1.5
    labels = rng.choice(4, size=4000, p=target)
    x = means[labels] + rng.normal(size=(4000, 4))
    loglik = -0.5 * ((x[:, None, :] - means[None]) ** 2).sum(-1)
    posterior = np.exp(loglik) * source
    posterior /= posterior.sum(1, keepdims=True)  # calibrated for the training mix
    adjusted, prior = cross.prior_em(posterior, source)
    np.testing.assert_allclose(prior, target, atol=0.03)
    bayes = np.exp(loglik) * target
    assert np.abs(adjusted - bayes / bayes.sum(1, keepdims=True)).mean() < 0.01
    assert (adjusted.argmax(1) == labels).mean() > (posterior.argmax(1) == labels).mean()
