"""Fold ensembles: probabilities averaged over fold checkpoints, in evaluate.py (each member and the
ensemble scored), in predict.py / CellPipeline (segmenters and classifiers averaged), from a list
of checkpoints or a sweep dir of fold runs. Untrained tiny models (two seeds): no training needed
to check the averaging numerically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from tests.helpers_data import cell, write_image
from tests.helpers_models import compose_cfg, save_checkpoint, tiny_modules
from wbc.cli import evaluate
from wbc.ensemble import ClassifierEnsemble, SegmentationEnsemble, member_checkpoints
from wbc.rundir import is_sweep_dir

pytestmark = pytest.mark.usefixtures("one_thread")


def _fake_pipeline_run(run: Path, fold: int, seg, clf) -> None:
    """A pipeline fold run as train.py writes it: .hydra/config.yaml, metrics.json and one
    sub-run per stage with its best checkpoint."""
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"stage": "pipeline", "data": {"fold": fold}}), run / ".hydra" / "config.yaml")
    for stage, module in (("segmentation", seg), ("classification", clf)):
        ckpt = save_checkpoint(module, run / stage / "checkpoints" / "epoch_000.ckpt")
        (run / stage / "metrics.json").write_text(json.dumps({"best_checkpoint": str(ckpt)}))
    (run / "metrics.json").write_text(json.dumps({"pipeline/macro_f1": 0.5}))


def probs(path: Path) -> np.ndarray:
    """The p_<class> columns of an evaluate.py predictions.csv."""
    lines = path.read_text().splitlines()
    cols = [i for i, h in enumerate(lines[0].split(",")) if h.startswith("p_")]
    return np.asarray([[float(line.split(",")[i]) for i in cols] for line in lines[1:]])


@pytest.fixture(scope="module")
def folds(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two 'folds' (untrained, seeds 0 and 1) as a sweep dir of pipeline runs, plus a failed job."""
    tmp = tmp_path_factory.mktemp("ensemble")
    seg_a, clf_a = tiny_modules(tmp / "a", seed=0)
    seg_b, clf_b = tiny_modules(tmp / "b", seed=1)
    sweep = tmp / "sweep"
    _fake_pipeline_run(sweep / "0", 0, seg_a, clf_a)
    _fake_pipeline_run(sweep / "1", 1, seg_b, clf_b)
    (sweep / "2").mkdir()
    (sweep / "2" / "FAILED").write_text("SplitError: data.fold=7 is out of range\n")
    return {"sweep": sweep, "seg": (seg_a, seg_b), "clf": (clf_a, clf_b), "tmp": tmp}


def test_ensemble_modules_average_member_probabilities(folds) -> None:
    (seg_a, seg_b), (clf_a, clf_b) = folds["seg"], folds["clf"]
    seg = SegmentationEnsemble([seg_a, seg_b], ["fold0", "fold1"]).eval()
    x = torch.rand(3, 3, 32, 32)
    pa, pb = seg_a.predict_probability(x), seg_b.predict_probability(x)
    assert not torch.allclose(pa, pb)  # the members differ, so the check means something
    assert torch.allclose(seg.predict_probability(x), (pa + pb) / 2, atol=1e-7)
    assert seg.hparams.data_info == seg_a.hparams.data_info and seg.hparams.stage == "segmentation"
    clf = ClassifierEnsemble([clf_a, clf_b]).eval()
    p = clf.predict_proba(x)
    assert torch.allclose(p, (clf_a.predict_proba(x) + clf_b.predict_proba(x)) / 2, atol=1e-7)
    assert torch.allclose(p.sum(1), torch.ones(3)) and clf.classes == clf_a.classes


def test_ensemble_refuses_members_trained_on_other_inputs(folds) -> None:
    seg_a = folds["seg"][0]
    seg_big, clf_big = tiny_modules(folds["tmp"] / "big", ["data.image_size=48"], seed=2)
    with pytest.raises(ValueError, match=r"data_info\.image_size"):
        SegmentationEnsemble([seg_a, seg_big])
    with pytest.raises(ValueError, match="expected 'segmentation'"):
        SegmentationEnsemble([seg_a, clf_big])


