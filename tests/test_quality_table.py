"""benchmarks/quality.py: the results table is computed from the sweeps' per-fold metrics.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def quality(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import quality

    return quality


def fake_sweep(root: Path, task: str, folds: list[dict]) -> Path:
    for i, metrics in enumerate(folds):
        run = root / str(i)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(f"task_name: {task}\nseed: 42\n")
        (run / "metrics.json").write_text(json.dumps(metrics))
        (run / "job.json").write_text(json.dumps({"fold": i}))
    return root


def test_table_reports_cv_validation_and_test_against_the_target(quality, tmp_path: Path) -> None:
    sweep = fake_sweep(
        tmp_path / "cls",
        "quality_cls_all_idb2",
        [{"val/balanced_accuracy": v, "test/balanced_accuracy": t} for v, t in [(0.97, 0.95), (0.99, 0.93), (1.0, 0.94)]],
    )
    # cached fold-ensemble figure (evaluate.py's run dir, with its own .hydra/): not a fold
    (sweep / "ensemble_test" / ".hydra").mkdir(parents=True)
    (sweep / "ensemble_test" / ".hydra" / "config.yaml").write_text("task_name: evaluate\n")
    (sweep / "ensemble_test" / "metrics.json").write_text(json.dumps({"test/balanced_accuracy": 0.96}))
    oof = {"classification": {"metrics": {"oof/val/balanced_accuracy": 0.985}, "n_crops": 90}}
    (sweep / "cv_summary.json").write_text(json.dumps({"oof": oof}))
    assert quality.row_key(sweep) == "cls_idb2"
    line = quality.table([("cls_idb2", [sweep], 60.0)]).splitlines()[-1]
    assert "0.9867 +- 0.0153 (n=3) [meets]" in line  # CV mean of validation folds vs >= 0.98
    assert "| 0.9850 |" in line  # pooled out-of-fold figure
    assert "0.9400 +- 0.0100 (n=3)" in line and "0.9600" in line and "| 3 |" in line and "1.0 min" in line


def test_pipeline_row_is_the_gap_to_ground_truth_crops(quality, tmp_path: Path) -> None:
    folds = [{"pipeline/macro_f1": p, "classification/test/macro_f1": g} for p, g in [(0.88, 0.90), (0.86, 0.91)]]
    sweep = fake_sweep(tmp_path / "pipe", "quality_pipeline_wbc", folds)
    line = quality.table([("pipeline_wbc", [sweep], 0.0)]).splitlines()[-1]
    assert "gap -0.0350 +- 0.0212 (n=2) [below]" in line  # more than 2 points lower


def test_cross_domain_rows_are_judged_on_the_held_out_test_split(quality, tmp_path: Path) -> None:
    """LODO: the validation folds are the training sets' own, so only the held-out test split counts."""
    folds = [{"val/dice_post": 0.99, "test/dice_post": 0.93}]
    sweep = fake_sweep(tmp_path / "lodo", "quality_seg_lodo_d2", folds)
    assert quality.row_key(sweep) == "seg_lodo_d2"
    line = quality.table([("seg_lodo_d2", [sweep], 0.0)]).splitlines()[-1]
    assert "| 0.9900 (n=1) |" in line  # in-domain validation printed, not judged
    assert "0.9300 (n=1) [below]" in line and "on test" in line
    cross = fake_sweep(tmp_path / "cross", "quality_cross_pipeline_d1_to_d2",
                       [{"pipeline/cell_macro_f1": 0.80, "pipeline/macro_f1": 0.90, "classification/test/macro_f1": 0.85}])
    line = quality.table([("cross_pipe_d1_d2", [cross], 0.0)]).splitlines()[-1]
    assert "[meets]" in line and "gap -0.0500" in line  # 0.80 >= 0.795 on test, whatever the gap
    assert "matched cells 0.9000" in line  # judged on the detection-aware figure, not the matched cells'
    few = fake_sweep(tmp_path / "few", "quality_cross_pipeline_d1_to_d2",
                     [{"pipeline/cell_macro_f1": 0.10, "pipeline/macro_f1": 1.0, "classification/test/macro_f1": 0.85}])
    assert "[below]" in quality.table([("cross_pipe_d1_d2", [few], 0.0)]).splitlines()[-1]


