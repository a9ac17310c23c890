"""An explicit camera bit depth (`data.bit_depth`, predict/serve `bit_depth`): 16-bit files are divided by
2**b - 1 for the depth given, not guessed from each image's own maximum (a dark 10-bit-looking frame of a
12-bit camera was brightened ~4x, and frames of one camera jumped in brightness around max 1023/1024);
`auto` keeps the guess. The depth travels in the checkpoint (data_info.bit_depth), so predict, serve and
the ONNX export read new images as training read its own."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from datamodules.segmentation import SegmentationDataModule
from tests.helpers_data import cell, grey_mask, make_csv_dataset, write_image
from tests.helpers_models import save_checkpoint, tiny_modules
from wbc.data import imageio
from wbc.data.imageio import ImageReadError, read_rgb
from wbc.data.manifest import ManifestError, read_manifest

# a dark 16-bit frame: its maximum (900) looks like a 10-bit camera's to the guess
DARK = np.linspace(0, 900, 48 * 48).round().astype(np.uint16).reshape(48, 48)
AS_12_BIT = round(900 * 255 / 4095)  # 56
AS_10_BIT = round(900 * 255 / 1023)  # 224, today's guess


def _dark(path: Path) -> Path:
    return write_image(path, DARK)


def _upload(path: Path, bit_depth: int | str) -> np.ndarray:
    """The web upload's path: decode_bytes, then as_rgb (wbc.web.engine)."""
    return imageio.as_rgb(imageio.decode_bytes(path.read_bytes(), path.name), path.name, bit_depth)