def test_a_postprocessing_key_a_member_predates_is_its_default_not_a_disagreement(folds) -> None:
    """A checkpoint saved before `lobe_gap` existed was trained with its default (0: off): it averages
    with today's members; a member that really used another value is still refused."""
    import copy

    seg_a, seg_b = folds["seg"]
    assert seg_a.hparams.data_info["postprocess"]["lobe_gap"] == 0.0
    old = copy.deepcopy(seg_b)
    del old.hparams.data_info["postprocess"]["lobe_gap"]
    assert SegmentationEnsemble([seg_a, old]).hparams.data_info["postprocess"] == seg_a.hparams.data_info["postprocess"]
    other = copy.deepcopy(seg_b)
    other.hparams.data_info["postprocess"]["lobe_gap"] = 3.0
    with pytest.raises(ValueError, match=r"data_info\.postprocess"):
        SegmentationEnsemble([old, other])


def test_sweep_dir_members_are_finished_folds(folds) -> None:
    sweep = folds["sweep"]
    assert is_sweep_dir(sweep) and not is_sweep_dir(sweep / "0")
    # an evaluate.py output kept in the sweep (metrics.json, .hydra/, no checkpoints) is not a member
    (sweep / "ensemble_test" / ".hydra").mkdir(parents=True, exist_ok=True)
    (sweep / "ensemble_test" / "metrics.json").write_text("{}")
    members = member_checkpoints(sweep, "segmentation")
    assert [n for n, _ in members] == ["fold0", "fold1"]  # the failed job 2 is left out
    assert [c for _, c in members] == [sweep / j / "segmentation" / "checkpoints" / "epoch_000.ckpt" for j in ("0", "1")]
    assert [c.parent.parent.name for _, c in member_checkpoints(sweep, "classification")] == ["classification"] * 2


def test_evaluate_segmentation_ensemble_scores_members_and_mean(folds, make_eval_cfg, tmp_path: Path) -> None:
    """evaluate.py ckpt_path=[a,b]: each member alone, then the ensemble, whose probabilities are
    the members' mean (checked per image, and through its per-case scores)."""
    from wbc.evaluation.segmentation import evaluate_segmentation, predict_probabilities

    sweep = folds["sweep"]
    ckpts = [sweep / j / "segmentation" / "checkpoints" / "epoch_000.ckpt" for j in ("0", "1")]
    metrics, out = evaluate.evaluate(make_eval_cfg(f"[{ckpts[0]},{ckpts[1]}]", "data=synthetic_tiny", "num_overlays=1"))
    ens, dm = out["module"], out["datamodule"]
    assert isinstance(ens, SegmentationEnsemble) and ens.names == ["fold0", "fold1"]
    ds = dm.datasets["test"]
    pa, pb = (predict_probabilities(m, ds) for m in folds["seg"])
    pe = predict_probabilities(ens, ds)
    for a, b, e in zip(pa, pb, pe):
        np.testing.assert_allclose(e, (a + b) / 2, atol=1e-6)
    eval_dir = tmp_path / "eval"
    saved = json.loads((eval_dir / "summary.json").read_text())
    expected = evaluate_segmentation(folds["seg"][0], dm, "test", None, None, 0, probabilities=[(a + b) / 2 for a, b in zip(pa, pb)])
    assert [c["dice_raw"] for c in saved["metric_per_case"]] == pytest.approx([c["dice_raw"] for c in expected["metric_per_case"]], nan_ok=True)
    assert saved["n_cases"] == len(ds)
    table = json.loads((eval_dir / "ensemble_summary.json").read_text())
    assert [r["member"] for r in table["members"]] == ["fold0", "fold1"]
    for r, probs, m in zip(table["members"], (pa, pb), ("fold0", "fold1")):
        own = json.loads((eval_dir / "members" / m / "summary.json").read_text())
        alone = evaluate_segmentation(folds["seg"][0], dm, "test", None, None, 0, probabilities=probs)
        assert own["mean"]["dice_raw"] == pytest.approx(alone["mean"]["dice_raw"], nan_ok=True)
        assert r["test/dice_raw_fullres"] == pytest.approx(alone["mean"]["dice_raw"], nan_ok=True)
    key = "test/dice_raw_fullres"
    assert table["members_mean"][key] == pytest.approx(np.mean([r[key] for r in table["members"]]))
    assert table["ensemble"][key] == pytest.approx(metrics[key]) == pytest.approx(saved["mean"]["dice_raw"], nan_ok=True)
    assert (eval_dir / "ensemble_summary.csv").read_text().splitlines()[-1].startswith("ensemble,")
    assert json.loads((eval_dir / "metrics.json").read_text())["members"] == ["fold0", "fold1"]


