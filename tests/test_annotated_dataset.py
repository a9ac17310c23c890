"""A lab's labelled points as a fine-tuning set (`predict.py ... annotated_dataset.annotations=<labels.csv>`,
wbc.data.cell_dataset): each point's predicted cell cut out with the lab's class, points on no cell named,
conflicting labels refused, and the printed train.py command fine-tunes on them."""

from __future__ import annotations

import csv
import json
import logging
import shlex
from pathlib import Path

import pytest

from wbc.data.cell_dataset import CellDatasetError, write_annotated_dataset


def write_points(path: Path, rows: list[tuple]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "x", "y", "label"])
        writer.writerows(rows)
    return path


@pytest.fixture
def lab_run(tmp_path: Path, monkeypatch):
    """predict.py over 12 one-cell images (the disc stand-in segmenter finds each), and its classifier."""
    from tests.helpers_data import cell, write_image
    from tests.helpers_models import DiscSegmenter, compose_cfg, save_checkpoint, tiny_modules
    from wbc.cli import predict
    from wbc.inference import CellPipeline

    _, clf = tiny_modules(tmp_path / "models")
    ckpt = save_checkpoint(clf, tmp_path / "cls.ckpt")
    images = [write_image(tmp_path / "lab" / f"img{i:02d}.png", cell(48, seed=i)[0]) for i in range(12)]
    pipe = CellPipeline(DiscSegmenter(dict(clf.hparams.data_info)), clf)
    monkeypatch.setattr(predict, "build_pipeline", lambda cfg: pipe)

    def run(out: Path, *overrides: str) -> dict:
        cfg = compose_cfg("predict.yaml", [f"input={images[0].parent}", f"classifier={ckpt}", "save_crops=false", *overrides], out)
        predict.predict(cfg)
        return cfg

    return run, images, list(pipe.classes), ckpt


def test_labelled_points_become_a_fine_tuning_set_with_the_labs_classes(tmp_path: Path, lab_run, capsys, caplog, run_training) -> None:
    from tests.helpers_models import compose_cfg
    from wbc.data.imageio import decode_raw

    run, images, classes, ckpt = lab_run
    labels = {im.name: classes[i % len(classes)] for i, im in enumerate(images)}
    points = [(name, 24, 24, label) for name, label in labels.items()] + [("img00.png", 2, 2, classes[0])]  # the last: on no cell
    annotations = write_points(tmp_path / "labels.csv", points)
    out = tmp_path / "pred"
    with caplog.at_level(logging.WARNING, logger="wbc"):
        run(out, f"annotated_dataset.annotations={annotations}", "annotated_dataset.match_margin=0")  # no cytoplasm slack
    assert "1 labelled point(s) are on no cell this run found (row 13)" in caplog.text
    dest = out / "annotated_dataset"
    record = json.loads((dest / "annotated_dataset.json").read_text())
    assert record["cells"] == 12 and record["points"] == 13 and [p["row"] for p in record["not_found"]] == ["row 13"]
    with open(dest / "labels.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    # the lab's classes, not the model's calls; each crop with its own nucleus as the mask
    assert {r["image"]: r["class_name"] for r in table} == {f"images/{Path(n).stem}_cell01.png": c for n, c in labels.items()}
    assert all((decode_raw(dest / r["mask"]) == 255).any() for r in table)
    split = json.loads((dest / "splits.json").read_text())
    per_class = 12 // len(classes)
    assert len(split["folds"][0]["val"]) == len(split["test"]) == len(classes)  # one of each class, every class has >= 3
    assert len(split["folds"][0]["train"]) == len(classes) * (per_class - 2)
    printed = capsys.readouterr().out
    command = next(line.strip() for line in printed.splitlines() if line.strip().startswith("python train.py"))
    assert f"data.root={dest}" in command and f"init_from={ckpt}" in command and "compare.py" in printed
    train = compose_cfg("train.yaml", [*shlex.split(command)[2:], "data.batch_size=4", "trainer.max_epochs=1", "logger=csv",
                                       "callbacks.rich_progress_bar=null", "extras.print_config=false", "num_overlays=0"],
                        tmp_path / "finetuned", tmp_path / "data")
    metrics, objects = run_training(train)
    parts = objects["datamodule"].split_ids()
    assert (len(parts["train"]), len(parts["val"]), len(parts["test"])) == (len(classes) * (per_class - 2), len(classes), len(classes))
    assert "val/macro_f1" in metrics
    # the printed fit_morphology.py command: the same cells, one a crop (the cell finding of the run's crops)
    from wbc.cli.fit_morphology import fit_morphology
    from wbc.morphology import MorphologyClassifier

    fit = next(line.strip() for line in printed.splitlines() if line.strip().startswith("python fit_morphology.py"))
    assert f"data.root={dest}" in fit and "data.crops.mode=" in fit and "fit_on=train+val" in fit
    fitted, _ = fit_morphology(compose_cfg("fit_morphology.yaml", [*shlex.split(fit)[2:], "extras.print_config=false"], tmp_path / "morph", tmp_path / "data"))
    assert fitted["train/cells"] == 12 - len(classes) and fitted["unmeasured_images"] == 0  # train + val, the test cells apart
    assert MorphologyClassifier.load(tmp_path / "morph" / "morphology.json").classes == tuple(classes)


def test_labels_that_cannot_make_a_training_set_are_refused(tmp_path: Path, lab_run) -> None:
    run, images, classes, _ = lab_run
    out = tmp_path / "pred"
    run(out)
    clash = write_points(tmp_path / "clash.csv", [("img03.png", 24, 24, classes[0]), ("img03.png", 25, 23, classes[1])])
    with pytest.raises(CellDatasetError, match=rf"clash.csv row 1 and row 2: one predicted cell \(img03/01 of .*\) labelled '{classes[0]}' and "):
        write_annotated_dataset(out, clash)
    nowhere = write_points(tmp_path / "nowhere.csv", [("img03.png", 1, 1, classes[0])])
    with pytest.raises(CellDatasetError, match=r"none of its 1 labelled points is on a cell"):
        write_annotated_dataset(out, nowhere, margin=0.0)
    with pytest.raises(CellDatasetError, match=r"annotated_dataset.context must be a number >= 1"):
        write_annotated_dataset(out, nowhere, context=0)
    same = write_points(tmp_path / "same.csv", [("img03.png", 24, 24, classes[0]), ("img03.png", 25, 23, classes[0])])
    record = write_annotated_dataset(out, same)  # two clicks on one cell, one label: one cell
    assert record["cells"] == 1 and not (out / "annotated_dataset" / "splits.json").exists()
    assert record["merged"] == [{"row": "row 2", "same_cell_as": "row 1", "cell": "img03/01"}]  # said, not silently merged
    with pytest.raises(FileExistsError, match="annotated_dataset already exists"):
        write_annotated_dataset(out, same)
    images[3].unlink()  # a source image moved away after predict: the error names the run's file it read
    with pytest.raises(CellDatasetError, match=r"predictions\.json cell img03/01: .*img03\.png"):
        write_annotated_dataset(out, same, overwrite=True)