def test_eosinophil_recall_is_read_from_the_pooled_oof(quality, tmp_path: Path) -> None:
    sweep = fake_sweep(tmp_path / "wbc", "quality_cls_wbc", [{"val/macro_f1": 0.9, "test/macro_f1": 0.9}] * 2)
    oof = {"classification": {"metrics": {"oof/val/macro_f1": 0.88, "oof/val/recall/eosinophil": 0.8}}}
    (sweep / "cv_summary.json").write_text(json.dumps({"oof": oof}))
    (sweep / "ensemble_test").mkdir()
    (sweep / "ensemble_test" / "metrics.json").write_text(json.dumps({"test/macro_f1": 0.91}))  # no evaluate.py run
    line = quality.table([("cls_wbc", [sweep], 0.0)]).splitlines()[-1]
    assert line.startswith("| eosinophil recall") and "0.8000 [below]" in line


def test_collect_refuses_a_sweep_of_another_experiment(quality, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep = fake_sweep(tmp_path / "other", "train", [{"test/dice": 0.9}])
    assert quality.main(["--collect", str(sweep)]) == 2
    assert "not a quality_* sweep" in capsys.readouterr().err


def test_calibration_table_cross_fits_the_temperature_on_other_folds(quality, tmp_path: Path) -> None:
    """Overconfident folds (labels drawn from softmax(z / 2), outputs softmax(z)) with T = 1 stored:
    the cross-fitted ECE (T from the other folds) is far below the uncalibrated one."""
    import numpy as np

    rng = np.random.default_rng(0)
    classes = ["a", "b", "c"]
    folds = [{"test/ece": 0.05, "test/uncalibrated/ece": 0.1, "test/review/flagged": 0.1, "test/review/error_kept": 0.1,
              "test/review/error_all": 0.2, "test/review/error_at_90": 0.1, "test/review/aurc": 0.05}] * 3
    sweep = fake_sweep(tmp_path / "cls", "quality_cls_all_idb2", folds)
    for i in range(3):
        z = rng.normal(0, 3, size=(400, 3))
        truth = np.exp(z / 2) / np.exp(z / 2).sum(1, keepdims=True)
        y = [rng.choice(3, p=p) for p in truth]
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        rows = ["sample_id,cell,true,pred,p_a,p_b,p_c"] + [f"s{j},1,{classes[t]},{classes[int(np.argmax(q))]}," + ",".join(f"{v:.5f}" for v in q) for j, (q, t) in enumerate(zip(p, y))]
        (sweep / str(i) / "val_predictions.csv").write_text("\n".join(rows) + "\n")
        (sweep / str(i) / "test_calibration.json").write_text(json.dumps({"calibration": {"temperature": 1.0}}))
    from quality_calibration import calibration_table

    lines = calibration_table([("cls_idb2", sweep)]).splitlines()
    cross = next(line for line in lines if "cross-fitted" in line).split("|")
    before, after = float(cross[3]), float(cross[4].strip().split()[0].strip("*"))
    assert before > 0.08 and after < 0.5 * before
    assert any("test, fold models" in line and "10.0%" in line for line in lines)


def test_calibration_table_starts_from_the_probabilities_written_before_the_temperature(quality, tmp_path: Path) -> None:
    """A fold with no validation error fits T near 0: its calibrated columns saturate at 1.00000 / 0.00000 and
    undoing T cannot recover them; the uncalibrated columns written beside them are what "before" scores."""
    import numpy as np

    from wbc.calibration import apply_temperature, ece

    folds = [{"test/ece": 0.05}] * 2
    sweep = fake_sweep(tmp_path / "cls", "quality_cls_all_idb2", folds)
    rng = np.random.default_rng(1)
    raws = []
    for i in range(2):
        pa = rng.uniform(0.55, 0.95, size=50)
        raw = np.stack([pa, 1 - pa], 1)
        raws.append(raw)
        cal = apply_temperature(raw, 0.05)
        rows = ["sample_id,cell,true,pred,p_a,p_b,uncalibrated_p_a,uncalibrated_p_b"] + [
            f"s{j},1,a,a,{c[0]:.5f},{c[1]:.5f},{r[0]:.5f},{r[1]:.5f}" for j, (c, r) in enumerate(zip(cal, raw))]
        (sweep / str(i) / "val_predictions.csv").write_text("\n".join(rows) + "\n")
        (sweep / str(i) / "test_calibration.json").write_text(json.dumps({"calibration": {"temperature": 0.05}}))
    from quality_calibration import calibration_table

    row = next(line for line in calibration_table([("cls_idb2", sweep)]).splitlines() if "in-sample" in line).split("|")
    expected = ece(np.round(np.concatenate(raws), 5), np.zeros(100, dtype=int))
    assert float(row[3]) == pytest.approx(expected, abs=1e-4) and expected > 0.1


def test_collected_sweep_time_is_each_job_from_job_json_to_metrics_json(quality, tmp_path: Path) -> None:
    """--collect used to print 'nan min' for sweeps it did not run itself (a resumed row, say)."""
    sweep = fake_sweep(tmp_path / "cls", "quality_cls_all_idb2", [{"val/balanced_accuracy": 0.9}] * 3)
    for i, minutes in enumerate([2, 3, 5]):
        os.utime(sweep / str(i) / "job.json", (1000.0, 1000.0))
        os.utime(sweep / str(i) / "metrics.json", (1000.0 + 60 * minutes, 1000.0 + 60 * minutes))
    (sweep / "2" / "metrics.json").unlink()  # an unfinished job does not count
    assert quality.job_seconds(sweep) == pytest.approx(300.0)
    assert quality.job_seconds(tmp_path / "empty") != quality.job_seconds(tmp_path / "empty")  # NaN


def test_collected_sweeps_of_other_overrides_stay_apart(quality, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Two seeds of one setting pool into one row; a lever tried with --extra is a row of its own,
    labelled with its overrides (it was pooled with the configured row before)."""
    def sweep(name: str, extra: list[str], value: float) -> Path:
        s = fake_sweep(tmp_path / name, "quality_cls_all_idb2", [{"val/balanced_accuracy": value}] * 2)
        for i in range(2):
            (s / str(i) / "job.json").write_text(json.dumps({"fold": i, "overrides": ["experiment=quality_cls_all_idb2", f"data.fold={i}", f"seed={name[-2:]}", "extras.print_config=False", *extra]}))
            # the seed the run trained with (what pairing reads), as Hydra resolves seed=<n> into it
            (s / str(i) / ".hydra" / "config.yaml").write_text(f"task_name: quality_cls_all_idb2\nseed: {name[-2:]}\n")
        (s / "ensemble_test").mkdir()  # as if evaluate.py had run: no subprocess here
        (s / "ensemble_test" / "metrics.json").write_text("{}")
        return s

    sweeps = [sweep("plain42", [], 0.9), sweep("plain43", [], 0.8), sweep("ls42", ["model.loss.label_smoothing=0.1"], 0.7)]
    assert quality.variant(sweeps[2]) == ("model.loss.label_smoothing=0.1",)
    assert quality.main(["--collect", *map(str, sweeps)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| lymphoblast") and " on val " in line]
    assert len(rows) == 2
    assert "| 0.8500 +- 0.0577 (n=4)" in rows[0] and "[model" not in rows[0]
    assert rows[1].startswith("| lymphoblast vs non-blast, all_idb2, balanced accuracy [model.loss.label_smoothing=0.1] |")
    assert "| 0.7000 +- 0.0000 (n=2)" in rows[1]
    # paired with the configured row by seed and fold: only seed 42's two folds have a partner
    assert quality.paired_table([("cls_idb2", [s], 0.0) for s in sweeps]).splitlines()[-1] == (
        "| lymphoblast vs non-blast, all_idb2, balanced accuracy | model.loss.label_smoothing=0.1 | val/balanced_accuracy "
        "| -0.2000 +- 0.0000 (n=2) | 0 higher, 2 lower of 2 | n/a (2 non-zero pairs, needs 5) |")
    assert quality.paired_table([("cls_idb2", sweeps[:2], 0.0)]) == ""  # no variant, no pairs


def test_no_ensemble_tabulates_without_running_evaluate(quality, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep = fake_sweep(tmp_path / "cls", "quality_cls_all_idb2", [{"val/balanced_accuracy": 0.9, "test/balanced_accuracy": 0.9}] * 2)
    assert quality.main(["--collect", str(sweep), "--no-ensemble"]) == 0
    assert not (sweep / "ensemble_test").exists()  # evaluate.py was not run
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("| lymphoblast"))
    assert "| 0.9000 +- 0.0000 (n=2) | n/a |" in line


def test_combined_segmenter_is_reported_per_set(quality, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """One segmenter for three sets: each set's CV and test figure is the mean of its own images'
    Dice (ids `<part>/<id>`), not the pooled mean that metrics.json holds."""
    sweep = fake_sweep(tmp_path / "comb", "quality_seg_combined", [{"val/dice_post": 0.5, "test/dice_post": 0.5}] * 2)
    for fold, (d1, d2) in enumerate([(0.96, 0.98), (0.97, 0.99)]):
        for split, shift in (("val", 0.0), ("test", -0.01)):
            cases = [{"id": f"segmentation_wbc_d1/dataset1/{i}", "dice": d1 + shift} for i in range(3)]
            cases += [{"id": "segmentation_wbc_d2/dataset2/7", "dice": d2 + shift}, {"id": "segmentation_wbc_d2/dataset2/8", "dice": float("nan")}]
            (sweep / str(fold) / f"{split}_eval").mkdir()
            (sweep / str(fold) / f"{split}_eval" / "summary.json").write_text(json.dumps({"metric_per_case": cases}))
    (sweep / "ensemble_test").mkdir()
    (sweep / "ensemble_test" / "metrics.json").write_text("{}")
    assert quality.main(["--collect", str(sweep)]) == 0
    out = capsys.readouterr().out.split("Per set:")[1].splitlines()
    d1 = next(x for x in out if x.startswith("| segmentation_wbc_d1 "))
    d2 = next(x for x in out if x.startswith("| segmentation_wbc_d2 "))
    assert "| 0.9600 / 0.9700 | 0.9650 +- 0.0071 (n=2) [>= 0.975: below] | 0.9550 +- 0.0071 (n=2) |" in d1
    assert "| 0.9800 / 0.9900 | 0.9850 +- 0.0071 (n=2) [>= 0.98: meets] |" in d2  # the NaN image (both masks empty) left out


def test_per_set_folds_are_in_fold_order_across_sweeps(quality, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Folds trained in separate sweeps (one `--folds k` each) are listed by fold, not by the order
    the sweeps were named on the command line: a paired comparison reads them position by position."""
    sweeps = []
    for fold, dice in ((2, 0.92), (0, 0.90), (1, 0.91)):
        sweep = fake_sweep(tmp_path / f"comb{fold}", "quality_seg_combined", [{"val/dice_post": dice}])
        (sweep / "0" / "job.json").write_text(json.dumps({"fold": fold}))
        (sweep / "0" / "val_eval").mkdir()
        case = {"id": "segmentation_wbc_d2/dataset2/1", "dice": dice}
        (sweep / "0" / "val_eval" / "summary.json").write_text(json.dumps({"metric_per_case": [case]}))
        sweeps.append(str(sweep))
    assert quality.main(["--no-ensemble", "--collect", *sweeps]) == 0
    line = next(x for x in capsys.readouterr().out.split("Per set:")[1].splitlines() if x.startswith("| segmentation_wbc_d2 "))
    assert "| 0.9000 / 0.9100 / 0.9200 |" in line


def test_every_row_is_a_configured_experiment_of_its_own_task(quality, tmp_path: Path) -> None:
    """Each row composes, and its task_name is the experiment's name: `--collect` finds a sweep's row by it."""
    from helpers_models import compose_cfg

    for key, row in quality.ROWS.items():
        if row.members:  # an ensemble row: its members are rows
            assert not row.experiment and all(m in quality.ROWS and not quality.ROWS[m].members for m in row.members), key
            continue
        cfg = compose_cfg("train", [f"experiment={row.experiment}"], tmp_path / key)
        assert cfg.task_name == row.experiment, key
    scratch = compose_cfg("train", ["experiment=quality_cls_wbc_scratch"], tmp_path / "s")
    assert scratch.model.net.pretrained is False and scratch.data.crops.image_size == 160


def test_grey_twin_of_a_lodo_row_differs_only_in_its_input(quality, tmp_path: Path) -> None:
    from helpers_models import compose_cfg

    rgb = compose_cfg("train", ["experiment=quality_seg_lodo_d1"], tmp_path / "rgb")
    grey = compose_cfg("train", ["experiment=quality_seg_lodo_d1_grey"], tmp_path / "grey")
    assert (rgb.data.preprocess.grayscale, grey.data.preprocess.grayscale) == (False, True)
    assert grey.data.preprocess.clahe and grey.data.holdout == rgb.data.holdout == "segmentation_wbc_d1"
    assert (grey.model.net.in_channels, rgb.model.net.in_channels) == (1, 3)  # follows the input
    assert {**grey.model.net, "in_channels": 3} == dict(rgb.model.net) and grey.trainer.max_epochs == rgb.trainer.max_epochs


def test_randconv_twin_of_a_lodo_row_differs_only_in_its_training_callback(quality, tmp_path: Path) -> None:
    from helpers_models import compose_cfg

    rgb = compose_cfg("train", ["experiment=quality_seg_lodo_d2"], tmp_path)  # one output dir: paths compare equal
    twin = compose_cfg("train", ["experiment=quality_seg_lodo_d2_randconv"], tmp_path)
    assert twin.callbacks.randconv.p == 1.0 and "randconv" not in rgb.callbacks
    assert {k: v for k, v in twin.callbacks.items() if k != "randconv"} == dict(rgb.callbacks)
    assert twin.data == rgb.data and twin.model == rgb.model and twin.trainer == rgb.trainer
    assert quality.ROWS["seg_lodo_d2_randconv_grey"].members == ("seg_lodo_d2_randconv", "seg_lodo_d2_grey")


def member_sweep(root: Path, task: str, runs: dict[tuple[int, int], float], extra: tuple[str, ...] = ()) -> Path:
    """A LODO training sweep: one finished job per (seed, fold) with its held-out Dice."""
    for i, ((seed, fold), dice) in enumerate(runs.items()):
        job = root / str(i)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "config.yaml").write_text(f"task_name: {task}\n")
        overrides = [f"experiment={task}", f"data.fold={fold}", f"seed={seed}", *extra]
        (job / "job.json").write_text(json.dumps({"fold": fold, "overrides": overrides}))
        (job / "metrics.json").write_text(json.dumps({"val/dice_post": 0.97, "test/dice_post": dice}))
    return root


def test_ensemble_row_scores_its_members_runs_of_one_seed_and_fold_together(quality, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                           capsys: pytest.CaptureFixture) -> None:
    """seg_lodo_d1_both: the RGB and grey runs of the same seed and fold go to evaluate.py as one
    ensemble (a run of one member without a partner does not); the table reads the ensemble sweep like
    a training sweep, and a second --collect reuses it instead of evaluating again."""
    import quality_ensembles

    calls = []

    def fake_evaluate(members: list[Path], split: str, out: Path) -> dict:
        calls.append(([m.parent.name + "/" + m.name for m in members], split))
        return {f"{split}/dice_post": 0.80 if split == "test" else 0.96, "n_cases": 86}

    monkeypatch.setattr(quality_ensembles, "run_evaluate", fake_evaluate)
    monkeypatch.setattr(quality, "ROOT", tmp_path)
    extra = ("trainer.max_epochs=20",)
    rgb = member_sweep(tmp_path / "rgb", "quality_seg_lodo_d1", {(43, 0): 0.70, (43, 1): 0.72}, extra)
    grey = member_sweep(tmp_path / "grey", "quality_seg_lodo_d1_grey", {(43, 0): 0.81}, extra)
    assert quality.main(["--no-ensemble", "--collect", str(rgb), str(grey)]) == 0  # --no-ensemble: nothing evaluated, no row
    assert calls == [] and "RGB + grey" not in capsys.readouterr().out
    assert quality.main(["--collect", str(rgb), str(grey)]) == 0
    assert calls == [(["rgb/0", "grey/0"], "test"), (["rgb/0", "grey/0"], "val")]
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "RGB + grey + CLAHE segmenters as one ensemble" in x)
    assert "[trainer.max_epochs=20]" in line and "0.8000 (n=1) [below]" in line and "| 0.9600 (n=1) |" in line and "| 1 |" in line
    made = sorted((tmp_path / "outputs" / "quality").glob("seg_lodo_d1_both_s43_*"))
    assert len(made) == 1 and quality.row_key(made[0]) == "seg_lodo_d1_both"
    assert json.loads((made[0] / "0" / "job.json").read_text())["members"] == [str(rgb / "0"), str(grey / "0")]
    assert quality.main(["--collect", str(rgb), str(grey)]) == 0 and len(calls) == 2  # cached
    assert quality.main(["--collect", str(made[0])]) == 0  # the ensemble sweep alone is a row too
    assert "0.8000 (n=1)" in next(x for x in capsys.readouterr().out.splitlines()[::-1] if "as one ensemble" in x)