def test_evaluate_classifier_ensemble_from_sweep_runs(folds, make_eval_cfg, tmp_path: Path) -> None:
    """A list of classification run dirs: crops' class probabilities averaged (predictions.csv)."""
    sweep = folds["sweep"]
    runs = [sweep / j / "classification" for j in ("0", "1")]
    cfg = make_eval_cfg(f"[{runs[0]},{runs[1]}]", "data=synthetic_tiny", "data._target_=datamodules.classification.ClassificationDataModule")
    metrics, out = evaluate.evaluate(cfg)
    assert isinstance(out["module"], ClassifierEnsemble)
    eval_dir = tmp_path / "eval"

    members = [probs(eval_dir / "members" / m / "predictions.csv") for m in ("fold0", "fold1")]
    np.testing.assert_allclose(probs(eval_dir / "predictions.csv"), (members[0] + members[1]) / 2, atol=2e-5)  # CSV: 5 decimals
    assert "test/macro_f1" in metrics and json.loads((eval_dir / "ensemble_summary.json").read_text())["stage"] == "classification"


def test_pipeline_and_predict_with_a_sweep_dir(folds, tmp_path: Path) -> None:
    """predict.py ensemble=<sweep dir>: fold segmenters and classifiers averaged, same CellPipeline."""
    from wbc.cli import predict
    from wbc.inference import CellPipeline

    sweep = folds["sweep"]
    pipe = CellPipeline.from_checkpoints(sweep, sweep)
    assert isinstance(pipe.segmenter, SegmentationEnsemble) and isinstance(pipe.classifier, ClassifierEnsemble)
    rgb, _ = cell(64, seed=3)
    singles = [CellPipeline(s, c) for s, c in zip(folds["seg"], folds["clf"])]
    np.testing.assert_allclose(pipe.segment(rgb), (singles[0].segment(rgb) + singles[1].segment(rgb)) / 2, atol=1e-6)
    crops = [cell(32, seed=s)[0] for s in (4, 5)]
    np.testing.assert_allclose(pipe.classify(crops), (singles[0].classify(crops) + singles[1].classify(crops)) / 2, atol=1e-6)

    image = write_image(tmp_path / "in" / "smear.png", cell(64, seed=6)[0])
    cfg = compose_cfg("predict.yaml", [f"input={image}", f"ensemble={sweep}", "extras.print_config=false"], tmp_path / "out")
    counts, objects = predict.predict(cfg)
    assert isinstance(objects["pipeline"].segmenter, SegmentationEnsemble) and counts["failed"] == 0
    assert (tmp_path / "out" / "predictions.json").is_file() and (tmp_path / "out" / "masks" / "smear.png").is_file()


def test_segmenters_of_different_inputs_average_each_on_its_own(folds, make_eval_cfg, tmp_path: Path) -> None:
    """An RGB and a grey + CLAHE segmenter (each wins on another lab's smears) average as one model: it takes
    both preprocessings stacked along the channels, the pipeline and evaluate.py give each member its own, and
    classifiers of different inputs average too (tests/test_ensemble_inputs.py)."""
    from wbc.data.transforms import Preprocess
    from wbc.evaluation.segmentation import evaluate_segmentation, predict
    from wbc.inference import CellPipeline

    seg_rgb, clf_rgb = folds["seg"][0], folds["clf"][0]
    seg_grey, clf_grey = tiny_modules(folds["tmp"] / "grey", ["data.preprocess.grayscale=true", "data.preprocess.clahe=true"], seed=3)
    ens = SegmentationEnsemble([seg_rgb, seg_grey, seg_rgb], ["rgb", "grey", "rgb2"]).eval()
    grey_pre = Preprocess.from_config(seg_grey.hparams.data_info["preprocess"])
    assert ens.member_group == [0, 1, 0] and ens.hparams.data_info["input_groups"][1] == grey_pre.to_dict()
    x = torch.rand(2, 4, 32, 32)
    pa, pg = seg_rgb.predict_probability(x[:, :3]), seg_grey.predict_probability(x[:, 3:])
    assert not torch.allclose(pa, pg)
    assert torch.allclose(ens.predict_probability(x), (2 * pa + pg) / 3, atol=1e-6)  # the mean over members
    with pytest.raises(ValueError, match=r"takes 4 channels \(its members' inputs \[3, 1\]"):
        ens.predict_probability(x[:, :3])
    assert ClassifierEnsemble([clf_rgb, clf_grey]).member_group == [0, 1]

    rgb = cell(40, seed=5)[0]
    both = CellPipeline(SegmentationEnsemble([seg_rgb, seg_grey]), None).segment(rgb)
    alone = [CellPipeline(m, None).segment(rgb) for m in (seg_rgb, seg_grey)]
    np.testing.assert_allclose(both, (alone[0] + alone[1]) / 2, atol=1e-6)

    ckpts = [save_checkpoint(m, tmp_path / f"{n}.ckpt") for n, m in (("rgb", seg_rgb), ("grey", seg_grey))]
    metrics, out = evaluate.evaluate(make_eval_cfg(f"[{ckpts[0]},{ckpts[1]}]", "data=synthetic_tiny"))
    dm_rgb = out["datamodule"]
    _, own = evaluate.evaluate(make_eval_cfg(ckpts[1], "data=synthetic_tiny", f"hydra.run.dir={tmp_path / 'grey_alone'}"))
    probs = [predict(seg_rgb, dm_rgb, "test"), predict(seg_grey, own["datamodule"], "test")]  # the grey one on grey images
    expected = evaluate_segmentation(None, dm_rgb, "test", out["postprocess"], None, 0, probabilities=[(a + b) / 2 for a, b in zip(*probs)])
    assert metrics["test/dice_raw_fullres"] == pytest.approx(expected["mean"]["dice_raw"], nan_ok=True)


