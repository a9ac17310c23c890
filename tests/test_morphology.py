"""wbc.morphology: the features measure shape and relative colour (not pixels, not a lab's cast), and
the classifier round-trips through JSON exactly and refuses malformed files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers_models import fixed_morphology_model
from wbc.morphology import FEATURES, MorphologyClassifier, cell_features, nucleus_features, regularise_outline

F = {name: i for i, name in enumerate(FEATURES)}


def cell(lobes: int, scale: float = 1.0, cast: tuple[int, int, int] = (0, 0, 0), size: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """A pale background, a pink cytoplasm disk and a purple nucleus: one round blob or `lobes` small
    disks on a ring (a segmented neutrophil's nucleus), all lengths times `scale`."""
    n = int(size * scale)
    c = n // 2
    rgb = np.full((n, n, 3), (235, 225, 215), np.uint8)
    cv2.circle(rgb, (c, c), int(36 * scale), (215, 160, 170), -1)
    nucleus = np.zeros((n, n), np.uint8)
    if lobes == 1:
        cv2.circle(nucleus, (c, c), int(20 * scale), 1, -1)
    else:
        for k in range(lobes):
            a = 2 * np.pi * k / lobes
            cv2.circle(nucleus, (int(c + 14 * scale * np.cos(a)), int(c + 14 * scale * np.sin(a))), int(9 * scale), 1, -1)
    rgb[nucleus > 0] = (110, 40, 110)
    rgb = np.clip(rgb.astype(int) + np.array(cast), 0, 255).astype(np.uint8)
    return rgb, nucleus


def test_lobed_nucleus_reads_as_lobed_and_round_one_as_round():
    round_ = nucleus_features(*cell(1))
    lobed = nucleus_features(*cell(3))
    assert round_[F["lobes"]] == 1 and lobed[F["lobes"]] == 3
    assert round_[F["solidity"]] > 0.95 > 0.8 > lobed[F["solidity"]]
    assert round_[F["circularity"]] > lobed[F["circularity"]] + 0.2
    assert round_[F["thickness_mean"]] > lobed[F["thickness_mean"]]


def test_features_do_not_depend_on_magnification():
    small, large = nucleus_features(*cell(1)), nucleus_features(*cell(1, scale=2.5))
    shape = [F[k] for k in ("solidity", "circularity", "eccentricity", "extent", "thickness_mean", "thickness_max")]
    np.testing.assert_allclose(small[shape], large[shape], atol=0.06)


def test_colour_features_follow_the_cell_not_the_labs_cast():
    """A uniform colour cast (another lab's white balance) moves ring and nucleus alike: the features
    move by well under half of what the cytoplasm's own Lab colour moves (Lab is not linear in RGB)."""
    (rgb, nucleus), (cast_rgb, _) = cell(3), cell(3, cast=(20, -25, 20))
    plain, cast = nucleus_features(rgb, nucleus), nucleus_features(cast_rgb, nucleus)
    cytoplasm_px = (slice(60, 61), slice(90, 91))  # a pixel of the pink disk, outside the nucleus
    lab = [cv2.cvtColor(im[cytoplasm_px], cv2.COLOR_RGB2LAB).astype(float)[0, 0] for im in (rgb, cast_rgb)]
    for name, channel in (("ring_a_minus_nucleus", 1), ("ring_b_minus_nucleus", 2)):
        absolute = abs(lab[1][channel] - lab[0][channel])
        assert absolute > 10 and abs(plain[F[name]] - cast[F[name]]) < absolute / 2, name
    assert plain[F["ring_a_minus_nucleus"]] < 0  # pink cytoplasm is less red than the purple nucleus in Lab a*


def test_bad_inputs_are_named():
    rgb, nucleus = cell(1)
    with pytest.raises(ValueError, match="uint8 RGB"):
        nucleus_features(rgb.astype(np.float32), nucleus)
    with pytest.raises(ValueError, match="differ in size"):
        nucleus_features(rgb, nucleus[:-1])
    with pytest.raises(ValueError, match="at least 9"):
        nucleus_features(rgb, np.zeros_like(nucleus))
    with pytest.raises(ValueError, match="crop wider"):
        nucleus_features(rgb, np.ones_like(nucleus))


def test_outline_regularisation_fills_pale_gaps_and_notches_but_keeps_lobes():
    """A segmenter's nucleus with a pale hole and a one-pixel notch: regularised at 5 % of its diameter
    it measures as the clean nucleus does; separate lobes stay separate; 0 leaves the mask as it is."""
    rgb, clean = cell(1)
    rough = clean.copy()
    rough[58:62, 58:62] = 0  # a pale gap inside
    rough[60, 42:50] = 0  # a crack just inside the outline
    assert regularise_outline(rough, 0.0).sum() == rough.sum()
    np.testing.assert_array_equal(regularise_outline(rough, 0.05), clean)
    notched = clean.copy()
    notched[60, 40:50] = 0  # a one-pixel notch cut in from the outline
    assert (regularise_outline(notched, 0.05) != clean).sum() <= 2 < (notched != clean).sum()
    plain, smoothed = nucleus_features(rgb, rough), nucleus_features(rgb, rough, 0.05)
    expected = nucleus_features(rgb, clean, 0.05)
    assert plain[F["solidity"]] < expected[F["solidity"]] - 0.01
    np.testing.assert_allclose(smoothed, expected, atol=1e-9)
    lobed_rgb, lobed = cell(3)
    assert nucleus_features(lobed_rgb, lobed, 0.05)[F["lobes"]] == 3


def test_the_model_file_carries_its_outline_closing_and_measures_cells_with_it(tmp_path):
    """Fitted on regularised features, a model stores the closing; loaded, it measures a pipeline's
    cells with it. A file from before the key existed reads as 0 (as it was fitted); a bad value is named."""
    from wbc.postprocess import Instance

    x, y = _training_set()
    model = MorphologyClassifier.fit(x, y, ["lymphocyte", "neutrophil"], outline_closing=0.05)
    again = MorphologyClassifier.load(model.save(tmp_path / "m.json"))
    assert again.outline_closing == 0.05
    rgb, clean = cell(1)
    rough = clean.copy()
    rough[58:62, 58:62] = 0
    ys, xs = np.nonzero(rough)
    inst = Instance(label=1, bbox=(ys.min(), xs.min(), ys.max() + 1, xs.max() + 1), centroid=(ys.mean(), xs.mean()), area=int(rough.sum()))
    expected = again.predict_proba(cell_features(rgb, rough, [inst], 0.05)[0])
    np.testing.assert_allclose(again.cell_probabilities(rgb, rough, [inst], ["lymphocyte", "neutrophil"]), expected)
    assert not np.allclose(expected, again.predict_proba(cell_features(rgb, rough, [inst])[0]))
    old = tmp_path / "old.json"
    old.write_text(model.to_json().replace('"outline_closing": 0.05', '"unused": 0'))
    assert MorphologyClassifier.load(old).outline_closing == 0.0
    old.write_text(model.to_json().replace('"outline_closing": 0.05', '"outline_closing": "5%"'))
    with pytest.raises(ValueError, match=r"old.json: key 'outline_closing'"):
        MorphologyClassifier.load(old)


def _training_set() -> tuple[np.ndarray, list[int]]:
    x, y = [], []
    for k in range(6):
        for lobes, label in ((1, 0), (3, 1)):
            x.append(nucleus_features(*cell(lobes, scale=0.8 + 0.1 * k)))
            y.append(label)
    return np.array(x), y


def test_classifier_separates_lobed_from_round_and_round_trips_through_json(tmp_path):
    x, y = _training_set()
    model = MorphologyClassifier.fit(x, y, ["lymphocyte", "neutrophil"])
    p = model.predict_proba(x)
    assert p.shape == (len(y), 2) and np.allclose(p.sum(1), 1.0)
    assert (p.argmax(1) == np.array(y)).all()
    path = model.save(tmp_path / "morphology.json")
    again = MorphologyClassifier.load(path)
    assert again.classes == ("lymphocyte", "neutrophil")
    np.testing.assert_array_equal(again.predict_proba(x), p)


def test_classifier_refuses_a_class_without_cells_and_malformed_files(tmp_path):
    x, y = _training_set()
    with pytest.raises(ValueError, match=r"no training cells of \['monocyte'\]"):
        MorphologyClassifier.fit(x, y, ["lymphocyte", "neutrophil", "monocyte"])
    model = MorphologyClassifier.fit(x, y, ["lymphocyte", "neutrophil"])
    bad = tmp_path / "bad.json"
    bad.write_text(model.to_json().replace('"coef"', '"coefficients"'))
    with pytest.raises(ValueError, match=r"bad.json: key 'coef'"):
        MorphologyClassifier.load(bad)
    bad.write_text('{"kind": "something else"}')
    with pytest.raises(ValueError, match="not a morphology classifier"):
        MorphologyClassifier.load(bad)


# --------------------------------------------------------------------------- in the pipeline (predict.py morphology=)
@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    from tests.helpers_models import tiny_modules

    return tiny_modules(tmp_path_factory.mktemp("models"))


def test_pipeline_averages_the_morphology_probabilities_cell_by_cell(modules):
    from tests.helpers_data import cell as smear_cell
    from tests.helpers_models import DiscSegmenter
    from wbc.inference import CellPipeline

    _, clf = modules
    pipe = CellPipeline(DiscSegmenter(dict(clf.hparams.data_info)), clf)
    rgb = smear_cell(64)[0]
    plain = pipe(rgb)
    assert len(plain.instances) == 1
    model = fixed_morphology_model(pipe.classes)
    pipe.use_morphology(model, "m.json")
    fused = pipe(rgb)
    morph = model.cell_probabilities(rgb, plain.labels, plain.instances, pipe.classes)
    assert np.isfinite(morph).all()
    np.testing.assert_allclose(fused.class_probs, (plain.class_probs + morph) / 2, atol=1e-6)
    assert not np.allclose(fused.class_probs, plain.class_probs)
    with pytest.raises(ValueError, match="differ from the classifier's"):
        pipe.use_morphology(fixed_morphology_model([*pipe.classes[:-1], "basophil"]))

    alone = CellPipeline(DiscSegmenter(dict(clf.hparams.data_info)), None)
    alone.use_morphology(model)
    assert alone.classes == list(model.classes)
    np.testing.assert_allclose(alone(rgb).class_probs, model.cell_probabilities(rgb, plain.labels, plain.instances, model.classes), atol=1e-6)


def test_predict_cli_reads_the_model_file_and_records_it(tmp_path, modules):
    import json

    from tests.helpers_data import cell as smear_cell
    from tests.helpers_data import write_image
    from tests.helpers_models import compose_cfg, save_checkpoint
    from wbc.cli import predict

    seg, clf = modules
    seg_ckpt, cls_ckpt = save_checkpoint(seg, tmp_path / "seg.ckpt"), save_checkpoint(clf, tmp_path / "cls.ckpt")
    image = write_image(tmp_path / "in" / "smear.png", smear_cell(64)[0])
    path = fixed_morphology_model(list(clf.hparams.data_info["classes"])).save(tmp_path / "morphology.json")
    for out, extra in ((tmp_path / "plain", []), (tmp_path / "fused", [f"morphology={path}"])):
        predict.predict(compose_cfg("predict.yaml", [f"input={image}", f"segmenter={seg_ckpt}", f"classifier={cls_ckpt}", *extra], out))
    assert json.loads((tmp_path / "plain" / "predictions.json").read_text())["morphology"] is None
    assert json.loads((tmp_path / "fused" / "predictions.json").read_text())["morphology"] == str(path)
    with pytest.raises(FileNotFoundError, match="morphology=.*nowhere.json: no such file"):
        predict.predict(compose_cfg("predict.yaml", [f"input={image}", f"segmenter={seg_ckpt}", f"classifier={cls_ckpt}",
                                                     f"morphology={tmp_path / 'nowhere.json'}"], tmp_path / "missing"))


def test_evaluate_refuses_morphology_where_no_pipeline_is_scored(tmp_path):
    """evaluate.py morphology= acts on the full pipeline (test split): on another split it is one clear
    error before anything loads, not silently ignored."""
    from wbc.evaluation.runs import evaluate_spec

    spec = {"segmentation": str(tmp_path / "seg"), "classification": str(tmp_path / "cls")}
    with pytest.raises(ValueError, match="morphology=m.json acts on the full pipeline"):
        evaluate_spec(spec, "val", tmp_path / "out", morphology="m.json")


def test_a_cell_the_model_can_not_measure_keeps_the_classifiers_probabilities(modules, caplog):
    import logging

    from tests.helpers_data import cell as smear_cell
    from tests.helpers_models import DiscSegmenter
    from wbc.inference import CellPipeline

    class Unmeasurable:
        classes = ("a",)

        def cell_probabilities(self, rgb, labels, instances, classes):
            return np.full((len(instances), len(classes)), np.nan)

    _, clf = modules
    pipe = CellPipeline(DiscSegmenter(dict(clf.hparams.data_info)), clf)
    rgb = smear_cell(64)[0]
    plain = pipe(rgb)
    pipe.morphology = Unmeasurable()
    with caplog.at_level(logging.INFO, logger="wbc"):
        kept = pipe(rgb)
    np.testing.assert_array_equal(kept.class_probs, plain.class_probs)
    assert "1 of 1 cells could not be measured" in caplog.text


# --------------------------------------------------------------------------- per-cell measurements in the outputs (QuPath habit)
def test_predict_writes_each_cells_nucleus_measurements_to_csv_and_geojson(tmp_path, modules):
    """predict.py's cell table and GeoJSON carry the nucleus measurements (wbc.morphology.FEATURES) of
    each cell as measured on the written label map; a round disc reads as one round lobe."""
    import csv
    import json

    from tests.helpers_models import DiscSegmenter
    from wbc.data.imageio import read_rgb
    from wbc.inference import CellPipeline
    from wbc.morphology import cell_measurements
    from wbc.predict_io import predict_images

    _, clf = modules
    pipe = CellPipeline(DiscSegmenter(dict(clf.hparams.data_info), radius=0.15), clf)
    rgb, _ = cell(1, size=96)
    path = tmp_path / "in" / "round.png"
    path.parent.mkdir()
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    rows, failures = predict_images(pipe, [path], out)
    assert failures == [] and len(rows) == 1
    with open(out / "predictions.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert set(FEATURES) <= set(table[0])
    assert float(table[0]["lobes"]) == 1.0
    assert float(table[0]["solidity"]) > 0.9 and float(table[0]["circularity"]) > 0.8
    res = pipe(read_rgb(path))
    expected = cell_measurements(read_rgb(path), res.labels, res.instances)[0]
    np.testing.assert_allclose([float(table[0][k]) for k in FEATURES], expected, atol=1e-5)
    geo = json.loads((out / "geojson" / "round.geojson").read_text())
    measured = geo["features"][0]["properties"]["measurements"]
    assert measured["solidity"] == pytest.approx(float(table[0]["solidity"]), abs=1e-5)


def test_cell_rows_leave_an_unmeasurable_cell_empty_and_refuse_a_wrong_shape():
    from wbc.cell_outputs import cell_rows, cells_csv
    from wbc.postprocess import Instance

    inst = [Instance(label=1, bbox=(0, 0, 4, 4), centroid=(2.0, 2.0), area=16)]
    row = cell_rows(inst, [], measurements=np.full((1, len(FEATURES)), np.nan))[0]
    assert all(row[k] is None for k in FEATURES)
    import csv

    written = next(csv.DictReader(cells_csv([row], []).decode().splitlines()))
    assert [written[k] for k in FEATURES] == [""] * len(FEATURES) and written["area"] == "16"
    with pytest.raises(ValueError, match="measurements of shape"):
        cell_rows(inst, [], measurements=np.zeros((2, len(FEATURES))))


# --------------------------------------------------------------------------- fit_morphology.py
def test_fit_morphology_writes_a_model_predict_can_use_and_scores_the_fold(make_cfg, tmp_path):
    """fit_morphology.py on the tiny synthetic set: morphology.json with the data config's classes and
    the configured outline closing, metrics.json with the fold's validation figure; bad keys are named."""
    import json

    from wbc.cli.fit_morphology import fit_morphology

    cfg = make_cfg(["outline_closing=0.1", "test=true"], config_name="fit_morphology.yaml")
    metrics, objects = fit_morphology(cfg)
    out = Path(cfg.paths.output_dir)
    model = MorphologyClassifier.load(out / "morphology.json")
    assert model.classes == tuple(cfg.data.classes) and model.outline_closing == 0.1
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)
    assert metrics["train/cells"] > 0 and metrics["val/cells"] > 0 and metrics["test/cells"] > 0
    assert 0 <= metrics["val/macro_f1"] <= 1
    both = make_cfg(["fit_on=train+val"], config_name="fit_morphology.yaml", output_dir=tmp_path / "all")
    more, _ = fit_morphology(both)
    assert more["train/cells"] == metrics["train/cells"] + metrics["val/cells"] and "val/macro_f1" not in more
    # the postprocess node finds the cells (as train.py's classification data), outlines as drawn by default
    assert objects["datamodule"].postprocess.opening_kernel == 0
    _, opened = fit_morphology(make_cfg(["postprocess.opening_kernel=3"], config_name="fit_morphology.yaml", output_dir=tmp_path / "open"))
    assert opened["datamodule"].postprocess.opening_kernel == 3
    for key, value, expected in (("fit_on", "everything", "fit_on='everything'"), ("outline_closing", "0.7", r"outline_closing=0.7"),
                                 ("c", "0", "c=0")):
        with pytest.raises(ValueError, match=expected):
            fit_morphology(make_cfg([f"{key}={value}"], config_name="fit_morphology.yaml", output_dir=tmp_path / key))


def test_cells_measured_on_threads_give_the_serial_numbers_in_order():
    """cell_features measures cells on OpenCV's thread count (at most MAX_MEASURE_THREADS): the rows are
    those of one thread, cell for cell, including a cell that can not be measured (None)."""
    from wbc.postprocess import PostprocessParams, extract_instances

    tiles = [cell(lobes, scale) for lobes, scale in ((1, 1.0), (3, 1.0), (4, 0.8), (1, 0.7), (2, 1.0), (5, 1.0))]
    side = max(t[0].shape[0] for t in tiles)
    field = np.full((side, side * len(tiles), 3), 235, np.uint8)
    mask = np.zeros(field.shape[:2], np.uint8)
    for k, (rgb, nuc) in enumerate(tiles):
        n = rgb.shape[0]
        field[:n, k * side : k * side + n], mask[:n, k * side : k * side + n] = rgb, nuc
    mask[0:2, 0:2] = 1  # a speck too small to measure
    labels, instances = extract_instances(mask.astype(np.float32), PostprocessParams(opening_kernel=0, watershed=False, min_area=1, clear_border=False))
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(1)
        serial = cell_features(field, labels, instances)
        cv2.setNumThreads(4)
        threaded = cell_features(field, labels, instances)
    finally:
        cv2.setNumThreads(before)
    assert len(serial) == len(instances) >= 7 and sum(f is None for f in serial) >= 1
    assert [f is None for f in serial] == [f is None for f in threaded]
    assert all(np.array_equal(a, b) for a, b in zip(serial, threaded) if a is not None)
