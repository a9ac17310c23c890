"""Bad-input matrix: data, config, checkpoints and predict each fail once, with one message that
names the file or config key and says what was expected; odd-but-valid inputs are accepted.

The data cases go through the DataModule (what train.py does); the unit-level checks of the
readers live in test_manifest.py / test_splits.py. No case trains a model.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from datamodules.segmentation import SegmentationDataModule
from lightning_modules.classification import ClassifierModule
from lightning_modules.common import build, check_resume_checkpoint, load_checkpoint, module_from_checkpoint
from lightning_modules.segmentation import SegmentationModule
from tests.helpers_data import (
    cell,
    grey_mask,
    make_csv_dataset,
    png_header_only,
    truncate,
    write_image,
    write_labels,
)
from tests.helpers_models import TINY, DiscSegmenter, compose_cfg, data_infos, save_checkpoint, tiny_modules
from wbc.data.imageio import read_rgb
from wbc.data.manifest import ManifestError
from wbc.data.splits import SplitError
from wbc.inference import CellPipeline
from wbc.predict_io import list_inputs, predict_images
from wbc.rundir import resolve_checkpoint

# --------------------------------------------------------------------------- fixtures


def _dataset(tmp_path: Path, counts: dict[str, int] | None = None) -> Path:
    return make_csv_dataset(tmp_path / "ds", counts or {"a": 6, "b": 6}, size=16)


def _dm(root: Path, **kw) -> SegmentationDataModule:
    kw = {"classes": ["a", "b"], "splits": {"k": 2, "seed": 0, "test_fraction": 0.3}, **kw}
    return SegmentationDataModule(root=str(root), name="bad", image_size=16, preprocess={"clahe": False}, **kw)


@pytest.fixture(scope="module")
def modules(tmp_path_factory) -> tuple[SegmentationModule, ClassifierModule]:
    return tiny_modules(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, modules) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpts")
    seg, clf = modules
    return {"segmentation": save_checkpoint(seg, d / "seg.ckpt"), "classification": save_checkpoint(clf, d / "cls.ckpt")}


@pytest.fixture
def disc_pipe(modules) -> CellPipeline:
    """Finds one centred nucleus in any image; classifies it with the untrained tiny classifier."""
    _, clf = modules
    return CellPipeline(DiscSegmenter(dict(clf.hparams.data_info)), clf)


def _tiny_cfg(tmp_path: Path, *overrides: str):
    return compose_cfg("train.yaml", [*TINY, *overrides], tmp_path / "run", tmp_path / "data")


# --------------------------------------------------------------------------- data: unreadable files


def _zero(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    truncate(path)


def _text(path: Path) -> None:
    path.write_text("image,class_name\nx.png,a\n")


BAD_FILES = [(_zero, r"empty \(0 bytes\)"), (_truncated, "truncated"), (_text, "not an image")]
BAD_IDS = ["zero-byte", "truncated", "text-as-png"]


@pytest.mark.parametrize(("spoil", "expected"), BAD_FILES, ids=BAD_IDS)
def test_dataset_with_unreadable_image_names_it(tmp_path, spoil, expected):
    root = _dataset(tmp_path)
    bad = root / "images" / "b_002.png"
    spoil(bad)
    with pytest.raises(ManifestError, match=rf"bad file\(s\) in dataset bad .*{re.escape(str(bad))}: .*{expected}"):
        _dm(root).setup("fit")


def _rgba(rgb: np.ndarray) -> np.ndarray:
    return np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])


def _sixteen_bit(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.uint16) * 257


def _grey(rgb: np.ndarray) -> np.ndarray:
    return rgb.mean(axis=2).astype(np.uint8)


@pytest.mark.parametrize("convert", [_rgba, _sixteen_bit, _grey], ids=["rgba", "16-bit", "grey"])
def test_dataset_accepts_rgba_16bit_and_grey_images(tmp_path, convert):
    root = _dataset(tmp_path)
    path = root / "images" / "a_001.png"
    rgb = read_rgb(path)
    write_image(path, convert(rgb))
    dm = _dm(root)
    dm.setup("fit")
    item = dm.cached(["images/a_001"])[0]
    assert item.image.shape == (16, 16, 3) and item.image.dtype == np.uint8
    if convert is _sixteen_bit:  # scaled back to 8 bits, not clipped
        np.testing.assert_array_equal(item.image, rgb)


def test_dataset_missing_mask(tmp_path):
    root = _dataset(tmp_path)
    (root / "masks" / "a_003.png").unlink()
    with pytest.raises(ManifestError, match=r"masks/a_003\.png: mask file not found for image a_003\.png"):
        _dm(root).setup("fit")


def test_dataset_mask_size_mismatch(tmp_path):
    root = _dataset(tmp_path)
    write_image(root / "masks" / "a_002.png", grey_mask(cell((16, 12))[1]))
    with pytest.raises(ManifestError, match=r"masks/a_002\.png: mask size 12x16 differs from image a_002\.png size 16x16 .*must be equal"):
        _dm(root).setup("fit")


def test_dataset_mask_values_outside_encoding(tmp_path):
    root = _dataset(tmp_path)
    mask = grey_mask(cell(16)[1])
    mask[0, :4] = 60
    write_image(root / "masks" / "b_000.png", mask)
    with pytest.raises(ManifestError, match=r"masks/b_000\.png: 4 pixels have values outside data\.mask_encoding \(e\.g\. \[60\]\); expected background"):
        _dm(root).setup("fit")


def test_csv_missing_columns(tmp_path):
    root = _dataset(tmp_path)
    rows = [{"image": f"images/a_{i:03d}.png", "class_name": "a"} for i in range(6)]
    write_labels(root, rows, ["image", "class_name"])
    with pytest.raises(ManifestError, match=r"labels\.csv: missing columns \['mask'\]; found \['image', 'class_name'\]"):
        _dm(root).setup("fit")


def test_csv_unknown_class(tmp_path):
    root = _dataset(tmp_path, {"a": 6, "b": 6, "c": 2})
    with pytest.raises(ManifestError, match=r"unknown class\(es\) \['c'\]: not in data\.classes=\['a', 'b'\]"):
        _dm(root).setup("fit")


def test_csv_duplicate_rows(tmp_path):
    extra = [{"image": "images/a_000.png", "mask": "masks/a_000.png", "class_name": "a", "group": ""}]
    root = make_csv_dataset(tmp_path / "ds", {"a": 6, "b": 6}, size=16, extra_rows=extra)
    with pytest.raises(ManifestError, match=r"labels\.csv: duplicate rows for image\(s\) \['images/a_000\.png'\]"):
        _dm(root).setup("fit")


def test_configured_class_with_no_images(tmp_path):
    root = _dataset(tmp_path)
    with pytest.raises(ManifestError, match=r"class\(es\) \['c'\] in data\.classes have no images"):
        _dm(root, classes=["a", "b", "c"]).setup("fit")


def test_data_root_missing(tmp_path):
    with pytest.raises(ManifestError, match=rf"data\.root={re.escape(str(tmp_path / 'gone'))}: folder not found"):
        _dm(tmp_path / "gone").setup("fit")


def test_fold_not_below_k(tmp_path):
    with pytest.raises(SplitError, match=r"data\.fold=2 is out of range: this split has k=2 folds \(0\.\.1\)"):
        _dm(_dataset(tmp_path), fold=2).setup("fit")


def test_k_larger_than_smallest_class_is_a_note_not_a_crash(tmp_path):
    """3 'b' images -> 1 test + 2 training, fewer than k=3: splits are made, the meta says so."""
    dm = _dm(_dataset(tmp_path, {"a": 10, "b": 3}), splits={"k": 3, "seed": 0, "test_fraction": 0.3})
    dm.setup("fit")
    notes = dm.load_splits()["meta"]["notes"]
    assert any("fewer training images than k=3" in n for n in notes), notes
    saved = json.loads(dm.splits_path().read_text())
    assert saved["meta"]["notes"] == notes  # persisted with the splits
    assert sum(len(dm.datasets[s]) for s in ("train", "val", "test")) == 13


# --------------------------------------------------------------------------- config


def _build_model(cfg):
    seg_info, cls_info = data_infos(cfg)
    return instantiate(cfg.model, data_info=cls_info if "classif" in cfg.model._target_.lower() else seg_info)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.net.encoder_name=resnet_nope", r"model\.net\.encoder_name='resnet_nope' is not an smp encoder; expected one of"),
        ("model.net.encoder_name=tu-nope_net", r"model\.net\.encoder_name='tu-nope_net': 'nope_net' is not a timm model"),
        ("model.loss.name=nope", r"model\.loss\.name='nope' is not a segmentation loss; expected one of \['dice'"),
    ],
    ids=["smp-encoder", "timm-encoder", "seg-loss"],
)
def test_segmentation_model_config_errors_name_the_key(tmp_path, override, expected):
    with pytest.raises(Exception, match=expected):  # Hydra wraps it; the message is ours
        _build_model(_tiny_cfg(tmp_path, override))


def test_classifier_backbone_unknown():
    # built directly: `model=classifier_timm` currently inherits SmallCNN's net keys (widths, ...),
    # which timm_classifier rejects before the name is checked (reported to the lead)
    net = {"_target_": "lightning_modules.networks.timm_classifier", "name": "nope_net", "in_channels": 3}
    with pytest.raises(ValueError, match=r"model\.net\.name='nope_net': unknown timm model"):
        build(net, num_classes=3)


def test_classification_loss_unknown(tmp_path):
    """The classification loss is built at setup (class weights need the data): same message."""
    module = _build_model(_tiny_cfg(tmp_path, "experiment=classify", "model.loss.name=nope"))
    with pytest.raises(ValueError, match=r"model\.loss\.name='nope' is not a classification loss; expected one of \['ce'"):
        module.setup("fit")


def test_sampler_unknown(tmp_path):
    cfg = _tiny_cfg(tmp_path, "data.sampler=oversample")
    with pytest.raises(Exception, match=r"data\.sampler must be 'none' or 'balanced', got 'oversample'"):
        instantiate(cfg.data, _convert_="partial")


# --------------------------------------------------------------------------- checkpoints


def test_resume_checkpoint_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"ckpt_path={re.escape(str(tmp_path / 'last.ckpt'))}: file not found"):
        check_resume_checkpoint(str(tmp_path / "last.ckpt"), "segmentation")


def test_resume_checkpoint_not_a_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_text("epoch,loss\n0,1.0\n")
    with pytest.raises(ValueError, match=r"ckpt_path=.*last\.ckpt: not a (PyTorch/Lightning checkpoint file|loadable Lightning checkpoint)"):
        check_resume_checkpoint(str(path), "segmentation")


def test_resume_checkpoint_from_other_stage(ckpts):
    with pytest.raises(ValueError, match=r"cls\.ckpt: is a 'classification' checkpoint, expected a 'segmentation' one"):
        check_resume_checkpoint(str(ckpts["classification"]), "segmentation")


def test_resume_checkpoint_without_training_state(ckpts):
    """A weights-only file (no optimizer/loop state) loads for prediction but cannot resume."""
    with pytest.raises(ValueError, match=r"seg\.ckpt: cannot resume training from it: it has no \['optimizer_states'"):
        check_resume_checkpoint(str(ckpts["segmentation"]), "segmentation")


class _Payload:
    """Unpickling this would create a directory: proof that the pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_checkpoint_with_pickled_object_is_refused(tmp_path, modules):
    """Checkpoints are loaded weights-only: an arbitrary object in them is refused, never run."""
    seg, _ = modules
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    ckpt = {"state_dict": seg.state_dict(), "hyper_parameters": {**dict(seg.hparams), "extra": _Payload(marker)}}
    torch.save(ckpt, path)
    for load in (
        lambda: load_checkpoint(str(path), "segmentation"),
        lambda: module_from_checkpoint(SegmentationModule, str(path), "segmentation"),
        lambda: check_resume_checkpoint(str(path), "segmentation"),
    ):
        with pytest.raises(ValueError, match=r"evil\.ckpt: not a loadable Lightning checkpoint \(UnpicklingError: .*Weights only load failed"):
            load()
    assert not marker.exists()


