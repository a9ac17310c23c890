"""predict's output dir holds this run's files only (overwrite=true empties predict's own per-image folders),
and any legal input name works: long names (a file name may hold 255 bytes) get a shortened output stem
instead of stopping the run on `File name too long`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers_web import png
from wbc.cells import instance_crops
from wbc.inference import CellResult
from wbc.io import write_text
from wbc.postprocess import instances_from_labels
from wbc.predict_io import STEM_MAX_BYTES, output_stems, predict_images, short_stem


class FixedPipe:
    """A pipeline whose nuclei are a fixed label map (only predict's writers run)."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels, self.classes, self.bit_depth, self.last_scale = labels, ["a", "b"], "auto", None

    def __call__(self, rgb: np.ndarray) -> CellResult:
        labels, inst = instances_from_labels(self.labels, 0)
        crops = instance_crops(rgb, labels, inst, 16) if inst else []
        probs = np.tile(np.array([[0.7, 0.3]], np.float32), (len(inst), 1))
        return CellResult(np.zeros(labels.shape, np.float32), labels, inst, crops, probs, {}, [[] for _ in inst], None)


def squares(n: int) -> np.ndarray:
    labels = np.zeros((60, 60), np.int32)
    for k in range(n):
        labels[5 + 20 * k : 15 + 20 * k, 5 + 20 * k : 15 + 20 * k] = k + 1
    return labels


def image(folder: Path, name: str) -> Path:
    f = folder / name
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(png(np.full((60, 60, 3), 200, np.uint8)))
    return f


def test_overwrite_leaves_only_this_runs_files(tmp_path: Path) -> None:
    smear, other = image(tmp_path / "in", "smear.png"), image(tmp_path / "in", "other.png")
    out = tmp_path / "out"
    predict_images(FixedPipe(squares(3)), [smear, other], out)
    assert len(list((out / "crops").iterdir())) == 6
    predict_images(FixedPipe(squares(1)), [smear], out, overwrite=True)  # e.g. min_area raised, one image
    assert [r["cell"] for r in csv.DictReader(io.StringIO((out / "predictions.csv").read_text()))] == ["1"]
    assert sorted(p.name for p in (out / "crops").iterdir()) == ["smear_cell01.png"]  # no crops of cells gone
    for folder in ("masks", "labels", "overlays"):
        assert sorted(p.name for p in (out / folder).iterdir()) == ["smear.png"], folder
    assert sorted(p.name for p in (out / "geojson").iterdir()) == ["smear.geojson"]


def test_a_dir_holding_only_earlier_image_files_is_refused(tmp_path: Path) -> None:
    smear = image(tmp_path / "in", "smear.png")
    out = tmp_path / "out"
    write_text(out / "crops" / "old_cell01.png", "x")
    write_text(out / "masks" / "old.png", "x")
    with pytest.raises(FileExistsError, match=r"already holds 2 file\(s\) in crops/, masks/ .*overwrite=true"):
        predict_images(FixedPipe(squares(1)), [smear], out)
    predict_images(FixedPipe(squares(1)), [smear], out, overwrite=True)
    assert not (out / "crops" / "old_cell01.png").exists() and not (out / "masks" / "old.png").exists()


def test_long_input_names_are_written_under_a_shortened_stem(tmp_path: Path) -> None:
    long_a = "血液塗抹標本" * 13 + "_Field_0001"  # 245 bytes + .png: legal, and the crop names would not fit
    long_b = "血液塗抹標本" * 13 + "_Field_0002"
    files = [image(tmp_path / "in", f"{n}.png") for n in ("a", long_a, long_b)]
    rows, failures = predict_images(FixedPipe(squares(1)), files, tmp_path / "out")
    assert not failures and len(rows) == 3
    report = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert report["status"] == "complete"
    stems = [r["output_stem"] for r in rows]
    assert stems[0] == "a" and len(set(stems)) == 3 and all(len(s.encode()) <= STEM_MAX_BYTES for s in stems)
    assert stems[1].endswith("_Field_0001") and stems[2].endswith("_Field_0002") and stems[1].startswith("血液")
    for s in stems[1:]:
        assert (tmp_path / "out" / "crops" / f"{s}_cell01.png").is_file() and (tmp_path / "out" / "geojson" / f"{s}.geojson").is_file()


def test_short_stem_keeps_head_and_tail_and_stays_distinct() -> None:
    assert short_stem("field_01") == "field_01"
    s = short_stem("x" * 150 + "é" * 100 + "_0001")
    assert len(s.encode()) <= STEM_MAX_BYTES and s.startswith("x" * 100) and s.endswith("é_0001") and "~" in s
    # names that differ only in the middle meet after shortening: the duplicate rule keeps them apart
    a, b = Path("a" * 150 + "1" + "b" * 150 + ".png"), Path("a" * 150 + "2" + "b" * 150 + ".png")
    stems = output_stems([a, b])
    assert len(set(stems)) == 2 and all(len(x.encode()) <= STEM_MAX_BYTES + 6 for x in stems)


def test_an_image_of_more_cells_than_a_label_png_holds_is_skipped_not_the_run(tmp_path: Path) -> None:
    """Over 65535 cell ids the 16-bit label PNG cannot be written: that image is reported (no partial files),
    the others are written; it had stopped the whole run after writing its mask."""
    from dataclasses import replace

    files = [image(tmp_path / "in", f"{n}.png") for n in ("a", "b", "c")]

    class Pipes(FixedPipe):
        def __call__(self, rgb):
            self.calls = getattr(self, "calls", 0) + 1
            res = super().__call__(rgb)
            return replace(res, labels=res.labels * 70000) if self.calls == 2 else res  # cell ids past 65535

    rows, failures = predict_images(Pipes(squares(1)), files, tmp_path / "out")
    assert [r["output_stem"] for r in rows] == ["a", "c"]
    assert len(failures) == 1 and failures[0]["image"].endswith("b.png") and "65535" in failures[0]["error"]
    assert not (tmp_path / "out" / "masks" / "b.png").exists()
    assert json.loads((tmp_path / "out" / "predictions.json").read_text())["status"] == "complete"
