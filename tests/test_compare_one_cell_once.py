"""compare.py scores each of the lab's cells once: two labelled points on one predicted cell are one cell (the
second merged and listed), points of one cell with different labels leave it out of every run's scores (listed,
never one label picked), and the runs are still paired on the same cells when only one run puts the points on
one cell."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_compare import box, write_points, write_run
from wbc.annotations import AnnotationError
from wbc.evaluation.annotated import compare

IMAGE = "/lab/a.png"


def _runs(tmp_path: Path, second: list[dict] | None = None) -> tuple[Path, Path]:
    """Two runs: a neutrophil called lymphocyte (cell 1) and a monocyte called right (cell 2)."""
    cells = [box(20, 20, cls="lymphocyte", cell=1), box(60, 60, cls="monocyte", cell=2)]
    return write_run(tmp_path / "ref", cells, [IMAGE]), write_run(tmp_path / "new", second or cells, [IMAGE])


def test_two_points_with_one_label_on_one_cell_count_once(tmp_path: Path) -> None:
    ref, new = _runs(tmp_path)
    points = write_points(tmp_path / "labels.csv", [("a.png", 19, 19, "neutrophil"), ("a.png", 22, 22, "neutrophil"),
                                                    ("a.png", 60, 60, "monocyte")])
    report = compare([ref, new], points, draws=50)
    assert report["cells"] == 2 and report["per_class"] == {"monocyte": 1, "neutrophil": 1}
    assert report["models"][0]["accuracy"] == pytest.approx(0.5)  # not 1/3: the wrong call counted twice
    assert report["merged"] == [{"row": "row 2", "same_cell_as": "row 1"}] and report["conflicting"] == []
    assert [c["row"] for c in report["calls"]] == ["row 1", "row 3"]


def test_one_cell_with_two_labels_is_left_out_and_listed(tmp_path: Path) -> None:
    ref, new = _runs(tmp_path)
    points = write_points(tmp_path / "labels.csv", [("a.png", 19, 19, "neutrophil"), ("a.png", 22, 22, "lymphocyte"),
                                                    ("a.png", 60, 60, "monocyte")])
    report = compare([ref, new], points, draws=50)
    assert report["cells"] == 1 and report["per_class"] == {"monocyte": 1}
    assert report["conflicting"] == [{"rows": ["row 1", "row 2"], "labels": ["neutrophil", "lymphocyte"], "image": "a.png"}]
    assert report["models"][0]["accuracy"] == pytest.approx(1.0)


def test_points_one_run_puts_on_one_cell_are_one_cell_in_every_run(tmp_path: Path) -> None:
    # the candidate splits the reference's cell 1 in two (cells 3 and 4), calling the first part right
    split = [box(17, 20, r=3, cls="neutrophil", cell=3), box(23, 20, r=3, cls="lymphocyte", cell=4), box(60, 60, cls="monocyte", cell=2)]
    ref, new = _runs(tmp_path, split)
    points = write_points(tmp_path / "labels.csv", [("a.png", 17, 20, "neutrophil"), ("a.png", 23, 20, "neutrophil"),
                                                    ("a.png", 60, 60, "monocyte")])
    report = compare([ref, new], points, draws=50)
    assert report["cells"] == 2 and len(report["calls"]) == 2
    assert [c["model1"] for c in report["calls"]] == ["neutrophil", "monocyte"]  # the cell under its first point
    assert report["models"][1]["accuracy"] == pytest.approx(1.0) and report["models"][0]["accuracy"] == pytest.approx(0.5)


def test_only_cells_with_different_labels_is_an_error(tmp_path: Path) -> None:
    ref, new = _runs(tmp_path)
    points = write_points(tmp_path / "labels.csv", [("a.png", 19, 19, "neutrophil"), ("a.png", 22, 22, "lymphocyte")])
    with pytest.raises(AnnotationError, match="different labels"):
        compare([ref, new], points, draws=50)


def test_a_run_that_merges_two_differently_labelled_cells_is_scored_on_both(tmp_path: Path) -> None:
    """Two touching cells labelled neutrophil and lymphocyte: the reference splits them, the candidate merges them
    into one cell called lymphocyte. They stay two cells (one run tells them apart), so the merging run is wrong
    on the neutrophil, not spared by leaving both out."""
    split = [box(17, 20, r=3, cls="neutrophil", cell=1), box(23, 20, r=3, cls="lymphocyte", cell=3), box(60, 60, cls="monocyte", cell=2)]
    merged = [box(20, 20, cls="lymphocyte", cell=1), box(60, 60, cls="monocyte", cell=2)]
    ref, new = write_run(tmp_path / "ref", split, [IMAGE]), write_run(tmp_path / "new", merged, [IMAGE])
    points = write_points(tmp_path / "labels.csv", [("a.png", 17, 20, "neutrophil"), ("a.png", 23, 20, "lymphocyte"),
                                                    ("a.png", 60, 60, "monocyte")])
    report = compare([ref, new], points, draws=50)
    assert report["cells"] == 3 and report["conflicting"] == [] and report["merged"] == []
    assert [m["accuracy"] for m in report["models"]] == [pytest.approx(1.0), pytest.approx(2 / 3)]