def test_ensemble_row_refuses_members_without_a_common_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import quality_ensembles

    rgb = member_sweep(tmp_path / "rgb", "quality_seg_lodo_d1", {(42, 0): 0.7})
    grey = member_sweep(tmp_path / "grey", "quality_seg_lodo_d1_grey", {(43, 0): 0.8})
    with pytest.raises(ValueError, match="no finished run of the same seed and fold"):
        quality_ensembles.build("seg_lodo_d1_both", [rgb, grey], tmp_path / "out", evaluate=lambda *a: {})


def test_ensemble_row_without_finished_member_runs_leaves_the_table_to_the_others(quality, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                                   capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(quality, "ROOT", tmp_path)
    rgb = member_sweep(tmp_path / "rgb", "quality_seg_lodo_d2", {(42, 0): 0.9})
    grey = member_sweep(tmp_path / "grey", "quality_seg_lodo_d2_grey", {(42, 0): 0.8})
    (grey / "0" / "metrics.json").unlink()  # the grey run did not finish
    results = [("seg_lodo_d2", [rgb], 0.0), ("seg_lodo_d2_grey", [grey], 0.0)]
    assert quality.ensemble_results(results, ["seg_lodo_d2_both"], run=True) == []
    assert "seg_lodo_d2_both: no finished run of seg_lodo_d2_grey shares a seed and fold with" in capsys.readouterr().err


def test_masked_twin_of_a_cross_pipeline_row_differs_only_in_its_crops(quality, tmp_path: Path) -> None:
    from helpers_models import compose_cfg

    plain = compose_cfg("train", ["experiment=quality_cross_pipeline_d2_to_d1"], tmp_path)
    twin = compose_cfg("train", ["experiment=quality_cross_pipeline_d2_to_d1_masked"], tmp_path)
    # a stage's `data` node is merged over the run's `data`: the twin adds one key to the classifier's
    assert plain.data.crops.masked is False and dict(twin.classification.data.crops) == {"masked": True}
    assert {k: v for k, v in twin.classification.data.items() if k != "crops"} == dict(plain.classification.data)
    assert twin.segmentation == plain.segmentation and twin.data == plain.data and twin.pipeline == plain.pipeline
    assert quality.ROWS["cross_pipe_d2_d1_pair"].members == ("cross_pipe_d2_d1", "cross_pipe_d2_d1_masked")


def test_masked_twin_of_the_in_domain_row_differs_only_in_its_crops(quality, tmp_path: Path) -> None:
    from helpers_models import compose_cfg

    plain = compose_cfg("train", ["experiment=quality_cls_wbc"], tmp_path)
    twin = compose_cfg("train", ["experiment=quality_cls_wbc_masked"], tmp_path)
    assert plain.data.crops.masked is False and twin.data.crops.masked is True
    twin.data.crops.masked = False
    assert twin.data == plain.data and twin.model == plain.model and twin.trainer == plain.trainer and twin.seed == plain.seed
    assert quality.ROWS["cls_wbc_pair"].members == ("cls_wbc", "cls_wbc_masked")


def test_classifier_pair_row_scores_one_pipeline_with_both_classifiers(quality, tmp_path: Path) -> None:
    """cross_pipe_*_pair: evaluate.py gets the first run's segmenter and both runs' classifiers, adapted as the runs
    adapt, on the test split only; the pipeline figures reach the ensemble job's metrics.json."""
    import quality_ensembles

    runs = []
    for name, seed in (("plain", 42), ("masked", 42)):
        job = tmp_path / name / "0"
        for stage in ("segmentation", "classification"):
            (job / stage).mkdir(parents=True)
        (job / ".hydra").mkdir()
        (job / ".hydra" / "config.yaml").write_text(f"task_name: x\npipeline:\n  adapt_bn: classifier\nseed: {seed}\n")
        (job / "job.json").write_text(json.dumps({"fold": 0, "overrides": [f"seed={seed}"]}))
        (job / "metrics.json").write_text("{}")
        runs.append(job)
    cmd = quality_ensembles.evaluate_command(runs, "test", tmp_path / "out")
    assert f"segmenter={runs[0] / 'segmentation'}" in cmd and "adapt_bn=classifier" in cmd and "split=test" in cmd
    assert f"classifier=[{runs[0] / 'classification'},{runs[1] / 'classification'}]" in cmd
    assert quality_ensembles.evaluate_command(runs, "val", tmp_path / "out") is None
    got = {"pipeline/cell_macro_f1": 0.47, "classification/test/macro_f1": 0.40, "segmentation/test/dice_post": 0.9, "split": "test"}
    sweep = quality_ensembles.build("cross_pipe_d1_d2_pair", [r.parent for r in runs], tmp_path / "ens",
                                    evaluate=lambda members, split, out: got if split == "test" else {})
    saved = json.loads((sweep / "0" / "metrics.json").read_text())
    assert saved == {k: v for k, v in got.items() if k != "split"}
    line = quality.table([("cross_pipe_d1_d2_pair", [sweep], 0.0)]).splitlines()[-1]
    assert "0.4700 (n=1)" in line and "plain + masked classifiers as one" in line
