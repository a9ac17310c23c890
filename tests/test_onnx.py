"""ONNX export (export.py) and the onnxruntime backend: same outputs as eager PyTorch within 1e-4,
and predict.py runs the same pipeline on it (`onnx=<export dir>`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException

pytest.importorskip("onnxruntime")

from tests.helpers_data import write_image  # noqa: E402
from tests.helpers_models import compose_cfg, save_checkpoint, tiny_modules  # noqa: E402
from wbc.cli import export  # noqa: E402
from wbc.data.synthetic import SyntheticSpec, render_image  # noqa: E402
from wbc.evaluation.runs import apply_tta  # noqa: E402
from wbc.inference import CellPipeline  # noqa: E402
from wbc.onnx_backend import OnnxClassifier, OnnxSegmenter, export_models, load_export, pipeline_from_export  # noqa: E402

ATOL = 1e-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(segmenter, classifier, checkpoints dir, export dir): untrained tiny models exported by export.py."""
    d = tmp_path_factory.mktemp("onnx")
    seg, clf = tiny_modules(d, seed=1)
    clf.temperature.fill_(1.7)  # a fitted temperature: inside the graph, so eager and ONNX agree on calibrated output
    clf.review_min_probability.fill_(0.4)
    seg_ckpt = save_checkpoint(seg, d / "seg" / "checkpoints" / "last.ckpt")
    cls_ckpt = save_checkpoint(clf, d / "cls" / "checkpoints" / "last.ckpt")
    export.export([f"segmenter={seg_ckpt.parent.parent}", f"classifier={cls_ckpt}", f"out={d / 'export'}"])
    return seg, clf, d, d / "export"


def _images(n: int = 2, size: int = 64) -> list[np.ndarray]:
    spec = SyntheticSpec(image_size=size, seed=3)
    return [render_image(spec, i, c)[0] for i, c in zip(range(n), ("neutrophil", "lymphoblast", "promyelocyte"))]


def test_export_writes_models_and_data_info(exported):
    seg, clf, _, out = exported
    assert {p.name for p in out.iterdir()} >= {"segmenter.onnx", "classifier.onnx", "export.json"}
    meta = json.loads((out / "export.json").read_text())
    assert meta["segmenter"]["data_info"] == seg.hparams.data_info
    assert meta["classifier"]["data_info"] == clf.hparams.data_info
    assert meta["classifier"]["data_info"]["crops"]["size"] == 32
    assert meta["classifier"]["calibration"] == {"temperature": pytest.approx(1.7), "review_min_probability": pytest.approx(0.4)}
    assert load_export(out)[1].calibration() == meta["classifier"]["calibration"]
    assert meta["segmenter"]["input_shape"] == [None, 3, 32, 32] and meta["classifier"]["input_shape"] == [None, 3, 32, 32]


def test_exported_models_match_eager(exported):
    seg, clf, _, out = exported
    oseg, oclf = load_export(out)
    assert isinstance(oseg, OnnxSegmenter) and isinstance(oclf, OnnxClassifier)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32, generator=g)  # batch 3: the batch axis is dynamic
    np.testing.assert_allclose(oseg.predict_probability(x).numpy(), seg.predict_probability(x).numpy(), atol=ATOL, rtol=0)
    crops = torch.rand(5, 3, 32, 32, generator=g)
    got = oclf.predict_proba(crops).numpy()
    np.testing.assert_allclose(got, clf.predict_proba(crops).numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)


def test_onnx_pipeline_matches_torch_pipeline(exported):
    seg, clf, _, out = exported
    eager, onnx = CellPipeline(seg, clf), pipeline_from_export(out)
    assert onnx.crop_spec == eager.crop_spec and onnx.classes == eager.classes
    for rgb in _images():
        a, b = eager(rgb), onnx(rgb)
        np.testing.assert_allclose(b.prob, a.prob, atol=ATOL, rtol=0)
        np.testing.assert_array_equal(b.labels, a.labels)
        np.testing.assert_allclose(b.class_probs, a.class_probs, atol=ATOL, rtol=0)
        assert set(b.timings) == {"segment_ms", "cells_ms", "classify_ms"}
        assert len(a.review) == len(a.instances) and b.review == a.review  # same threshold read from export.json


