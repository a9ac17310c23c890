"""Pseudo-labels (`data.pseudo_labels`): a model's confident calls on a new lab's training images as
their labels, for self-training without annotation (issue 16)."""

from __future__ import annotations

import csv
import logging
import shlex
from pathlib import Path

import numpy as np
import pytest

from datamodules.segmentation import SegmentationDataModule
from tests.helpers_data import make_csv_dataset
from wbc.data.pseudo_labels import PseudoLabelError, select_pseudo_labels

CLASSES = ["a", "b"]


def rows(*entries: tuple[str, str, float]) -> list[dict[str, str]]:
    """(sample id, predicted class, probability of class a) -> predictions CSV rows of two classes."""
    return [{"sample_id": s, "pred": p, "p_a": f"{pa}", "p_b": f"{1 - pa}"} for s, p, pa in entries]


def test_select_takes_the_surest_per_predicted_class() -> None:
    got = select_pseudo_labels(rows(("x1", "a", 0.9), ("x2", "a", 0.6), ("x3", "a", 0.99), ("x4", "b", 0.2), ("x5", "b", 0.45),
                                    ("v1", "a", 1.0)), ["x1", "x2", "x3", "x4", "x5"], CLASSES, per_class=2)
    # v1 is not a training image: never a candidate, however sure; x2 is the third-surest "a"
    assert got == {"x3": "a", "x1": "a", "x4": "b", "x5": "b"}
    ties = select_pseudo_labels(rows(("z", "a", 0.7), ("y", "a", 0.7)), ["y", "z"], CLASSES, per_class=1)
    assert ties == {"y": "a"}  # ties by sample id: the same choice every run
    # a class the model never predicts gets no images, and none are invented for it
    assert select_pseudo_labels(rows(("x1", "a", 0.9)), ["x1"], CLASSES, per_class=3) == {"x1": "a"}


@pytest.mark.parametrize("bad,per_class,match", [
    (rows(("x1", "a", 0.9)), 1, r"no prediction for 1 of 2 training images \(e.g. \['x2'\]\)"),
    (rows(("x1", "a", 0.9), ("x2", "a", 0.8), ("x1", "b", 0.1)), 1, r"p.csv line 4: a second row for image 'x1'"),
    (rows(("x1", "a", 0.9), ("x2", "c", 0.8)), 1, r"p.csv line 3: predicted class 'c' is not one of \['a', 'b'\]"),
    ([{"sample_id": "x1", "pred": "a", "p_a": "1"}], 1, r"p.csv: columns \['p_b'\] missing"),
    (rows(("x1", "a", 0.9), ("x2", "a", 0.8)), 0, r"per_class must be a positive whole number, got 0"),
])
def test_select_refuses_predictions_that_cannot_label_the_training_images(bad, per_class, match) -> None:
    with pytest.raises(PseudoLabelError, match=match):
        select_pseudo_labels(bad, ["x1", "x2"], CLASSES, per_class, source="p.csv")


def test_datamodule_trains_on_the_pseudo_labels_and_scores_true_ones(tmp_path: Path) -> None:
    root = make_csv_dataset(tmp_path / "ds", {"a": 10, "b": 10}, size=16)

    def dm(**kw) -> SegmentationDataModule:
        return SegmentationDataModule(root=str(root), name="pseudo", image_size=16, preprocess={"clahe": False}, classes=CLASSES,
                                      splits={"k": 2, "seed": 0, "test_fraction": 0.3, "dir": str(tmp_path / "splits")}, **kw)

    full = dm().split_ids()
    truth = {s.id: s.class_name for s in dm().load_manifest().samples}
    # a model that calls every image the opposite class, surest on the first ids; rows for val/test too
    preds = tmp_path / "test_predictions.csv"
    with open(preds, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["sample_id", "pred", "p_a", "p_b"])
        w.writeheader()
        for i, sid in enumerate(sorted(truth)):
            wrong = "b" if truth[sid] == "a" else "a"
            p = 0.99 - 0.01 * i
            w.writerow({"sample_id": sid, "pred": wrong, "p_a": p if wrong == "a" else 1 - p, "p_b": p if wrong == "b" else 1 - p})
    pseudo = dm(pseudo_labels={"file": str(preds), "per_class": 3})
    ids = pseudo.split_ids()
    assert ids["val"] == full["val"] and ids["test"] == full["test"]
    assert len(ids["train"]) == 6 and set(ids["train"]) < set(full["train"])
    pseudo.setup()
    # training labels are the model's (all wrong here), validation keeps the manifest's
    train_labels = [CLASSES[i] for i in pseudo.dataset_labels("train")]
    assert train_labels == ["b" if truth[s] == "a" else "a" for s in ids["train"]]
    assert [CLASSES[i] for i in pseudo.dataset_labels("val")] == [truth[s] for s in ids["val"]]
    with pytest.raises(ValueError, match=r"data.pseudo_labels must be \{file: <predictions CSV>, per_class: <K>\} and not set together"):
        dm(pseudo_labels={"file": str(preds), "per_class": 3}, train_per_class=2)
    with pytest.raises(ValueError, match=r"data.pseudo_labels must be"):
        dm(pseudo_labels={"file": str(preds)})
    with pytest.raises(PseudoLabelError, match=r"data.pseudo_labels.file: .*missing.csv is not a file"):
        dm(pseudo_labels={"file": str(tmp_path / "missing.csv"), "per_class": 3}).split_ids()


