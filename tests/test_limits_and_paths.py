"""Limits and paths (issue 12): one pixel limit for training and predict, manifest paths kept inside
data.root and deduplicated on their real path, a BOM'd labels.csv, a read-only data root, a corrupt
metrics.json, and resuming a run that already finished."""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from omegaconf import OmegaConf

from datamodules.segmentation import SegmentationDataModule
from tests.helpers_data import (
    cell,
    grey_mask,
    make_csv_dataset,
    make_folder_dataset,
    png_header_only,
    write_image,
    write_labels,
)
from wbc import resume, rundir
from wbc.data import imageio
from wbc.data.imageio import ImageReadError, read_mask, read_rgb
from wbc.data.manifest import ManifestError, load_sample, read_manifest
from wbc.data.splits import SplitError
from wbc.predict_io import check_file

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["image", "mask", "class_name", "group"]
TINY_CLI = ("data=synthetic_tiny", "trainer.max_epochs=1", "logger=csv", "callbacks.rich_progress_bar=null", "extras.print_config=false", "num_overlays=0")




def _dm(root: Path, **kw) -> SegmentationDataModule:
    kw = {"classes": ["a", "b"], "splits": {"k": 2, "seed": 0, "test_fraction": 0.3}, **kw}
    return SegmentationDataModule(root=str(root), name="limits", image_size=16, preprocess={"clahe": False}, **kw)


def _rows(root: Path) -> list[dict[str, str]]:
    import csv

    with (root / "labels.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def _cli(args: list[str], data_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WBC_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


# ----------------------------------------------------------------------------- 9: pixel limit
# 180 MP: under PIL's own guard (decoded, 540 MB, before failing as "truncated"); 500 MP: PIL's
# DecompressionBombWarning escaped as a raw warning; 900 MP: PIL's DecompressionBombError escaped.
@pytest.mark.parametrize(("width", "height"), [(15_000, 12_000), (25_000, 20_000), (30_000, 30_000)], ids=["180MP", "500MP", "900MP"])
@pytest.mark.parametrize("reader", [read_rgb, read_mask], ids=["read_rgb", "read_mask"])
def test_bomb_header_is_refused_naming_file_count_and_limit(tmp_path, width, height, reader):
    path = png_header_only(tmp_path / "bomb.png", width, height)
    with pytest.raises(ImageReadError) as info:
        reader(path)
    msg = str(info.value)
    assert str(path) in msg and f"{width * height} pixels" in msg
    assert f"max_pixels={imageio.DEFAULT_MAX_PIXELS} (data.max_pixels)" in msg


def test_default_limit_lives_in_imageio_and_predict_uses_the_same_check(tmp_path, monkeypatch):
    path = write_image(tmp_path / "img.png", cell(64)[0])  # 4096 pixels
    monkeypatch.setattr(imageio, "DEFAULT_MAX_PIXELS", 1000)
    with pytest.raises(ImageReadError, match=r"img\.png: 64x64 = 4096 pixels exceeds the limit max_pixels=1000 \(data\.max_pixels\); raise data\.max_pixels"):
        read_rgb(path)
    with pytest.raises(ImageReadError, match=r"img\.png: 64x64 = 4096 pixels exceeds the limit max_pixels=1000 \(predict\.max_pixels\)"):
        check_file(path, max_file_mb=50)  # predict's max_pixels: null -> the same default
    assert read_rgb(path, max_pixels=4096).shape == (64, 64, 3)  # an explicit limit wins
    check_file(path, max_file_mb=50, max_pixels=4096)


def test_tifffile_fallback_applies_the_limit(tmp_path):
    """A float32 RGB TIFF: PIL cannot open it, tifffile decodes it; the header is checked first."""
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, np.random.default_rng(0).random((40, 50, 3), dtype=np.float32))
    with pytest.raises(ImageReadError, match=r"float\.tif: 50x40 = 2000 pixels exceeds the limit max_pixels=1000 \(data\.max_pixels\)"):
        read_rgb(path, max_pixels=1000)
    with pytest.raises(ImageReadError, match=r"float\.tif: 50x40 = 2000 pixels exceeds the limit max_pixels=1000 \(predict\.max_pixels\)"):
        check_file(path, max_file_mb=50, max_pixels=1000)
    assert read_rgb(path, max_pixels=2000).shape == (40, 50, 3)