def test_onnx_and_torch_give_the_same_tiled_full_field(exported):
    """Sliding windows at a given scale (a field 4x the network tile): same probability and masks."""
    from wbc.data.synthetic import SyntheticSpec, render_field
    from wbc.scale import ScaleOptions

    seg, clf, _, out = exported
    opts = ScaleOptions(scale=0.5, overlap=0.5, batch=3)
    eager, onnx = CellPipeline(seg, clf, scale=opts), pipeline_from_export(out, scale=opts)
    rgb, _, _ = render_field(SyntheticSpec(image_size=64, seed=2), 0, (2, 2))
    a, b = eager(rgb), onnx(rgb)
    assert eager.last_scale.factor == onnx.last_scale.factor == 0.5
    np.testing.assert_allclose(b.prob, a.prob, atol=ATOL, rtol=0)
    np.testing.assert_array_equal(b.labels, a.labels)


def test_predict_py_on_onnx_equals_checkpoints(exported, tmp_path):
    from wbc.cli import predict

    _, _, d, out = exported
    inputs = tmp_path / "in"
    for i, rgb in enumerate(_images()):
        write_image(inputs / f"img{i}.png", rgb)
    runs = {}
    for name, overrides in {
        "ckpt": [f"segmenter={d / 'seg'}", f"classifier={d / 'cls'}"],
        "onnx": [f"onnx={out}"],
    }.items():
        cfg = compose_cfg("predict.yaml", [f"input={inputs}", *overrides], tmp_path / name)
        summary, _ = predict.predict(cfg)
        runs[name] = json.loads((tmp_path / name / "predictions.json").read_text())
        assert summary["failed"] == 0
        assert sorted(p.name for p in (tmp_path / name / "masks").iterdir()) == ["img0.png", "img1.png"]
    a, b = runs["ckpt"], runs["onnx"]
    assert a["classes"] == b["classes"] and len(a["cells"]) == len(b["cells"]) > 0
    for ra, rb in zip(a["cells"], b["cells"]):
        assert ra["bbox_y0"] == rb["bbox_y0"] and ra["class"] == rb["class"]
        assert rb["probability"] == pytest.approx(ra["probability"], abs=ATOL)


def test_export_cli_arguments(tmp_path):
    with pytest.raises(SystemExit, match=r"unexpected argument 'model=x'; expected key=value with key in \['run'"):
        export.parse_args(["model=x"])
    with pytest.raises(SystemExit, match=r"needs run=<pipeline run dir> or segmenter=<checkpoint>"):
        export.export([f"out={tmp_path}"])
    with pytest.raises(SystemExit, match=r"out=<dir> is required with segmenter="):
        export.export([f"segmenter={tmp_path / 'x.ckpt'}"])
    with pytest.raises(FileNotFoundError, match=r"segmenter=.*nowhere: no such checkpoint file or run directory"):
        export.export([f"run={tmp_path / 'nowhere'}"])


def test_export_of_ensembles_matches_their_torch_pipeline(exported, tmp_path):
    """`segmenter=[<RGB run>,<grey + CLAHE run>] classifier=[a,b,<masked-crop run>]`: each ensemble is one graph;
    the segmenter takes the two inputs stacked (3 + 1 channels, data_info.input_groups), the classifier plain
    and masked crops stacked (3 + 3), and the ONNX pipeline builds them from export.json, so it gives what the
    torch pipeline of the same ensembles gives."""
    from wbc.ensemble import load_models

    seg, clf, d, _ = exported
    seg_grey, _ = tiny_modules(tmp_path / "grey", ["data.preprocess.grayscale=true", "data.preprocess.clahe=true"], seed=2)
    _, clf3 = tiny_modules(tmp_path / "rgb2", seed=3)
    _, clf_masked = tiny_modules(tmp_path / "masked", ["data.crops.masked=true"], seed=4)  # plain + masked crops: 6 channels
    grey_ckpt = save_checkpoint(seg_grey, tmp_path / "grey_seg" / "checkpoints" / "last.ckpt")
    cls3_ckpt = save_checkpoint(clf3, tmp_path / "cls3" / "checkpoints" / "last.ckpt")
    masked_ckpt = save_checkpoint(clf_masked, tmp_path / "cls_masked" / "checkpoints" / "last.ckpt")
    segs, clss = f"[{d / 'seg'},{grey_ckpt.parent.parent}]", f"[{d / 'cls'},{cls3_ckpt},{masked_ckpt}]"
    meta = export.export([f"segmenter={segs}", f"classifier={clss}", f"out={tmp_path / 'export'}"])
    assert meta["segmenter"]["input_shape"] == [None, 4, 32, 32] and len(meta["segmenter"]["data_info"]["input_groups"]) == 2
    assert meta["classifier"]["input_shape"][1] == 6 and meta["classifier"]["data_info"]["crops"]["masked"] == "both"
    assert meta["sources"]["classifier"] == [str(d / "cls" / "checkpoints" / "last.ckpt"), str(cls3_ckpt), str(masked_ckpt)]
    seg_ens, cls_ens = load_models(export.model_spec(segs), "segmentation"), load_models(export.model_spec(clss), "classification")
    eager, onnx = CellPipeline(seg_ens, cls_ens), pipeline_from_export(tmp_path / "export")
    for rgb in _images():
        a, b = eager(rgb), onnx(rgb)
        np.testing.assert_allclose(b.prob, a.prob, atol=ATOL, rtol=0)
        np.testing.assert_array_equal(b.labels, a.labels)
        np.testing.assert_allclose(b.class_probs, a.class_probs, atol=ATOL, rtol=0)
    alone = CellPipeline(seg, clf)(_images()[0])
    assert not np.allclose(alone.prob, eager(_images()[0]).prob, atol=1e-3)  # the members do differ
    with pytest.raises(SystemExit, match=r"'\[\]' lists no checkpoint"):
        export.export(["segmenter=[]", f"out={tmp_path / 'x'}"])