def test_masked_and_plain_classifiers_average_each_on_its_own_view(folds, make_eval_cfg, tmp_path: Path) -> None:
    """A classifier trained on nucleus-masked crops and one on plain crops average as one model: its crops
    stack both views (data.crops.masked="both"), each member reads its own in the pipeline and in
    evaluate.py, people see the plain view, and crops of another geometry are still refused."""
    from wbc.cells import CropSpec, cell_crops, instance_crops, shown
    from wbc.inference import CellPipeline
    from wbc.postprocess import extract_instances

    seg, plain = folds["seg"][0], folds["clf"][0]
    _, masked = tiny_modules(folds["tmp"] / "masked", ["data.crops.masked=true"], seed=4)
    ens = ClassifierEnsemble([plain, masked, plain], ["plain", "masked", "plain2"]).eval()
    assert ens.hparams.data_info["crops"]["masked"] == "both" and ens.member_group == [0, 1, 0]
    assert [i["crops"]["masked"] for i in ens.group_infos()] == [False, True]
    x = torch.rand(2, 6, 32, 32)
    pp, pm = plain.predict_proba(x[:, :3]), masked.predict_proba(x[:, 3:])
    assert not torch.allclose(pp, pm)
    assert torch.allclose(ens.predict_proba(x), (2 * pp + pm) / 3, atol=1e-6)
    for wrong in (x[:, :3], x[:, :4]):
        with pytest.raises(ValueError, match=r"takes 6 channels \(its members' inputs \[3\], stacked, plain then nucleus-masked"):
            ens.predict_proba(wrong)
    _, other = tiny_modules(folds["tmp"] / "other_geometry", ["data.crops.masked=true", "data.crops.size=24"], seed=5)
    with pytest.raises(ValueError, match=r"data_info\.crops.*only `masked` may differ"):
        ClassifierEnsemble([plain, other])
    with pytest.raises(InstantiationException, match="stacks two views of a crop"):  # hydra's, holding the module's ValueError
        tiny_modules(tmp_path / "train_both", ["data.crops.masked=both"])
    with pytest.raises(ValueError, match="data.crops.masked must be true, false or 'both'"):
        CropSpec.from_config({"masked": "yes"})

    # the crops: plain view, then the cell's nucleus alone
    rgb, nucleus = cell(48, seed=7)
    labels, instances = extract_instances(nucleus > 0)
    both, = instance_crops(rgb, labels, instances, 32, masked="both")
    alone = [instance_crops(rgb, labels, instances, 32, masked=m)[0] for m in (False, True)]
    assert both.shape == (32, 32, 6) and (alone[1] == 0).any()
    np.testing.assert_array_equal(both, np.concatenate(alone, axis=2))
    np.testing.assert_array_equal(shown(both), alone[0])

    singles = [CellPipeline(seg, m)(rgb) for m in (plain, masked)]
    res = CellPipeline(seg, ClassifierEnsemble([plain, masked]))(rgb)
    assert len(res.crops) == len(singles[0].crops) > 0 and res.crops[0].shape[2] == 6
    np.testing.assert_allclose(res.class_probs, (singles[0].class_probs + singles[1].class_probs) / 2, atol=1e-6)
    spec = CropSpec.from_config(ens.hparams.data_info["crops"])
    assert spec.views == 2 and cell_crops(rgb, nucleus > 0, spec)[2][0].shape[2] == 6

    # evaluate.py on ground-truth crops: each member scored on its own crops, the ensemble their mean
    ckpts = [save_checkpoint(m, tmp_path / f"{n}.ckpt") for n, m in (("plain", plain), ("masked", masked))]
    cls_data = ("data=synthetic_tiny", "data._target_=datamodules.classification.ClassificationDataModule")
    metrics, out = evaluate.evaluate(make_eval_cfg(f"[{ckpts[0]},{ckpts[1]}]", *cls_data))
    eval_dir = tmp_path / "eval"

    members = [probs(eval_dir / "members" / m / "predictions.csv") for m in ("member0", "member1")]
    assert not np.allclose(members[0], members[1], atol=1e-3)
    np.testing.assert_allclose(probs(eval_dir / "predictions.csv"), (members[0] + members[1]) / 2, atol=2e-5)
    assert "test/macro_f1" in metrics and isinstance(out["module"], ClassifierEnsemble)
    evaluate.evaluate(make_eval_cfg(ckpts[1], *cls_data))  # the masked one alone (same output dir)
    np.testing.assert_allclose(members[1], probs(eval_dir / "predictions.csv"), atol=1e-5)