def test_predict_checkpoint_dir_without_checkpoint(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(FileNotFoundError, match=r"segmenter=.*run: directory holds no segmentation checkpoint"):
        resolve_checkpoint(tmp_path / "run", "segmentation", "segmenter")


def test_predict_checkpoints_swapped(ckpts):
    with pytest.raises(ValueError, match=r"cls\.ckpt: is a 'classification' checkpoint, expected a 'segmentation' one"):
        CellPipeline.from_checkpoints(ckpts["classification"], ckpts["segmentation"])


# --------------------------------------------------------------------------- predict


def _predict_cfg(tmp_path: Path, *overrides: str):
    return compose_cfg("predict.yaml", list(overrides), tmp_path / "out")


def test_predict_empty_folder(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match=r"input=.*in: folder contains no images \(extensions \['\.png'"):
        list_inputs(tmp_path / "in")


def test_predict_input_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"input=.*nowhere: no such file or folder"):
        list_inputs(tmp_path / "nowhere")


def test_predict_without_models(tmp_path):
    from wbc.cli import predict

    write_image(tmp_path / "x.png", cell(16)[0])
    with pytest.raises(ValueError, match=r"predict\.py needs run=<pipeline run dir>, .*segmenter=<checkpoint> or onnx=<export\.py dir>"):
        predict.predict(_predict_cfg(tmp_path, f"input={tmp_path / 'x.png'}"))


