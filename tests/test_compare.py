"""Scoring predict runs on a lab's own annotated cells (wbc.evaluation.annotated, `python compare.py`): points
matched to the cell under them, missed cells wrong, a paired verdict that says "cannot tell" when the cells
cannot decide, and one clear error for every kind of bad annotation file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from wbc.annotations import NOT_FOUND, AnnotationError, match_cell
from wbc.evaluation.annotated import compare, paired, sample_template, score

CLASSES = ["neutrophil", "lymphocyte", "monocyte"]


def box(cx: float, cy: float, r: float = 5, cls: str = "neutrophil", cell: int = 1, image: str = "/lab/a.png") -> dict:
    return {"image": image, "source": image, "output_stem": Path(image).stem, "cell": cell, "class": cls,
            "centroid_x": cx, "centroid_y": cy, "bbox_x0": cx - r, "bbox_y0": cy - r, "bbox_x1": cx + r, "bbox_y1": cy + r}


def write_run(path: Path, cells: list[dict], images: list[str], status: str = "complete") -> Path:
    """A predict.py output dir as far as compare reads it (predictions.json)."""
    path.mkdir(parents=True)
    imgs = [{"image": i, "source": i, "output_stem": Path(i).stem, "cells": sum(c["image"] == i for c in cells)} for i in images]
    (path / "predictions.json").write_text(json.dumps({"status": status, "classes": CLASSES, "images": imgs, "cells": cells, "failed": []}))
    return path


def write_points(path: Path, rows: list[tuple], header: tuple = ("image", "x", "y", "label")) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def lab(tmp_path: Path, n: int, wrong_ref: int, wrong_new: int, missed_new: int = 0) -> tuple[Path, Path, Path]:
    """n cells on one image each; the reference calls the first wrong_ref wrong, the candidate the first
    wrong_new wrong and misses the last missed_new."""
    images = [f"/lab/img{i:03d}.png" for i in range(n)]
    truth = [CLASSES[i % 3] for i in range(n)]
    other = {c: CLASSES[(CLASSES.index(c) + 1) % 3] for c in CLASSES}
    ref = [box(50, 40, cls=other[t] if i < wrong_ref else t, image=im) for i, (t, im) in enumerate(zip(truth, images))]
    new = [box(50, 40, cls=other[t] if i < wrong_new else t, image=im)
           for i, (t, im) in enumerate(zip(truth, images)) if i < n - missed_new]
    points = write_points(tmp_path / "labels.csv", [(Path(im).name, 51, 39, t) for im, t in zip(images, truth)])
    return write_run(tmp_path / "ref", ref, images), write_run(tmp_path / "new", new, images), points


def test_macro_f1_is_sklearns_with_missed_cells_as_false_negatives() -> None:
    from sklearn.metrics import balanced_accuracy_score, f1_score

    rng = np.random.default_rng(0)
    truth = list(rng.choice(CLASSES, 60))
    pred = list(rng.choice([*CLASSES, NOT_FOUND], 60))
    assert score(truth, pred, "macro_f1") == pytest.approx(f1_score(truth, pred, labels=sorted(CLASSES), average="macro", zero_division=0))
    assert score(truth, pred, "accuracy") == pytest.approx(np.mean(np.asarray(truth) == np.asarray(pred)))
    hits = [p if p in CLASSES else "neutrophil" if t != "neutrophil" else "monocyte" for t, p in zip(truth, pred)]  # no 4th class
    assert score(truth, hits, "balanced_accuracy") == pytest.approx(balanced_accuracy_score(truth, hits))


def test_a_point_matches_the_cell_under_it() -> None:
    near, far = box(20, 20, cell=1), box(34, 20, cell=2)
    assert match_cell([near, far], 22, 21, 0.5)["cell"] == 1
    assert match_cell([near, far], 27.5, 20, 0.5)["cell"] == 2  # in neither nucleus box, in both grown ones: the nearer centre
    assert match_cell([near, far], 20, 29, 0.5)["cell"] == 1  # on the cytoplasm below the nucleus
    assert match_cell([near, far], 20, 29, 0.0) is None
    assert match_cell([near, far], 80, 80, 0.5) is None


def test_a_clearly_better_model_is_called_better_and_a_small_gain_cannot_tell(tmp_path: Path) -> None:
    ref, new, points = lab(tmp_path, 60, wrong_ref=30, wrong_new=3)
    report = compare([ref, new], points)
    a = report["models"][1]["against_reference"]
    assert report["cells"] == 60 and report["models"][0]["accuracy"] == pytest.approx(0.5)
    assert a["verdict"] == "better" and a["low"] > 0 and (a["right_only_here"], a["right_only_reference"]) == (27, 0)
    assert a["mcnemar_p"] < 1e-6 and a["permutation_p"] < 0.01
    reversed_ = compare([new, ref], points)["models"][1]["against_reference"]
    assert reversed_["verdict"] == "worse" and reversed_["high"] < 0
    small = tmp_path / "small"
    small.mkdir()
    ref, new, points = lab(small, 12, wrong_ref=4, wrong_new=2)
    a = compare([ref, new], points)["models"][1]["against_reference"]
    assert a["verdict"] == "cannot tell" and a["low"] <= 0 < a["high"] and a["mcnemar_p"] == pytest.approx(0.5)  # 2 gains, no loss


def test_a_cell_the_run_did_not_find_counts_as_wrong(tmp_path: Path) -> None:
    ref, new, points = lab(tmp_path, 30, wrong_ref=0, wrong_new=0, missed_new=6)
    report = compare([ref, new], points)
    assert [m["found"] for m in report["models"]] == [30, 24]
    assert report["models"][1]["accuracy"] == pytest.approx(0.8)
    assert sum(c["model1"] == NOT_FOUND for c in report["calls"]) == 6


def test_a_filled_in_copy_of_predictions_csv_is_an_annotation_file(tmp_path: Path) -> None:
    ref, new, _ = lab(tmp_path, 9, wrong_ref=0, wrong_new=3)
    rows = [(f"/lab/img{i:03d}.png", i, 50.0, 40.0, CLASSES[i % 3] if i % 2 else "") for i in range(9)]
    points = write_points(tmp_path / "copy.csv", rows, ("image", "cell", "centroid_x", "centroid_y", "label"))
    report = compare([ref, new], points)
    assert (report["cells"], report["unlabelled_rows"]) == (4, 5)  # rows without a label are counted, not scored


@pytest.mark.parametrize("rows, header, match", [
    ([("img000.png", 51, 39, "Neutrophil")], None, r"row 1: label 'Neutrophil' is not a class of the models \(neutrophil, lymphocyte, monocyte\)"),
    ([("nowhere.png", 51, 39, "neutrophil")], None, r"row 1: image 'nowhere.png' is not among the 3 images of .*ref"),
    ([("img000.png", "left", 39, "neutrophil")], None, r"row 1: x='left', y='39'; expected pixel coordinates"),
    ([("img000.png", 51, 39, "neutrophil"), ("img000.png", 51, 39, "monocyte")], None, r"row 2: the same point as row 1"),
    ([("img000.png", 51, 39, "")], None, "no row has a label"),
    ([("img000.png", 51, "neutrophil")], ("image", "x", "label"), r"missing column\(s\) \['y'\]"),
])
def test_bad_annotations_get_one_clear_error(tmp_path: Path, rows, header, match) -> None:
    ref, new, _ = lab(tmp_path, 3, wrong_ref=0, wrong_new=0)
    points = write_points(tmp_path / "bad.csv", rows, header or ("image", "x", "y", "label"))
    with pytest.raises(AnnotationError, match=match):
        compare([ref, new], points)


def test_runs_that_cannot_be_compared_are_refused(tmp_path: Path) -> None:
    _, _, points = lab(tmp_path, 3, wrong_ref=0, wrong_new=0)
    stopped = write_run(tmp_path / "stopped", [], ["/lab/img000.png"], status="stopped after 0 of 3 images: disk full")
    with pytest.raises(AnnotationError, match=r"status 'stopped after 0 of 3.*need a complete predict run"):
        compare([stopped], points)
    (tmp_path / "masks_only").mkdir()
    (tmp_path / "masks_only" / "predictions.json").write_text(json.dumps({"status": "complete", "classes": [], "images": [], "cells": []}))
    with pytest.raises(AnnotationError, match=r"no classes; that run had no classifier"):
        compare([tmp_path / "masks_only"], points)
    (tmp_path / "edited").mkdir()
    (tmp_path / "edited" / "predictions.json").write_text("{'status': 'complete'")
    with pytest.raises(AnnotationError, match=r"edited/predictions.json: not the JSON predict.py writes"):
        compare([tmp_path / "edited"], points)
    with pytest.raises(AnnotationError, match=r"nothing: no predictions.json; expected a predict.py output dir"):
        compare([tmp_path / "nothing"], points)
    twins = write_run(tmp_path / "twins", [], ["/lab/x/img000.png", "/lab/y/img000.png"])
    with pytest.raises(AnnotationError, match=r"image 'img000.png' names 2 inputs of .*give its full path"):
        compare([twins], write_points(tmp_path / "t.csv", [("img000.png", 1, 1, "monocyte")]))
    with pytest.raises(AnnotationError, match="metric='f2'"):
        compare([twins], points, metric="f2")


def test_the_template_is_a_fair_draw_without_the_models_calls(tmp_path: Path) -> None:
    ref, _, _ = lab(tmp_path, 30, wrong_ref=0, wrong_new=0)
    rows = sample_template(ref, 10, seed=1)
    assert len(rows) == 10 and len({r["image"] for r in rows}) == 10 and rows == sample_template(ref, 10, seed=1)
    assert all(r["label"] == "" for r in rows) and not any("class" in k or k.startswith("p_") or "overlay" in k for k in rows[0])
    assert rows != sample_template(ref, 10, seed=2) and len(sample_template(ref, 99)) == 30


def test_paired_interval_holds_the_difference() -> None:
    truth = CLASSES * 10
    ref = [c if i % 3 else "monocyte" for i, c in enumerate(truth)]
    a = paired(truth, ref, truth, "accuracy", 500, 0.95, 0)
    assert a["low"] <= a["difference"] <= a["high"] and a["difference"] == pytest.approx(score(truth, truth, "accuracy") - score(truth, ref, "accuracy"))


def test_a_lab_predicts_annotates_the_template_and_compares(tmp_path: Path, monkeypatch, capsys) -> None:
    """The README's steps: predict.py twice (two classifiers), compare.py runs=[...] (annotate.csv), the lab's
    labels in it, compare.py ... annotations=<it> (compare.json, compare_cells.csv, the table)."""
    from tests.helpers_data import cell, write_image
    from tests.helpers_models import DiscSegmenter, compose_cfg, save_checkpoint, tiny_modules
    from wbc.cli import compare as compare_cli
    from wbc.cli import predict
    from wbc.inference import CellPipeline

    _, clf = tiny_modules(tmp_path / "models")
    ckpt = save_checkpoint(clf, tmp_path / "cls.ckpt")
    images = [write_image(tmp_path / "lab" / f"img{i:02d}.png", cell(48, seed=i)[0]) for i in range(8)]
    pipe = CellPipeline(DiscSegmenter(dict(clf.hparams.data_info)), clf)
    monkeypatch.setattr(predict, "build_pipeline", lambda cfg: pipe)
    runs = []
    for name in ("before", "after"):
        predict.predict(compose_cfg("predict.yaml", [f"input={images[0].parent}", f"classifier={ckpt}", "save_crops=false"], tmp_path / name))
        runs.append(str(tmp_path / name))
    listing = f"runs=[{','.join(runs)}]"
    compare_cli.compare(compose_cfg("compare.yaml", [listing, "template_cells=6"], tmp_path / "template"))
    assert f"annotations={tmp_path / 'template' / 'annotate.csv'}" in capsys.readouterr().out
    with open(tmp_path / "template" / "annotate.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    classes = json.loads((tmp_path / "before" / "predictions.json").read_text())["classes"]
    for i, r in enumerate(rows):  # the lab's labels
        r["label"] = classes[i % len(classes)]
    write_points(tmp_path / "labels.csv", [tuple(r.values()) for r in rows], tuple(rows[0]))
    figures, objects = compare_cli.compare(compose_cfg("compare.yaml", [listing, f"annotations={tmp_path / 'labels.csv'}"], tmp_path / "cmp"))
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert report["cells"] == 6 and [m["found"] for m in report["models"]] == [6, 6]  # every drawn cell found again
    assert figures["model0/macro_f1"] == figures["model1/macro_f1"]  # the same classifier twice
    assert report["models"][1]["against_reference"]["verdict"] == "cannot tell"
    assert len(report["annotations_sha256"]) == 64
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "# Models on 6 annotated cells" in md and md.count("cannot tell") == 1 and report["annotations_sha256"][:16] in md
    with open(tmp_path / "cmp" / "compare_cells.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 6
    assert "6 annotated cells" in capsys.readouterr().out


def qupath_feature(geometry: dict, label: str | None, kind: str = "annotation") -> dict:
    props = {"objectType": kind, **({"classification": {"name": label, "color": [255, 0, 0]}} if label else {})}
    return {"type": "Feature", "geometry": geometry, "properties": props}


def test_qupath_geojson_annotations_are_points_too(tmp_path: Path) -> None:
    """QuPath's export, one <image stem>.geojson per image: point, multipoint and outline annotations are labels
    (an outline by its centroid); detections (a model's cells) and unclassified objects are skipped and counted."""
    ref, new, _ = lab(tmp_path, 3, wrong_ref=3, wrong_new=0)
    folder = tmp_path / "qupath"
    folder.mkdir()
    square = [[[46, 35], [56, 35], [56, 45], [46, 45], [46, 35]]]  # centroid (51, 40)
    files = {
        "img000": [qupath_feature({"type": "Point", "coordinates": [51, 39]}, "neutrophil"),
                   qupath_feature({"type": "Point", "coordinates": [5, 5]}, "neutrophil", kind="detection")],
        "img001": [qupath_feature({"type": "Polygon", "coordinates": square}, "lymphocyte"),
                   qupath_feature({"type": "Point", "coordinates": [50, 40]}, None)],
        "img002": [qupath_feature({"type": "MultiPoint", "coordinates": [[50, 40], [90, 90]]}, "monocyte")],
    }
    for stem, feats in files.items():
        (folder / f"{stem}.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    report = compare([ref, new], folder)
    assert (report["cells"], report["unlabelled_rows"]) == (4, 2)
    assert [c["label"] for c in report["calls"]] == ["neutrophil", "lymphocyte", "monocyte", "monocyte"]
    assert [c["row"] for c in report["calls"]][-2:] == ["feature 1 point 1", "feature 1 point 2"]
    assert [c["model1"] for c in report["calls"]] == ["neutrophil", "lymphocyte", "monocyte", NOT_FOUND]  # (90, 90) is on no cell
    one = compare([ref, new], folder / "img001.geojson")  # one file: the image named after it
    assert one["cells"] == 1 and one["calls"][0]["x"] == pytest.approx(51) and one["calls"][0]["y"] == pytest.approx(40)

    (folder / "img002.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        qupath_feature({"type": "Point", "coordinates": [50, 40]}, "Monocyte")]}))
    with pytest.raises(AnnotationError, match=r"img002.geojson feature 1: classification 'Monocyte' is not a class of the models"):
        compare([ref, new], folder)
    (folder / "img002.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        qupath_feature({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, "monocyte")]}))
    with pytest.raises(AnnotationError, match=r"img002.geojson feature 1: geometry type 'LineString'; expected Point"):
        compare([ref, new], folder)
    detections = tmp_path / "detections"
    detections.mkdir()
    (detections / "img000.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        qupath_feature({"type": "Point", "coordinates": [51, 39]}, "neutrophil", kind="detection")]}))
    with pytest.raises(AnnotationError, match=r"no classified annotation object.*1 object\(s\) skipped: detections or unclassified"):
        compare([ref, new], detections)
