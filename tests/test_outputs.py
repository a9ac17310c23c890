"""Outputs that never lose data (issue 12): unique predict output names per input, CSVs through the
csv module (names with commas, quotes, newlines), rows kept when predict stops midway, one predict
per output dir, sweep-callback failures that fail the multirun, and normal file permissions.

No case trains a model: predict runs on untrained tiny modules (DiscSegmenter always finds a cell).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from tests.helpers_data import cell, write_image
from tests.helpers_models import DiscSegmenter, compose_cfg, save_checkpoint, tiny_modules
from wbc import cv
from wbc.hydra_callbacks import CVSummary, SweepCallbackError
from wbc.inference import CellPipeline
from wbc.io import atomic_write, current_umask, write_json
from wbc.predict_io import LOCK_FILE, output_stems, predict_images

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    return tiny_modules(tmp_path_factory.mktemp("models"))


@pytest.fixture
def disc_pipe(modules) -> CellPipeline:
    _, clf = modules
    return CellPipeline(DiscSegmenter(dict(clf.hparams.data_info)), clf)


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- case 4: unique output names
def test_same_stem_different_extension_gets_distinct_outputs(tmp_path: Path, disc_pipe: CellPipeline) -> None:
    png = write_image(tmp_path / "in" / "dup.png", cell(32, seed=1)[0])
    jpg = write_image(tmp_path / "in" / "dup.jpg", cell(32, seed=2)[0])
    other = write_image(tmp_path / "in" / "other.png", cell(32, seed=3)[0])
    out = tmp_path / "out"
    rows, failures = predict_images(disc_pipe, [jpg, png, other], out)
    assert failures == [] and len(rows) == 3
    assert names(out / "masks") == names(out / "overlays") == ["dup_jpg.png", "dup_png.png", "other.png"]
    assert names(out / "crops") == ["dup_jpg_cell01.png", "dup_png_cell01.png", "other_cell01.png"]
    table = csv_rows(out / "predictions.csv")
    assert [(r["source"], r["output_stem"]) for r in table] == [(str(jpg.absolute()), "dup_jpg"), (str(png.absolute()), "dup_png"), (str(other.absolute()), "other")]
    saved = json.loads((out / "predictions.json").read_text())
    assert [(c["source"], c["output_stem"]) for c in saved["cells"]] == [(r["source"], r["output_stem"]) for r in table]
    assert [i["output_stem"] for i in saved["images"]] == ["dup_jpg", "dup_png", "other"] and saved["status"] == "complete"


def test_output_stems_stay_unique_and_readable() -> None:
    files = [Path(n) for n in ("a/dup.jpg", "a/dup.png", "a/dup_png.png", "a/Case.png", "a/case.tif", "a/solo.bmp")]
    stems = output_stems(files)
    assert stems == ["dup_jpg", "dup_png_2", "dup_png", "Case_png", "case_tif", "solo"]
    assert len({s.casefold() for s in stems}) == len(stems)  # apart on case-insensitive file systems too


# --------------------------------------------------------------------------- case 5: CSVs via the csv module
def test_file_name_with_comma_quote_and_newline(tmp_path: Path, disc_pipe: CellPipeline) -> None:
    odd = write_image(tmp_path / "in" / 'smear, "left"\nfield 2.png', cell(32)[0])
    plain = write_image(tmp_path / "in" / "plain.png", cell(32, seed=4)[0])
    out = tmp_path / "out"
    rows, _ = predict_images(disc_pipe, [odd, plain], out)
    table = csv_rows(out / "predictions.csv")
    assert len(table) == 2
    assert [r["image"] for r in table] == [str(odd), str(plain)]
    assert [r["output_stem"] for r in table] == [odd.stem, "plain"] and table[0]["source"] == str(odd.absolute())
    assert float(table[0]["probability"]) == pytest.approx(rows[0]["probability"], abs=1e-5)
    assert set(table[0]) == set(table[1]) and None not in table[0]  # no stray fields from a split name
    assert (out / "masks" / f"{odd.stem}.png").is_file()


def fold_run(sweep: Path, job: int, preds: list[tuple[str, str, float]], by_hand: bool = False) -> Path:
    """A finished classification fold run with its val_predictions.csv (csv module, or by hand)."""
    run = sweep / str(job)
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"stage": "classification", "data": {"fold": job}}), run / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create([f"data.fold={job}"]), run / ".hydra" / "overrides.yaml")
    (run / "metrics.json").write_text(json.dumps({"val/macro_f1": 0.5}))
    records = [["sample_id", "cell", "true", "pred", "p_a", "p_b"]] + [[s, 1, t, "a" if pa >= 0.5 else "b", pa, 1 - pa] for s, t, pa in preds]
    if by_hand:  # what a hand-rolled writer does: no quoting
        (run / "val_predictions.csv").write_text("".join(",".join(map(str, r)) + "\n" for r in records))
    else:
        with open(run / "val_predictions.csv", "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(records)
    return run


def sweep_end(sweep: Path, dashboards: bool = False) -> None:
    """The CVSummary callback as a multirun's end calls it: through Hydra's own Callbacks."""
    from hydra._internal.callbacks import Callbacks

    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}, "callbacks": {"cv": {"_target_": "wbc.hydra_callbacks.CVSummary", "dashboards": dashboards}}}})
    Callbacks(cfg).on_multirun_end(config=cfg)


def test_cv_summary_with_commas_and_quotes_in_sample_ids(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    ids = ['smear, "A"\nrow', "plain", 'x,y', 'q"q']
    fold_run(sweep, 0, [(ids[0], "a", 0.9), (ids[1], "b", 0.4)])
    fold_run(sweep, 1, [(ids[2], "b", 0.2), (ids[3], "a", 0.3)])
    s = cv.summarize_sweep(sweep)
    assert s["oof"]["classification"]["n_crops"] == 4
    assert s["oof"]["classification"]["metrics"]["oof/val/accuracy"] == pytest.approx(0.75)
    sweep_end(sweep)
    assert json.loads((sweep / "cv_summary.json").read_text())["oof"]["classification"]["n_crops"] == 4
    assert [r["sample_id"] for r in csv_rows(sweep / "cv_oof_predictions.csv")] == ids
    assert [r["job"] for r in csv_rows(sweep / "cv_summary.csv")] == ["0", "1", "mean", "std", "oof"]


# --------------------------------------------------------------------------- case 7: a failing sweep callback fails the run
def test_sweep_callback_failure_is_an_error_naming_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A fold file that cannot be pooled (an id with an unquoted comma) raises through Hydra's
    Callbacks (which turn an Exception into a warning) instead of leaving no summary behind."""
    sweep = tmp_path / "sweep"
    fold_run(sweep, 0, [("s1", "a", 0.9)])
    bad = fold_run(sweep, 1, [("x,y", "b", 0.2)], by_hand=True)
    with caplog.at_level(logging.ERROR, logger="wbc"), pytest.raises(SweepCallbackError) as info:
        sweep_end(sweep)
    assert isinstance(info.value, SystemExit)
    assert str(bad / "val_predictions.csv") in str(info.value.code) and "classification out-of-fold" in str(info.value.code)
    assert "CV summary of" in caplog.text
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    with pytest.raises(SweepCallbackError):  # called directly, too
        CVSummary(dashboards=False).on_multirun_end(cfg)


