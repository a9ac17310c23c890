"""CSV fields a spreadsheet cannot run (wbc.spreadsheet): every table a lab opens guards text that starts like a
formula, numbers stay numbers, and the product's own readers get the exact original back."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from wbc.spreadsheet import guard, unguard, unguard_row

CLASSES = ["neutrophil", "lymphocyte"]
HOSTILE = ['=HYPERLINK("http://x.test","a").png', "+cmd.png", "-x.png", "@SUM(A1).png", "\tTAB.png", "'=already.png"]


@pytest.mark.parametrize("value", [*HOSTILE, "a.png", "", "'plain", "-0.5", "+3", "1e-3", "-inf", "'-0.5", "''=x"])
def test_guard_round_trips_and_never_leaves_a_formula(value: str) -> None:
    guarded = guard(value)
    assert unguard(guarded) == value
    assert not guarded.startswith(("=", "+", "@", "\t", "\r")) or value in ("+3",)
    if guarded.startswith("-"):
        float(guarded)  # only numbers may start with '-'


def test_numbers_and_non_strings_pass_through() -> None:
    assert [guard(v) for v in ("-0.5", "+3", 7, -1.5, None)] == ["-0.5", "+3", 7, -1.5, None]
    assert guard("=1+1") == "'=1+1" and guard("-x") == "'-x"
    assert unguard_row({"image": "'=a.png", "x": "-3.0", "n": None}) == {"image": "=a.png", "x": "-3.0", "n": None}


def predictions_csv(rows: list[dict]) -> str:
    """predict.py's predictions.csv as predict_io writes it (image column, then the cell table's columns)."""
    from wbc.cell_outputs import cell_columns, csv_records

    columns = ["image", *cell_columns(CLASSES)]
    buf = io.StringIO()
    csv.writer(buf).writerows([columns, *csv_records(rows, columns)])
    return buf.getvalue()


def test_the_cell_table_guards_names_and_keeps_negative_numbers() -> None:
    rows = [{"image": name, "cell": i + 1, "class": "neutrophil", "centroid_x": -0.5, "p_neutrophil": 0.9, "p_lymphocyte": 0.1}
            for i, name in enumerate(HOSTILE)]
    records = list(csv.DictReader(io.StringIO(predictions_csv(rows))))
    assert [r["image"] for r in records] == ["'" + n for n in HOSTILE]  # what a spreadsheet opens: text
    assert {r["centroid_x"] for r in records} == {"-0.50000"}


def test_predictions_csv_reads_back_exactly(tmp_path: Path) -> None:
    """predict's predictions.csv is read back by pseudo_dataset (read_predictions_csv, as evaluate's are)."""
    from wbc.evaluation.classification import read_predictions_csv

    rows = [{"image": n, "cell": 1, "class": "lymphocyte", "p_neutrophil": 0.2, "p_lymphocyte": 0.8} for n in HOSTILE]
    path = tmp_path / "predictions.csv"
    path.write_text(predictions_csv(rows))
    classes, back = read_predictions_csv(path)
    assert classes == CLASSES and [r["image"] for r in back] == HOSTILE


def test_annotations_from_a_guarded_csv_name_the_original_image(tmp_path: Path) -> None:
    """The web app's label download and compare's annotate.csv guard names; compare reads the originals."""
    from wbc.annotations import read_points
    from wbc.cli.compare import csv_text

    names = [n for n in HOSTILE if not n.startswith("\t")]  # read_points strips spaces around a name
    rows = [{"image": n, "x": 10.0 + i, "y": 5.0, "label": CLASSES[i % 2]} for i, n in enumerate(names)]
    text = csv_text(rows)
    assert all(line[:1] not in "=+-@\t" for line in text.splitlines())
    (tmp_path / "labels.csv").write_text(text)
    points, unlabelled = read_points(tmp_path / "labels.csv", CLASSES)
    assert unlabelled == 0 and [p.image for p in points] == names


def test_a_cut_cell_set_with_hostile_image_names_trains_from_its_labels_csv(tmp_path: Path) -> None:
    """labels.csv of a cut cell set (pseudo / annotated) guards its group column; the manifest reader undoes it."""
    from wbc.data.manifest import read_manifest
    from wbc.io import write_png

    root = tmp_path / "cells"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    write_png(root / "images" / "=a.png", np.zeros((8, 8, 3), np.uint8))
    write_png(root / "masks" / "=a.png", np.zeros((8, 8), np.uint8))
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["image", "mask", "class_name", "group"])
        writer.writeheader()
        writer.writerow({k: guard(v) for k, v in {"image": "images/=a.png", "mask": "masks/=a.png", "class_name": "neutrophil", "group": "=a"}.items()})
    assert "'=a" in (root / "labels.csv").read_text()
    sample = read_manifest(root, "csv").samples[0]
    assert sample.group == "=a" and Path(sample.image).name == "=a.png"