# --------------------------------------------------------------------------- a lab without annotations
def fake_predict_dir(tmp_path: Path) -> Path:
    """What predict.py leaves for one 64x48 field with two nuclei (cells 1 and 2) and one 40x40 image with one."""
    from tests.helpers_data import write_image
    from wbc.cell_outputs import label_png

    out = tmp_path / "pred"
    (out / "labels").mkdir(parents=True)
    field, single = np.zeros((48, 64), np.uint16), np.zeros((40, 40), np.uint16)
    field[10:16, 10:16], field[30:40, 44:54], single[15:25, 15:25] = 1, 2, 1
    rng = np.random.default_rng(0)
    sources = [write_image(tmp_path / "in" / n, rng.integers(0, 255, (*lab.shape, 3), dtype=np.uint8)) for n, lab in
               (("field.png", field), ("one.png", single))]
    for stem, lab in (("field", field), ("one", single)):
        (out / "labels" / f"{stem}.png").write_bytes(label_png(lab))
    with open(out / "predictions.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "cell", "class", "probability", "p_a", "p_b", "source", "output_stem"])
        w.writerow(["in/field.png", 1, "a", 0.9, 0.9, 0.1, sources[0], "field"])
        w.writerow(["in/field.png", 2, "a", 0.6, 0.6, 0.4, sources[0], "field"])
        w.writerow(["in/one.png", 1, "b", 0.7, 0.3, 0.7, sources[1], "one"])
    return out


def test_pseudo_dataset_cuts_out_the_surest_cells_with_their_own_nucleus(tmp_path: Path) -> None:
    from wbc.data.imageio import decode_raw, read_rgb
    from wbc.data.pseudo_labels import write_pseudo_dataset

    out = fake_predict_dir(tmp_path)
    record = write_pseudo_dataset(out, per_class=1, context=3.0)
    assert record["counts"] == {"a": 1, "b": 1} and record["cells"] == 2 and record["of_cells"] == 3
    with open(out / "pseudo_dataset" / "labels.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    # field cell 2 (p 0.6) is the second-surest "a": left out; the group keeps a field's cells on one side of a split
    assert [(r["image"], r["mask"], r["class_name"], r["group"]) for r in table] == [
        ("images/field_cell01.png", "masks/field_cell01.png", "a", "field"), ("images/one_cell01.png", "masks/one_cell01.png", "b", "one")]
    mask = decode_raw(out / "pseudo_dataset" / "masks" / "field_cell01.png")
    image = read_rgb(out / "pseudo_dataset" / "images" / "field_cell01.png")
    # a 6 px nucleus centred at 12.5 (equivalent diameter 6.8) at 3 diameters: rows and columns 2..23
    source = read_rgb(tmp_path / "in" / "field.png")
    assert np.array_equal(image, source[2:24, 2:24]) and mask.shape == (22, 22)  # the pixels as they were, not resampled
    assert set(np.unique(mask)) == {0, 255} and (mask == 255).sum() == 36 and mask[8:14, 8:14].all()  # its own nucleus, whole
    assert not (out / "pseudo_dataset" / "splits.json").exists()  # one cell a class: the data config's own split
    with pytest.raises(FileExistsError, match=r"pseudo_dataset already exists; move it away"):
        write_pseudo_dataset(out, per_class=1)
    write_pseudo_dataset(out, per_class=5, context=3.0, overwrite=True)
    # cell 2 (10 px at 34.5, 48.5): its square stops at the bottom and right edges (rows 17..47, columns 31..63)
    assert decode_raw(out / "pseudo_dataset" / "masks" / "field_cell02.png").shape == (31, 33)
    assert (decode_raw(out / "pseudo_dataset" / "masks" / "field_cell02.png") == 255).sum() == 100
    assert sorted(p.name for p in (out / "pseudo_dataset" / "images").iterdir()) == ["field_cell01.png", "field_cell02.png", "one_cell01.png"]
    write_pseudo_dataset(out, per_class=1, overwrite=True)  # nothing of the earlier selection lingers
    assert sorted(p.name for p in (out / "pseudo_dataset" / "images").iterdir()) == ["field_cell01.png", "one_cell01.png"]


def test_pseudo_dataset_refuses_a_predict_run_it_cannot_label_from(tmp_path: Path) -> None:
    from wbc.data.pseudo_labels import write_pseudo_dataset

    with pytest.raises(PseudoLabelError, match=r"predictions\.csv: not found; expected the predictions\.csv of a predict\.py run"):
        write_pseudo_dataset(tmp_path, per_class=1)
    out = fake_predict_dir(tmp_path)
    with pytest.raises(PseudoLabelError, match=r"context must be a number >= 1"):
        write_pseudo_dataset(out, per_class=1, context=0.5)
    good = (out / "predictions.csv").read_text()
    (out / "predictions.csv").write_text(good.replace("in/one.png,1,", "in/one.png,one,"))  # a hand-edited table
    with pytest.raises(PseudoLabelError, match=r"predictions\.csv line 4: cell 'one' is not a cell number"):
        write_pseudo_dataset(out, per_class=1)
    (out / "predictions.csv").write_text(good)
    (tmp_path / "in" / "one.png").unlink()  # a source image moved away after predict
    with pytest.raises(PseudoLabelError, match=r"predictions\.csv cell one/01: .*one\.png"):
        write_pseudo_dataset(out, per_class=1)
    text = (out / "predictions.csv").read_text().replace("p_a,p_b", "q_a,q_b")
    (out / "predictions.csv").write_text(text)  # predicted without a classifier: no probabilities
    with pytest.raises(PseudoLabelError, match=r"columns \['p_<class>'\] missing; pseudo-labels need a predict\.py run with a classifier"):
        write_pseudo_dataset(out, per_class=1)


def test_a_lab_predicts_writes_pseudo_labels_and_fine_tunes_on_them(tmp_path: Path, run_training, capsys, monkeypatch, caplog) -> None:
    """The two commands the README gives a lab without annotations: predict.py with pseudo_dataset.per_class
    (its folder in the csv layout), then train.py data=folder data.layout=csv ... init_from=<the classifier>."""
    from tests.helpers_data import cell, write_image
    from tests.helpers_models import DiscSegmenter, compose_cfg, save_checkpoint, tiny_modules
    from wbc.cli import predict
    from wbc.cli.predict import pseudo_dataset
    from wbc.inference import CellPipeline

    _, clf = tiny_modules(tmp_path / "models")
    ckpt = save_checkpoint(clf, tmp_path / "cls.ckpt")
    images = [write_image(tmp_path / "lab" / f"img{i:02d}.png", cell(48, seed=i)[0]) for i in range(16)]
    pipe = CellPipeline(DiscSegmenter(dict(clf.hparams.data_info)), clf)
    monkeypatch.setattr(predict, "build_pipeline", lambda cfg: pipe)  # the stand-in segmenter finds every cell
    out = tmp_path / "pred"
    cfg = compose_cfg("predict.yaml", [f"input={images[0].parent}", f"classifier={ckpt}", "pseudo_dataset.per_class=16"], out)
    predict.predict(cfg)
    assert (out / "pseudo_dataset" / "labels.csv").is_file()
    with open(out / "predictions.csv", newline="") as fh:
        predicted = list(csv.DictReader(fh))
    # an untrained model calls (nearly) one class: then the command is withheld and the missing classes named
    assert ("fine-tuning needs every class" in capsys.readouterr().out) == (len({r["class"] for r in predicted}) < len(pipe.classes))
    with open(out / "predictions.csv", "w", newline="") as fh:  # as a model that calls every class would
        writer = csv.DictWriter(fh, list(predicted[0]))
        writer.writeheader()
        for i, r in enumerate(predicted):
            r["class"] = pipe.classes[i % len(pipe.classes)]
            writer.writerow({**r, **{f"p_{c}": "0.9" if c == r["class"] else "0.05" for c in pipe.classes}})
    record = pseudo_dataset(cfg, out, True, pipe)
    assert record["cells"] == 16 and min(record["counts"].values()) == 5  # every cell: 16 per class is more than there are
    printed = capsys.readouterr().out
    assert record["command"] in printed and "data.crops.size=32" in record["command"]  # the classifier's own crops
    # the printed command, as a lab would paste it (shrunk for the test: batch, folds, one epoch, no dashboards)
    command = shlex.split(record["command"])
    assert command[:2] == ["python", "train.py"]
    train = compose_cfg("train.yaml", [*command[2:], "data.batch_size=4", "data.splits.k=2", "trainer.max_epochs=1", "logger=csv",
                                       "callbacks.rich_progress_bar=null", "extras.print_config=false", "num_overlays=0"],
                        tmp_path / "finetuned", tmp_path / "data")
    assert train.init_from == str(ckpt) and train.data.preprocess == clf.hparams.data_info["preprocess"]
    with caplog.at_level(logging.INFO, logger="wbc"):
        metrics, objects = run_training(train)
    assert f"init_from: fine-tuning from {ckpt}" in caplog.text and "other input settings" not in caplog.text
    # every cell trains but the least sure of each class (validation) and the next (test): 16 - 2 x 3
    parts = objects["datamodule"].split_ids()
    assert (len(parts["train"]), len(parts["val"]), len(parts["test"])) == (10, 3, 3)
    assert objects["trainer"].current_epoch == 1 and "val/macro_f1" in metrics
    assert objects["datamodule"].load_manifest().classes == list(pipe.classes)


def test_the_fine_tuning_command_rebuilds_the_classifiers_network(tmp_path: Path) -> None:
    """From the run's job.json: the experiment and model choices (not its data, logger or seed)."""
    import json

    from wbc.rundir import model_choices

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    assert model_choices(ckpt) is None  # a bare checkpoint: nothing recorded
    (tmp_path / "run" / "job.json").write_text(json.dumps({"overrides": [
        "experiment=cross_cls", "data=cross_cls_d2_to_d1", "seed=42", "model.net.name=tf_efficientnet_lite1", "trainer.max_epochs=20",
        "trainer.accelerator=gpu", "data.crops.diameters=2.7", "logger=csv"]}))
    assert model_choices(ckpt) == ["experiment=cross_cls", "model.net.name=tf_efficientnet_lite1", "trainer.max_epochs=20"]
    from tests.helpers_models import compose_cfg
    from wbc.cli.predict import fine_tune_start

    other = tmp_path / "other" / "checkpoints" / "last.ckpt"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"")
    cfg = compose_cfg("predict.yaml", ["input=x", f"classifier=[{tmp_path / 'run'},{tmp_path / 'other'}]"], tmp_path / "out")
    members, start, choices = fine_tune_start(cfg)  # a seed ensemble: its first member is the start
    assert members == [tmp_path / "run", tmp_path / "other"] and start == str(tmp_path / "run")
    assert choices == ["experiment=cross_cls", "model.net.name=tf_efficientnet_lite1", "trainer.max_epochs=20"]
    # a received run's job.json that would make the printed command load a pickle: its choices are not printed
    (tmp_path / "run" / "job.json").write_text(json.dumps({"overrides": [
        "experiment=classify", "~model.loss", "+model.loss={_target_:torch.load,f:/x/bomb.pt,weights_only:false}"]}))
    assert "+model.loss" in " ".join(model_choices(ckpt))
    assert fine_tune_start(cfg)[2] == ["experiment=classify"]
    (tmp_path / "run" / "job.json").write_text("{not json")
    assert model_choices(ckpt) is None
    assert fine_tune_start(cfg)[2] == ["experiment=classify"]  # nothing readable: the classifier recipe, init_from says the rest


def test_the_pseudo_labelled_split_trains_on_all_but_the_least_sure() -> None:
    from wbc.data.pseudo_labels import training_split

    rows = [{"image": f"images/a{i}.png", "class_name": "a", "p_a": p, "p_b": "0"} for i, p in enumerate(("0.9", "0.6", "0.8", "0.7"))]
    rows += [{"image": f"images/b{i}.png", "class_name": "b", "p_a": "0", "p_b": "0.9"} for i in range(2)]
    split = training_split(rows, ["a", "b"])
    # class a: the least sure (0.6) validates, the next (0.7) tests; class b has too few cells to hold any out
    assert split["folds"] == [{"train": ["images/a0", "images/a2", "images/b0", "images/b1"], "val": ["images/a1"]}]
    assert split["test"] == ["images/a3"]