ROT90 = (lambda t: t.rot90(1, (-2, -1)), lambda t: t.rot90(-1, (-2, -1)), lambda t: t.transpose(-2, -1))


class OrientedProbe(torch.nn.Module):
    """Logits that depend on where the pixels are: flips change them (the odd terms), and rows weigh
    differently from columns, so a rotation by 90 degrees changes them even after flip-averaging."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = torch.linspace(-1, 1, x.shape[-2])[:, None]
        c = torch.linspace(-1, 1, x.shape[-1])[None, :]
        terms = (x * (r + r.abs()), x * (c + 2 * c.abs()), x)
        return 10 * torch.stack([t.mean((1, 2, 3)) for t in terms], 1)


@pytest.mark.parametrize("mode", ["true", pytest.param("dihedral", marks=pytest.mark.slow)])  # dihedral: -m slow (CI time)
def test_classifier_tta_is_invariant_and_exported(tmp_path, mode):
    """classification.model.tta=true: probabilities averaged over the four flips, so a flipped crop gets the
    same answer; `dihedral` adds the transposes, so a crop rotated by 90 degrees does too. The ONNX export
    carries the views (eager and onnxruntime agree)."""
    _, plain = tiny_modules(tmp_path / "plain", seed=2)
    _, tta = tiny_modules(tmp_path / "tta", [f"classification.model.tta={mode}"], seed=2)
    assert tta.predict_views(torch.rand(2, 3, 32, 32)).shape[0] == (8 if mode == "dihedral" else 4)
    seg, _ = tiny_modules(tmp_path / "seg", seed=2)
    export_models(seg, tta, tmp_path / "export")
    _, oclf = load_export(tmp_path / "export")
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(oclf.predict_proba(x).numpy(), tta.predict_proba(x).numpy(), atol=ATOL, rtol=0)
    # each view too, so the export raises the "views disagree" review flag as the checkpoint does
    np.testing.assert_allclose(oclf.predict_views(x).numpy(), tta.predict_views(x).numpy(), atol=ATOL, rtol=0)
    export_models(seg, plain, tmp_path / "plain_export")
    assert load_export(tmp_path / "plain_export")[1].predict_views(x).shape == (1, 4, len(plain.classes))
    plain.net, tta.net = OrientedProbe(), OrientedProbe()
    for flipped in (x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)):
        torch.testing.assert_close(tta.predict_proba(flipped), tta.predict_proba(x), atol=1e-6, rtol=0)
    assert not torch.allclose(plain.predict_proba(x.flip(-1)), plain.predict_proba(x), atol=1e-3)
    rotated_same = [torch.allclose(tta.predict_proba(rot(x)), tta.predict_proba(x), atol=1e-6) for rot in ROT90]
    assert rotated_same == [mode == "dihedral"] * 3


@pytest.mark.parametrize("mode", ["true", pytest.param("dihedral", marks=pytest.mark.slow)])  # dihedral: -m slow (CI time)
def test_segmenter_tta_is_equivariant_and_exported(tmp_path, mode):
    """segmentation.model.tta=true: the nucleus probability of a flipped image is the flipped probability (the
    mean over the four flips); `dihedral`: of a rotated or transposed image (not square: H and W swap) the
    rotated one. The ONNX export carries it."""
    seg, _ = tiny_modules(tmp_path / "m", [f"segmentation.model.tta={mode}"], seed=3)
    plain, clf = tiny_modules(tmp_path / "p", seed=3)
    x = torch.rand(2, 3, 32, 64, generator=torch.Generator().manual_seed(4))
    for dims in ((-1,), (-2,), (-2, -1)):
        torch.testing.assert_close(seg.predict_probability(x.flip(dims)), seg.predict_probability(x).flip(dims), atol=1e-5, rtol=0)
    rotated_same = [torch.allclose(seg.predict_probability(rot(x)), rot(seg.predict_probability(x)), atol=1e-5) for rot in ROT90]
    assert rotated_same == [mode == "dihedral"] * 3
    assert not torch.allclose(plain.predict_probability(x.flip(-1)), plain.predict_probability(x).flip(-1), atol=1e-5)
    x = x[..., :32]  # the export's input size
    export_models(seg, clf, tmp_path / "export")
    oseg, _ = load_export(tmp_path / "export")
    np.testing.assert_allclose(oseg.predict_probability(x).numpy(), seg.predict_probability(x).numpy(), atol=ATOL, rtol=0)


def test_tta_setting_outside_the_choices_names_the_key(tmp_path):
    with pytest.raises(InstantiationException, match=r"model.tta='sideways': expected true .*dihedral"):
        tiny_modules(tmp_path, ["classification.model.tta=sideways"], seed=2)
    with pytest.raises(ValueError, match=r"^tta=3: expected true"):
        apply_tta([], 3)


def test_export_carries_a_morphology_model_and_predict_applies_it(exported, tmp_path):
    """export.py morphology=<model.json>: the export holds it (re-written, named in export.json), predict.py
    onnx=<export> averages it in as predict with the checkpoints and morphology= does; a model of other
    classes, a broken file and an export.json entry pointing outside the folder are refused."""
    from tests.helpers_models import fixed_morphology_model
    from wbc.cli import predict

    _, clf, d, _ = exported
    model_file = fixed_morphology_model(list(clf.hparams.data_info["classes"])).save(tmp_path / "morph.json")
    out = tmp_path / "export"
    export.export([f"segmenter={d / 'seg'}", f"classifier={d / 'cls'}", f"out={out}", f"morphology={model_file}"])
    meta = json.loads((out / "export.json").read_text())
    assert meta["morphology"]["file"] == "morphology.json" and meta["sources"]["morphology"] == str(model_file)
    inputs = tmp_path / "in"
    for i, rgb in enumerate(_images()):
        write_image(inputs / f"img{i}.png", rgb)
    runs = {}
    for name, overrides in {"ckpt": [f"segmenter={d / 'seg'}", f"classifier={d / 'cls'}", f"morphology={model_file}"],
                            "onnx": [f"onnx={out}"], "plain": [f"segmenter={d / 'seg'}", f"classifier={d / 'cls'}"]}.items():
        predict.predict(compose_cfg("predict.yaml", [f"input={inputs}", *overrides], tmp_path / name))
        runs[name] = json.loads((tmp_path / name / "predictions.json").read_text())
    assert runs["onnx"]["morphology"] == str((out / "morphology.json").resolve())
    pairs = list(zip(runs["ckpt"]["cells"], runs["onnx"]["cells"], runs["plain"]["cells"]))
    assert pairs and all(b["probability"] == pytest.approx(a["probability"], abs=ATOL) for a, b, _ in pairs)
    assert any(abs(b["probability"] - c["probability"]) > 1e-3 for _, b, c in pairs)  # it is applied, not ignored
    with pytest.raises(ValueError, match=r"morphology model classes .* differ from the classifier's"):
        export.export([f"segmenter={d / 'seg'}", f"classifier={d / 'cls'}", f"out={tmp_path / 'x'}",
                       f"morphology={fixed_morphology_model(['a', 'b']).save(tmp_path / 'other.json')}"])
    (tmp_path / "broken.json").write_text("{}")
    with pytest.raises(ValueError, match=r"broken.json: not a morphology classifier"):
        export.export([f"segmenter={d / 'seg'}", f"out={tmp_path / 'y'}", f"morphology={tmp_path / 'broken.json'}"])
    meta["morphology"]["file"] = "../morph.json"
    (out / "export.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"morphology.file='../morph.json' resolves to .* outside the export folder"):
        pipeline_from_export(out)