def test_an_ensemble_scored_on_a_validation_split_says_why_the_figure_favours_it(folds, make_eval_cfg, tmp_path: Path) -> None:
    """split=val: members of two folds each trained on the other's validation images, and classifiers'
    temperatures were fitted on their own validation crops: each is a caveat, logged and in metrics.json."""
    sweep = folds["sweep"]
    runs = [sweep / j / "classification" for j in ("0", "1")]
    cfg = make_eval_cfg(f"[{runs[0]},{runs[1]}]", "data=synthetic_tiny", "data._target_=datamodules.classification.ClassificationDataModule", "split=val")
    evaluate.evaluate(cfg)
    caveats = json.loads((tmp_path / "eval" / "metrics.json").read_text())["caveats"]
    assert len(caveats) == 1 and "members of folds [0, 1]" in caveats[0]

    twin = tmp_path / "twin" / "0"  # seed twins of fold 0, one with a fitted temperature: no fold caveat, a temperature one
    shutil.copytree(sweep / "0", twin)
    ckpt = twin / "classification" / "checkpoints" / "epoch_000.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    state["state_dict"]["temperature"] = torch.tensor(2.0)
    torch.save(state, ckpt)
    cfg = make_eval_cfg(f"[{runs[0]},{twin / 'classification'}]", "data=synthetic_tiny",
                        "data._target_=datamodules.classification.ClassificationDataModule", "split=val")
    evaluate.evaluate(cfg)
    caveats = json.loads((tmp_path / "eval" / "metrics.json").read_text())["caveats"]
    assert len(caveats) == 1 and "temperatures" in caveats[0] and "seed_ensemble.py" in caveats[0]
    cfg = make_eval_cfg(f"[{runs[0]},{twin / 'classification'}]", "data=synthetic_tiny", "data._target_=datamodules.classification.ClassificationDataModule")
    evaluate.evaluate(cfg)  # the test split: nothing to say
    assert "caveats" not in json.loads((tmp_path / "eval" / "metrics.json").read_text())


def test_the_ensembles_own_temperature_fitted_out_of_fold_is_a_caveat_on_the_validation_split() -> None:
    """Members trained without calibration (T = 1), but the ensemble's temperature and review threshold fitted
    on their out-of-fold crops (calibrate_from_oof): scored on those crops, that is a caveat too."""
    from types import SimpleNamespace

    from wbc.evaluation.runs import validation_caveats

    members = [SimpleNamespace(temperature=1.0), SimpleNamespace(temperature=1.0)]
    ens = SimpleNamespace(calibration_source="out-of-fold predictions of 2 runs (40 crops)")
    assert validation_caveats("val", [], members, ens)[0].startswith("the members are averaged after their temperatures")
    assert validation_caveats("val", [], members, SimpleNamespace(calibration_source="members' thresholds")) == []
    assert validation_caveats("test", [], members, ens) == []