def test_training_applies_data_max_pixels(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", {"a": 5, "b": 5})  # 32x32 = 1024 pixels each
    with pytest.raises(ManifestError, match=r"a_000\.png: 32x32 = 1024 pixels exceeds the limit max_pixels=1000 \(data\.max_pixels\)"):
        _dm(root, max_pixels=1000).setup("fit")
    dm = _dm(root, max_pixels=1024)
    dm.setup("fit")
    sample = dm.manifest.samples[0]
    assert sample.max_pixels == 1024  # every later reader of the sample (pipeline scoring, crops) applies it
    with pytest.raises(ManifestError, match="max_pixels=1000"):
        load_sample(read_manifest(root, max_pixels=1000).samples[0], dm.encoding)
    with pytest.raises(ValueError, match=r"data\.max_pixels=0: expected a positive whole number"):
        _dm(root, max_pixels=0)


def test_configs_have_one_default(make_cfg, tmp_path):
    """data.max_pixels and predict's max_pixels are null: imageio's default, the one place it lives."""
    train_cfg = make_cfg()
    assert "max_pixels" in train_cfg.data and train_cfg.data.max_pixels is None
    assert train_cfg.data.allow_outside_root is False
    predict_cfg = OmegaConf.load(ROOT / "conf" / "predict.yaml")
    assert predict_cfg.max_pixels is None  # one place: imageio's default
    assert imageio.DEFAULT_MAX_PIXELS * 120 < 4 * 2**30  # ~120 bytes per pixel to predict: one image stays under 4 GB


# ----------------------------------------------------------------------------- 10: manifest paths
def _outside_dataset(tmp_path: Path) -> tuple[Path, Path]:
    root = make_csv_dataset(tmp_path / "ds", {"a": 4, "b": 4})
    img, labels = cell(32, seed=99)
    outside = tmp_path / "elsewhere"
    write_image(outside / "x.png", img)
    write_image(outside / "x_mask.png", grey_mask(labels))
    return root, outside


@pytest.mark.parametrize("style", ["dotdot", "absolute"])
def test_paths_outside_root_are_refused_naming_the_row(tmp_path, style):
    root, outside = _outside_dataset(tmp_path)
    image = "../elsewhere/x.png" if style == "dotdot" else str(outside / "x.png")
    mask = "../elsewhere/x_mask.png" if style == "dotdot" else str(outside / "x_mask.png")
    write_labels(root, [*_rows(root), {"image": image, "mask": mask, "class_name": "a", "group": ""}], COLUMNS)
    with pytest.raises(ManifestError) as info:
        read_manifest(root)
    msg = str(info.value)
    assert "labels.csv" in msg and f"line 10: image {image!r} resolves to {outside.resolve() / 'x.png'}" in msg
    assert f"line 10: mask {mask!r}" in msg and "data.allow_outside_root=true" in msg
    m = read_manifest(root, allow_outside_root=True)
    assert len(m.samples) == 9
    dm = _dm(root, allow_outside_root=True)  # data.allow_outside_root reaches the manifest reader
    assert len(dm.load_manifest().samples) == 9
    with pytest.raises(ManifestError, match="outside data.root"):
        _dm(root).load_manifest()


def test_symlink_out_of_root_is_refused_in_folder_layout(tmp_path):
    root = make_folder_dataset(tmp_path / "ds", {"a": 3, "b": 3})
    store = make_folder_dataset(tmp_path / "store", {"c": 2})
    (root / "images" / "c").symlink_to(store / "images" / "c", target_is_directory=True)
    (root / "masks" / "c").symlink_to(store / "masks" / "c", target_is_directory=True)
    with pytest.raises(ManifestError, match=r"images/c/c_000\.png: image 'images/c/c_000\.png' resolves to .*store/images/c/c_000\.png, outside data\.root"):
        read_manifest(root, layout="folders")
    assert len(read_manifest(root, layout="folders", allow_outside_root=True).samples) == 8


def test_same_file_written_two_ways_is_one_clear_error(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", {"a": 4, "b": 4})
    extra = {"image": "images/../images/a_001.png", "mask": "masks/a_001.png", "class_name": "a", "group": ""}
    write_labels(root, [*_rows(root), extra], COLUMNS)
    with pytest.raises(ManifestError) as info:
        read_manifest(root)
    msg = str(info.value)
    assert "duplicate rows for image(s) ['images/a_001.png']" in msg
    assert "line 3 'images/a_001.png' and line 10 'images/../images/a_001.png' are one file" in msg
    with pytest.raises(ManifestError, match="duplicate rows"):
        read_manifest(root, allow_outside_root=True)  # opting in to outside paths does not allow duplicates


def test_labels_csv_with_bom_header_reads(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", {"a": 3, "b": 3})
    text = (root / "labels.csv").read_text(encoding="utf-8")
    (root / "labels.csv").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))  # Excel's "CSV UTF-8"
    m = read_manifest(root)
    assert [s.id for s in m.samples][:2] == ["images/a_000", "images/a_001"] and m.classes == ["a", "b"]


# ----------------------------------------------------------------------------- 11: rough edges
def test_read_only_data_root_points_at_splits_dir(tmp_path, monkeypatch):
    """Tests run as root, where chmod does not stop writes: the write fails as on a read-only mount."""
    root = make_csv_dataset(tmp_path / "ds", {"a": 5, "b": 5})
    real_write = pathlib.Path.write_text

    def read_only(self, *args, **kwargs):
        if self.parent == root:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", read_only)
    with pytest.raises(SplitError) as info:
        _dm(root).load_splits()
    msg = str(info.value)
    assert f"{root} is read-only" in msg and "set data.splits.dir=<a writable folder>" in msg
    writable = tmp_path / "splits"
    dm = _dm(root, splits={"k": 2, "seed": 0, "test_fraction": 0.3, "dir": str(writable)})
    assert dm.load_splits()["folds"] and list(writable.glob("splits_*.json"))


def test_unwritable_splits_folder_on_a_real_file_system(tmp_path):
    """Where the file system itself refuses (a non-root user's 0o555 folder; /sys as root)."""
    root = make_csv_dataset(tmp_path / "ds", {"a": 5, "b": 5})
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
    else:
        locked = Path("/sys/wbc_splits")
        try:
            locked.mkdir()
        except OSError as err:
            if err.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                pytest.skip(f"/sys refuses with {err}, not a read-only error")
        else:
            locked.rmdir()
            pytest.skip("/sys is writable here")
    with pytest.raises(SplitError, match=r"is read-only .*set data\.splits\.dir=<a writable folder>"):
        _dm(root, splits={"k": 2, "seed": 0, "test_fraction": 0.3, "dir": str(locked)}).load_splits()


def test_corrupt_metrics_json_names_the_file(tmp_path):
    (tmp_path / "metrics.json").write_text('{"val/dice": 0.9,')
    with pytest.raises(ValueError, match=rf"{tmp_path / 'metrics.json'}: corrupt metrics file"):
        rundir.finished_metrics(tmp_path)


def test_resume_into_run_dir_with_corrupt_metrics_fails_naming_it(tmp_path, data_dir):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{not json")
    proc = _cli([*TINY_CLI, "resume=true", f"hydra.run.dir={run}"], data_dir)
    assert proc.returncode != 0
    assert f"{run / 'metrics.json'}: corrupt metrics file" in proc.stderr


@pytest.mark.slow  # a CLI subprocess (~11 s): -m slow, to keep CI under 8 minutes
def test_ckpt_path_of_a_finished_run_says_so_not_keyerror(trained_run, tmp_path, data_dir):
    """Before: test + scoring ran, then KeyError: optimized_metric='val/dice_best' was not logged."""
    run, _, _ = trained_run  # trainer.max_epochs=1, finished
    last = run / "checkpoints" / "last.ckpt"
    proc = _cli([*TINY_CLI, f"ckpt_path={last}", f"hydra.run.dir={tmp_path / 'again'}"], data_dir)
    assert proc.returncode != 0
    assert "KeyError" not in proc.stderr
    assert f"ckpt_path={last}: this run already finished training (its 1 epoch(s) reach trainer.max_epochs=1)" in proc.stderr
    assert "Raise trainer.max_epochs" in proc.stderr and "train=false" in proc.stderr


def test_resume_true_of_a_finished_run_without_metrics_tests_and_scores_it(trained_run, make_cfg, run_training, tmp_path):
    """resume=true into a run that finished training but lost metrics.json (stopped while testing): fit is
    skipped and the run is tested and scored (it was refused for good: a preempted fold never finished)."""
    run, _, _ = trained_run
    out = tmp_path / "run"
    shutil.copytree(run / "checkpoints", out / "checkpoints")
    metrics, _ = run_training(make_cfg(["resume=true", "num_overlays=0"], output_dir=out))
    assert (out / "metrics.json").is_file() and any(k.startswith("test/") for k in metrics)


def test_resume_refuses_a_pipeline_stage_trained_with_other_settings(make_cfg, monkeypatch):
    """A pipeline run resumed (or a stage dir copied in) must not reuse a stage's weights under a
    config they were not trained with: the saved stage config is compared before anything runs."""
    from wbc import fit, stages

    trained: list[str] = []

    def fake_fit(sub, sub_dir):
        trained.append(sub.stage)
        raise RuntimeError("stop after the check")

    monkeypatch.setattr(fit, "fit_stage", fake_fit)
    cfg = make_cfg(["experiment=pipeline", "resume=true"])
    out = Path(cfg.paths.output_dir)
    seg_dir = out / "segmentation"
    saved = OmegaConf.to_container(stages.stage_config(cfg, "segmentation", seg_dir), resolve=True)
    saved["data"]["preprocess"]["grayscale"] = not saved["data"]["preprocess"]["grayscale"]
    saved["data"]["root"] = "/elsewhere/data"  # where the data lived may differ (a moved checkout)
    rundir.save_config(seg_dir, saved)
    (seg_dir / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match=r"resume=true: .*segmentation holds a model trained with other settings "
                                         r"\(data\.preprocess\.grayscale: (True|False) -> (True|False)\); .*delete"):
        stages.run_pipeline(cfg, out)
    assert not trained
    saved["data"]["preprocess"]["grayscale"] = not saved["data"]["preprocess"]["grayscale"]  # the same settings again
    rundir.save_config(seg_dir, saved)
    with pytest.raises(RuntimeError, match="stop after the check"):
        stages.run_pipeline(cfg, out)
    assert trained == ["segmentation"]


def test_stage_differences_name_a_whole_new_node_once():
    old = {"data.image_size": 128, "data.parts.a.root": "x"}
    new = {"data.image_size": 256, "data.parts.a.root": "x", "data.parts.b.root": "y", "data.parts.b.classes": ["c"]}
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    assert resume._describe_differences(keys, old, new) == ["data.image_size: 128 -> 256", "data.parts.b: absent -> present"]
    assert resume._describe_differences(keys, new, old) == ["data.image_size: 256 -> 128", "data.parts.b: present -> absent"]


def _settings(cfg) -> dict:
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
            for k in resume.JOB_SETTINGS if k in cfg}


def test_resume_refuses_a_finished_run_of_other_settings(make_cfg, tmp_path, data_dir):
    """A single run's .hydra/config.yaml is rewritten by Hydra when the resumed job starts, so
    before job.json's `trained_from` a finished run of other settings was skipped and its metric
    returned as this config's (a warning about overrides at most)."""
    run = tmp_path / "finished"
    cfg = make_cfg(["model.optimizer.lr=0.002"], output_dir=run)
    rundir.start_job(run, resume.job_record(cfg.data.get("fold"), cfg.stage, ["model.optimizer.lr=0.002"], cfg=_settings(cfg)))
    (run / "metrics.json").write_text('{"val/dice_best": 0.5}')
    proc = _cli([*TINY_CLI, "resume=true", f"hydra.run.dir={run}"], data_dir)
    assert proc.returncode != 0
    # exactly one difference: the CLI's record of these settings equals the composed one
    default_lr = make_cfg().model.optimizer.lr
    assert (f"resume=true: {run} holds a model trained with other settings (model.optimizer.lr: 0.002 -> {default_lr}); "
            "resume with the settings it was trained with") in proc.stderr


def test_job_record_check_ignores_locations_and_schedule_and_names_the_seed(make_cfg, tmp_path):
    cfg = make_cfg(["experiment=pipeline"])
    settings = _settings(cfg)
    rundir.start_job(tmp_path, resume.job_record(0, "pipeline", [], cfg=settings))
    moved = OmegaConf.to_container(OmegaConf.create(settings))
    moved["data"]["root"] = "/elsewhere"  # a moved checkout
    moved["classification"].setdefault("model", {})["scheduler"] = {"T_max": 99}  # a longer schedule on resume
    resume.check_same_job(tmp_path, resume.job_record(0, "pipeline", ["x=1"], cfg=moved))  # no error
    moved["seed"] = 43
    moved["classification"]["data"]["batch_size"] = 999
    with pytest.raises(ValueError, match=r"other settings \(classification\.data\.batch_size: \d+ -> 999; seed: \d+ -> 43\)"):
        resume.check_same_job(tmp_path, resume.job_record(0, "pipeline", [], cfg=moved))
    # a job.json written before `trained_from` existed: the overrides can only be warned about
    rundir.start_job(tmp_path, resume.job_record(0, "pipeline", []))
    resume.check_same_job(tmp_path, resume.job_record(0, "pipeline", [], cfg=moved))