@pytest.mark.slow  # a real Hydra multirun subprocess (~10 s): -m slow, to keep CI under 8 minutes
def test_multirun_exits_non_zero_when_the_summary_fails(tmp_path: Path) -> None:
    """A real (tiny) multirun with conf/hydra/callbacks/cv_summary.yaml: exit status 1, not 0."""
    sweep = tmp_path / "sweep"
    fold_run(sweep, 5, [("x,y", "b", 0.2)], by_hand=True)  # a finished job whose OOF file breaks pooling
    app = tmp_path / "app"
    app.mkdir()
    (app / "config.yaml").write_text(
        f"defaults:\n  - override hydra/callbacks: cv_summary\n  - _self_\nhydra:\n  searchpath: ['file://{ROOT / 'conf'}']\n"
    )
    (app / "app.py").write_text(
        "import hydra\n\n\n@hydra.main(version_base='1.3', config_path='.', config_name='config')\n"
        "def main(cfg) -> None:\n    pass\n\n\nif __name__ == '__main__':\n    main()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, str(app / "app.py"), "-m", "+data.fold=0,1", f"hydra.sweep.dir={sweep}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "CV summary of the sweep" in proc.stderr and "val_predictions.csv" in proc.stderr
    assert not (sweep / "cv_summary.json").exists()


# --------------------------------------------------------------------------- case 6: nothing lost when predict stops
class FailingPipe:
    """The pipeline, raising on its n-th image (as a crash or a full disk would, midway)."""

    def __init__(self, pipe: CellPipeline, fail_at: int) -> None:
        self.pipe, self.fail_at, self.calls = pipe, fail_at, 0

    @property
    def classes(self) -> list[str]:
        return self.pipe.classes

    def __call__(self, rgb: np.ndarray):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("out of memory on this image")
        return self.pipe(rgb)


def test_predict_failing_on_image_3_of_5_keeps_rows_and_says_how_far(tmp_path: Path, disc_pipe, caplog: pytest.LogCaptureFixture) -> None:
    files = [write_image(tmp_path / "in" / f"img{i}.png", cell(32, seed=i)[0]) for i in range(5)]
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR, logger="wbc"), pytest.raises(RuntimeError, match="out of memory") as info:
        predict_images(FailingPipe(disc_pipe, 3), files, out)
    assert [r["image"] for r in csv_rows(out / "predictions.csv")] == [str(files[0]), str(files[1])]
    assert "stopped after 2 of 5 images: RuntimeError: out of memory on this image" in caplog.text
    assert any("stopped after 2 of 5 images" in n for n in getattr(info.value, "__notes__", []))
    saved = json.loads((out / "predictions.json").read_text())
    assert saved["status"].startswith("stopped after 2 of 5 images") and len(saved["cells"]) == 2
    assert names(out / "masks") == ["img0.png", "img1.png"] and not (out / LOCK_FILE).exists()