# ----------------------------------------------------------------------------- reading
@pytest.mark.parametrize("via", ["file", "upload"])
def test_bit_depth_12_divides_by_4095_whatever_the_images_max(tmp_path, via):
    path = _dark(tmp_path / "dark.png")
    out = read_rgb(path, bit_depth=12) if via == "file" else _upload(path, 12)
    np.testing.assert_array_equal(out[..., 0], np.round(DARK * 255.0 / 4095).astype(np.uint8))
    assert out.max() == AS_12_BIT
    colour = write_image(tmp_path / "dark_rgb.png", np.dstack([DARK, DARK // 2, DARK]))
    assert read_rgb(colour, bit_depth=12)[..., 0].max() == AS_12_BIT  # 16-bit colour alike
    # one camera's frames keep their relative brightness across max 1023 / 1024 (the guess: ~16x apart)
    a = read_rgb(write_image(tmp_path / "a.png", np.full((4, 4), 1023, np.uint16)), bit_depth=14)
    b = read_rgb(write_image(tmp_path / "b.png", np.full((4, 4), 1024, np.uint16)), bit_depth=14)
    assert a.max() == b.max() == 16


def test_auto_keeps_the_guess_from_the_images_max(tmp_path):
    path = _dark(tmp_path / "dark.png")
    assert read_rgb(path).max() == AS_10_BIT
    np.testing.assert_array_equal(read_rgb(path, bit_depth="auto"), read_rgb(path))
    np.testing.assert_array_equal(_upload(path, "auto"), read_rgb(path))


@pytest.mark.parametrize("depth", ["auto", 8, 10, 12, 14, 16])
def test_an_8_bit_file_is_read_as_it_is_whatever_the_depth(tmp_path, depth):
    img, _ = cell(24)
    np.testing.assert_array_equal(read_rgb(write_image(tmp_path / "x.png", img), bit_depth=depth), img)


def test_a_max_over_the_depth_is_refused_naming_file_max_and_setting(tmp_path):
    path = write_image(tmp_path / "bright.png", np.array([[0, 5000], [100, 200]], np.uint16))
    with pytest.raises(ImageReadError, match=r"bright\.png: .*5000.*data\.bit_depth=12"):
        read_rgb(path, bit_depth=12)
    with pytest.raises(ImageReadError, match=r"bright\.png: .*5000.*bit_depth=12"):
        _upload(path, 12)
    assert read_rgb(path, bit_depth=14).max() == round(5000 * 255 / 16383)
    # 8-bit values stored in 16 bits with bit_depth=8 stay as they are; a larger one is refused
    assert read_rgb(write_image(tmp_path / "low.png", np.array([[0, 255]], np.uint16)), bit_depth=8).max() == 255
    with pytest.raises(ImageReadError, match=r"bright\.png: .*5000.*bit_depth=8"):
        read_rgb(path, bit_depth=8)


# ----------------------------------------------------------------------------- the config key
def test_data_bit_depth_is_a_config_address_validated_with_one_error(make_cfg):
    assert make_cfg().data.bit_depth == "auto"
    dm = instantiate(make_cfg(["data.bit_depth=12"]).data, _convert_="partial")
    assert dm.bit_depth == 12 and dm.data_info()["bit_depth"] == 12
    for bad in ("11", "abc", "true"):
        with pytest.raises(Exception, match=r"data\.bit_depth=.*expected one of auto, 8, 10, 12, 14, 16"):
            instantiate(make_cfg([f"data.bit_depth={bad}"]).data, _convert_="partial")


def test_training_reads_samples_at_data_bit_depth_and_names_a_bad_file(tmp_path):
    root = make_csv_dataset(tmp_path / "d", {"a": 3, "b": 3})
    _, labels = cell(32)
    write_image(root / "images" / "a_000.png", np.full((32, 32), 5000, np.uint16))
    write_image(root / "masks" / "a_000.png", grey_mask(labels))
    assert {s.bit_depth for s in read_manifest(root, bit_depth=14).samples} == {14}
    dm = SegmentationDataModule(root=str(root), name="bits", classes=["a", "b"], image_size=16, preprocess={"clahe": False},
                                splits={"k": 2, "seed": 0, "test_fraction": 0.3}, bit_depth=12)
    with pytest.raises(ManifestError, match=r"a_000\.png: .*5000.*data\.bit_depth=12"):
        dm.setup("fit")


def test_the_audit_names_a_file_over_the_depth(tmp_path):
    from wbc.audit.scan import scan_sample
    from wbc.data.manifest import MaskEncoding

    root = make_csv_dataset(tmp_path / "d", {"a": 1})
    write_image(root / "images" / "a_000.png", np.full((32, 32), 5000, np.uint16))
    rec = scan_sample(read_manifest(root, bit_depth=12).samples[0], MaskEncoding())
    assert [p["kind"] for p in rec.problems] == ["bit_depth"] and "5000" in rec.problems[0]["detail"]


def test_combined_parts_read_at_the_nodes_depth_and_refuse_another(tmp_path):
    parts = {n: {"root": str(make_csv_dataset(tmp_path / n, {"a": 4, "b": 4})), "name": n, "classes": ["a", "b"],
                 "splits": {"dir": str(tmp_path / "s"), "k": 2}} for n in ("lab1", "lab2")}
    dm = SegmentationDataModule(root="unused", name="combined", image_size=16, parts=parts, bit_depth=12)
    assert {s.bit_depth for s in dm.load_manifest().samples} == {12} and dm.data_info()["bit_depth"] == 12
    with pytest.raises(ValueError, match=r"data\.parts\.lab1\.bit_depth=14.*data\.bit_depth=12"):
        SegmentationDataModule(root="unused", name="combined", image_size=16, parts={**parts, "lab1": {**parts["lab1"], "bit_depth": 14}},
                               bit_depth=12)


def test_evaluating_other_data_at_another_depth_than_the_checkpoint_is_logged(tmp_path, caplog):
    from wbc.evaluation.runs import data_config

    with caplog.at_level(logging.WARNING, logger="wbc"):
        cfg = data_config(OmegaConf.create({"bit_depth": 14}), tmp_path, {"bit_depth": 12})
    assert cfg.bit_depth == 14  # the files' own depth: the data config describes them
    assert "data.bit_depth=14" in caplog.text and "12" in caplog.text


# ----------------------------------------------------------------------------- the checkpoint and inference
@pytest.fixture
def checkpoints(make_cfg, tmp_path):
    """(bit_depth=12 segmenter checkpoint, the same without the field: an old checkpoint), their data_info
    made as training makes it (the DataModule's data_info into the model's hparams)."""
    from wbc.fit import build_datamodule

    cfg = make_cfg(["data.bit_depth=12"])
    info = build_datamodule(cfg.data).data_info()
    assert info["bit_depth"] == 12
    torch.manual_seed(0)
    model = instantiate(cfg.model, data_info=info)
    new = save_checkpoint(model, tmp_path / "new" / "last.ckpt")
    old_info = {k: v for k, v in info.items() if k != "bit_depth"}
    old = save_checkpoint(instantiate(cfg.model, data_info=old_info), tmp_path / "old" / "last.ckpt")
    return new, old


def _predict_reads(monkeypatch, tmp_path, data_dir, ckpt: Path, *overrides: str) -> tuple[list[np.ndarray], dict]:
    """The arrays predict.py hands the pipeline for a folder of two images (dark, bright), and its report."""
    from tests.conftest import compose_config
    from wbc.cli import predict
    from wbc.inference import CellPipeline

    folder = tmp_path / "in"
    _dark(folder / "dark.png")
    write_image(folder / "zbright.png", np.full((48, 48), 5000, np.uint16))
    seen: list[np.ndarray] = []
    call = CellPipeline.__call__

    def spy(self, rgb, *a, **kw):
        seen.append(rgb.copy())
        return call(self, rgb, *a, **kw)

    monkeypatch.setattr(CellPipeline, "__call__", spy)
    out = tmp_path / f"pred{len(list(tmp_path.glob('pred*')))}"
    pcfg = compose_config("predict.yaml", [f"input={folder}", f"segmenter={ckpt}", "save_crops=false", *overrides], out, data_dir)
    predict.predict(pcfg)
    return seen, json.loads((out / "predictions.json").read_text())


def test_predict_reads_at_the_checkpoints_depth_and_bit_depth_overrides_it(checkpoints, monkeypatch, tmp_path, data_dir):
    new, old = checkpoints
    seen, report = _predict_reads(monkeypatch, tmp_path, data_dir, new)
    assert [int(a.max()) for a in seen] == [AS_12_BIT]  # the bright one does not fit 12 bits: skipped, named
    assert len(report["failed"]) == 1 and "zbright.png" in report["failed"][0]["error"] and "5000" in report["failed"][0]["error"]
    assert report["bit_depth"] == 12
    seen, report = _predict_reads(monkeypatch, tmp_path, data_dir, new, "bit_depth=auto")
    assert [int(a.max()) for a in seen] == [AS_10_BIT, round(5000 * 255 / 16383)] and not report["failed"]
    seen, _ = _predict_reads(monkeypatch, tmp_path, data_dir, new, "bit_depth=14")
    assert int(seen[0].max()) == round(900 * 255 / 16383)
    seen, report = _predict_reads(monkeypatch, tmp_path, data_dir, old)  # no field: auto, as before
    assert int(seen[0].max()) == AS_10_BIT and report["bit_depth"] == "auto"
    with pytest.raises(Exception, match=r"bit_depth=11.*expected one of auto, 8, 10, 12, 14, 16"):
        _predict_reads(monkeypatch, tmp_path, data_dir, new, "bit_depth=11")


def test_serve_config_has_the_override_and_uploads_use_the_pipelines_depth(tmp_path):
    from tests.helpers_models import compose_cfg
    from wbc.web.engine import Engine

    assert compose_cfg("serve.yaml", [], tmp_path / "s").bit_depth is None  # null = the checkpoint's
    path = _dark(tmp_path / "dark.png")
    rgb, _ = Engine(SimpleNamespace(bit_depth=12, classes=[])).decode(path.read_bytes(), path.name)
    assert rgb.max() == AS_12_BIT
    rgb, _ = Engine(SimpleNamespace(classes=[])).decode(path.read_bytes(), path.name)  # a pipeline without one: auto
    assert rgb.max() == AS_10_BIT


def test_segmenter_and_classifier_at_other_depths_need_bit_depth(tmp_path):
    from wbc.inference import CellPipeline

    seg, clf = tiny_modules(tmp_path)
    seg.hparams.data_info = {**seg.hparams.data_info, "bit_depth": 12}
    assert CellPipeline(seg, None).bit_depth == 12
    with pytest.raises(ValueError, match=r"bit_depth.*12.*auto"):
        CellPipeline(seg, clf)  # an image is read once: which depth is meant cannot be guessed
    assert CellPipeline(seg, clf, bit_depth=12).bit_depth == 12


def test_ensemble_members_must_share_the_depth():
    from wbc.ensemble import common_data_info

    def member(info: dict) -> SimpleNamespace:
        return SimpleNamespace(hparams={"data_info": info})

    assert common_data_info([member({"bit_depth": "auto"}), member({})])["bit_depth"] == "auto"  # an old checkpoint is auto
    with pytest.raises(ValueError, match="data_info.bit_depth"):
        common_data_info([member({"bit_depth": 12}), member({})])


def test_the_onnx_export_carries_the_depth(tmp_path):
    pytest.importorskip("onnxruntime")
    from wbc.onnx_backend import export_models, pipeline_from_export

    seg, _ = tiny_modules(tmp_path)
    seg.hparams.data_info = {**seg.hparams.data_info, "bit_depth": 12}
    export_models(seg, None, tmp_path / "export")
    assert json.loads((tmp_path / "export" / "export.json").read_text())["segmenter"]["data_info"]["bit_depth"] == 12
    assert pipeline_from_export(tmp_path / "export").bit_depth == 12
    assert pipeline_from_export(tmp_path / "export", bit_depth=16).bit_depth == 16