def test_predict_onnx_dir_without_export(tmp_path):
    from wbc.cli import predict

    write_image(tmp_path / "x.png", cell(16)[0])
    (tmp_path / "onnx").mkdir()
    with pytest.raises(FileNotFoundError, match=r"onnx=.*onnx: no export\.json there; expected a folder written by export\.py"):
        predict.predict(_predict_cfg(tmp_path, f"input={tmp_path / 'x.png'}", f"onnx={tmp_path / 'onnx'}"))


@pytest.mark.parametrize(("spoil", "expected"), BAD_FILES, ids=BAD_IDS)
def test_predict_reports_unreadable_file(tmp_path, disc_pipe, spoil, expected):
    path = write_image(tmp_path / "in" / "bad.png", cell(24)[0])
    spoil(path)
    rows, failures = predict_images(disc_pipe, [path], tmp_path / "out")
    assert rows == [] and len(failures) == 1
    assert failures[0]["image"] == str(path)
    assert re.search(rf"{re.escape(str(path))}: .*{expected}", failures[0]["error"]), failures[0]["error"]
    saved = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert saved["failed"] == failures


def test_predict_accepts_rgba_16bit_and_grey(tmp_path, disc_pipe):
    rgb = cell(24)[0]
    files = [write_image(tmp_path / "in" / f"{f.__name__[1:]}.png", f(rgb)) for f in (_rgba, _sixteen_bit, _grey)]
    rows, failures = predict_images(disc_pipe, files, tmp_path / "out")
    assert failures == [] and sorted(Path(r["image"]).name for r in rows) == ["grey.png", "rgba.png", "sixteen_bit.png"]