# --------------------------------------------------------------------------- case 6: one predict per output dir
def test_second_predict_into_the_same_dir_refuses_unless_overwrite(tmp_path: Path, modules) -> None:
    from wbc.cli import predict

    seg, clf = modules
    seg_ckpt, cls_ckpt = save_checkpoint(seg, tmp_path / "seg.ckpt"), save_checkpoint(clf, tmp_path / "cls.ckpt")
    image = write_image(tmp_path / "in" / "smear.png", cell(64)[0])
    out = tmp_path / "out"

    def run(*extra: str):
        cfg = compose_cfg("predict.yaml", [f"input={image}", f"segmenter={seg_ckpt}", f"classifier={cls_ckpt}", *extra], out)
        return predict.predict(cfg)

    assert compose_cfg("predict.yaml", ["input=x"], out).overwrite is False
    run()
    first = (out / "predictions.csv").read_bytes()
    assert not (out / LOCK_FILE).exists()
    with pytest.raises(FileExistsError, match=r"already holds predictions\.csv, predictions\.json, 7 file\(s\) in crops/, .*overwrite=true"):
        run()
    assert (out / "predictions.csv").read_bytes() == first
    with pytest.raises(FileExistsError, match=r"already holds predictions\.csv"):  # the library call refuses too
        predict_images(CellPipeline.from_checkpoints(seg_ckpt, cls_ckpt), [image], out)
    run("overwrite=true")
    assert (out / "predictions.csv").read_bytes() == first and not (out / LOCK_FILE).exists()
    (out / LOCK_FILE).write_text("pid 1 on elsewhere\n")  # another predict is writing there
    with pytest.raises(FileExistsError, match=r"predict\.lock: another predict is writing into .*pid 1 on elsewhere"):
        run("overwrite=true")
    assert (out / LOCK_FILE).read_text() == "pid 1 on elsewhere\n"  # someone else's lock is left alone


# --------------------------------------------------------------------------- case 8: permissions
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_atomic_write_honours_the_umask(tmp_path: Path, umask: int) -> None:
    before = os.umask(umask)
    try:
        assert current_umask() == umask
        path = write_json(tmp_path / "out" / "x.json", {"a": 1})
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    finally:
        os.umask(before)
    os.chmod(path, 0o640)  # an existing file keeps its mode, as with open()
    atomic_write(path, lambda p: p.write_text("{}\n"))
    assert path.stat().st_mode & 0o777 == 0o640 and path.read_text() == "{}\n"


# --------------------------------------------------------------------------- nothing half-written


def test_failing_writer_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out" / "predictions.json"

    def half(p: Path) -> None:
        p.write_text('{"cells": [')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half)
    assert not target.exists() and list(target.parent.iterdir()) == []
    atomic_write(target, lambda p: p.write_text("{}\n"))
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half)
    assert target.read_text() == "{}\n" and [p.name for p in target.parent.iterdir()] == ["predictions.json"]