def test_predict_image_smaller_than_crop(tmp_path, disc_pipe):
    """A 20x20 image with crop size 32: the crop is padded, the cell is classified."""
    assert disc_pipe.crop_spec.size == 32
    path = write_image(tmp_path / "small.png", cell(20)[0])
    rows, failures = predict_images(disc_pipe, [path], tmp_path / "out")
    assert failures == [] and len(rows) == 1
    assert rows[0]["class"] in disc_pipe.classes and 0.0 <= rows[0]["probability"] <= 1.0
    crop = read_rgb(tmp_path / "out" / "crops" / "small_cell01.png")
    assert crop.shape == (32, 32, 3)
    assert read_rgb(tmp_path / "out" / "masks" / "small.png").shape[:2] == (20, 20)


def test_predict_huge_image_refused_before_decoding(tmp_path, disc_pipe, monkeypatch):
    import wbc.predict_io

    def never(path):
        raise AssertionError(f"{path} was decoded")

    monkeypatch.setattr(wbc.predict_io, "read_rgb", never)
    path = png_header_only(tmp_path / "huge.png", 15_000, 12_000)
    rows, failures = predict_images(disc_pipe, [path], tmp_path / "out", max_pixels=100_000_000)
    assert rows == [] and len(failures) == 1
    assert re.search(r"huge\.png: 15000x12000 = 180000000 pixels exceeds the limit max_pixels=100000000 \(predict\.max_pixels\)", failures[0]["error"])


def test_predict_file_over_size_limit(tmp_path, disc_pipe):
    path = write_image(tmp_path / "big.png", np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    rows, failures = predict_images(disc_pipe, [path], tmp_path / "out", max_file_mb=0.001)
    assert rows == [] and re.search(r"big\.png: \d+ bytes exceeds the limit max_file_mb=0\.001 \(predict\.max_file_mb\)", failures[0]["error"])


def test_predict_config_has_the_limits(tmp_path):
    cfg = _predict_cfg(tmp_path, "input=x")
    from wbc.data.imageio import DEFAULT_MAX_PIXELS

    # max_pixels: null = the one default every reader applies (wbc.data.imageio)
    assert cfg.max_file_mb > 0 and cfg.max_pixels is None and DEFAULT_MAX_PIXELS >= 20_000_000 and cfg.onnx is None
