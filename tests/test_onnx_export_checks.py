"""An ONNX export folder is checked against itself before it runs (wbc.onnx_checks): export.json edits that
disagree with the graphs, graphs replaced or half re-exported, external data, and `onnx=` given together
with checkpoints are refused with one error naming the folder and the key; format_version 1 exports (before
the hashes) still load, with one warning."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from tests.helpers_models import compose_cfg, tiny_modules  # noqa: E402
from wbc.onnx_backend import export_models, load_export, pipeline_from_export  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, torch.nn.Module]:
    seg, clf = tiny_modules(tmp_path_factory.mktemp("models"), seed=1)
    return seg, clf


@pytest.fixture(scope="module")
def good(models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One export of the tiny models, copied by each test that edits it."""
    out = tmp_path_factory.mktemp("good") / "export"
    export_models(*models, out)
    return out


def _copy(src: Path, dst: Path, edit: Callable[[dict, Path], None] | None = None) -> Path:
    shutil.copytree(src, dst)
    if edit is not None:
        meta = json.loads((dst / "export.json").read_text())
        edit(meta, dst)
        (dst / "export.json").write_text(json.dumps(meta))
    return dst


def _legacy(meta: dict, d: Path) -> None:
    """What export.py wrote before this change: format_version 1, no sha256, no graph metadata."""
    meta["format_version"] = 1
    for key in ("segmenter", "classifier"):
        meta[key].pop("sha256", None)
        model = onnx.load(str(d / meta[key]["file"]))
        del model.metadata_props[:]
        onnx.save(model, str(d / meta[key]["file"]))


def _info(key: str, edit: Callable[[dict], None]) -> Callable[[dict, Path], None]:
    return lambda meta, d: edit(meta[key]["data_info"])


def _replace_segmenter(meta: dict, d: Path) -> None:
    model = onnx.load(str(d / "segmenter.onnx"))
    model.doc_string = "edited"  # any change to the file: its metadata still agrees, its sha256 does not
    onnx.save(model, str(d / "segmenter.onnx"))


TAMPERED = {  # edit -> the key and expectation the refusal names
    "classes cut": (_info("classifier", lambda i: i.update(classes=i["classes"][:2])), r"classifier\.data_info\.classes=.* differ"),
    "class added": (_info("classifier", lambda i: i.update(classes=[*i["classes"], "basophil"])), r"classifier\.data_info\.classes="),
    "classes reordered": (_info("classifier", lambda i: i.update(classes=i["classes"][::-1])),
                          r"classes=\['promyelocyte', 'neutrophil', 'lymphoblast'\] differ .* expected the classes, in order"),
    "segmenter as classifier": (lambda m, d: m["classifier"].update(file="segmenter.onnx"),
                                r"segmenter\.onnx is a segmentation graph .* names it as classifier\.file; expected a classification graph"),
    "classifier as segmenter": (lambda m, d: m["segmenter"].update(file="classifier.onnx"), r"classifier\.onnx is a classification graph"),
    "image_size": (_info("segmenter", lambda i: i.update(image_size=64)), r"segmenter\.data_info \(image_size\) makes B x 3 x 64 x 64"),
    "grayscale": (_info("segmenter", lambda i: i["preprocess"].update(grayscale=True)), r"segmenter\.data_info \(preprocess.*B x 1 x 32"),
    "crop size": (_info("classifier", lambda i: i["crops"].update(image_size=48)), r"classifier\.data_info \(crops\.image_size\)"),
    "format_version": (lambda m, d: m.update(format_version=99), r"export\.json format_version=99: expected 1 or 2"),
    "stage": (lambda m, d: m["segmenter"].update(stage="classification"), r"segmenter\.stage='classification': expected 'segmentation'"),
    "no preprocess": (_info("segmenter", lambda i: i.pop("preprocess")), r"segmenter\.data_info has no preprocess"),
    "no classifier preprocess": (_info("classifier", lambda i: i.pop("preprocess")), r"classifier\.data_info has no preprocess"),
    "no image_size": (_info("segmenter", lambda i: i.pop("image_size")), r"segmenter\.data_info has no image_size"),
    "no crops": (_info("classifier", lambda i: i.pop("crops")), r"classifier\.data_info has no crops"),
    "no postprocess": (_info("segmenter", lambda i: i.pop("postprocess")), r"segmenter\.data_info has no postprocess"),
    "sha256 dropped": (lambda m, d: m["classifier"].pop("sha256", None), r"classifier\.onnx has sha256 \w+, export\.json classifier\.sha256=None"),
    "graph edited": (_replace_segmenter, r"segmenter\.onnx has sha256 \w+, export\.json segmenter\.sha256='\w+'; expected the graph"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_an_export_json_that_disagrees_with_its_graphs_is_refused(good, tmp_path: Path, case: str) -> None:
    edit, match = TAMPERED[case]
    d = _copy(good, tmp_path / "export", edit)
    with pytest.raises(ValueError, match=rf"^onnx={d}: .*{match}") as err:
        pipeline_from_export(d)
    assert "expected" in str(err.value)


def test_export_records_hashes_and_stamps_the_graphs(models, good) -> None:
    meta = json.loads((good / "export.json").read_text())
    assert meta["format_version"] == 2
    for key, stage in (("segmenter", "segmentation"), ("classifier", "classification")):
        path = good / meta[key]["file"]
        assert meta[key]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert props["wbc.stage"] == stage and json.loads(props["wbc.classes"]) == list(models[1].hparams.data_info["classes"])
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(load_export(good)[1].predict_proba(x).numpy(), models[1].predict_proba(x).numpy(), atol=1e-4, rtol=0)


def test_a_format_1_export_loads_with_one_warning_and_keeps_the_shape_checks(good, tmp_path: Path, caplog) -> None:
    d = _copy(good, tmp_path / "old", _legacy)
    with caplog.at_level(logging.WARNING, logger="wbc"):
        pipe = pipeline_from_export(d)
    warned = [r.getMessage() for r in caplog.records if "cannot be verified" in r.getMessage()]
    assert len(warned) == 1 and f"onnx={d}" in warned[0] and "re-export" in warned[0]
    assert pipe.classes == json.loads((good / "export.json").read_text())["classifier"]["data_info"]["classes"]
    # without metadata the graphs' shapes still catch a cut class list and a segmenter named as classifier
    cut = _copy(d, tmp_path / "cut", _info("classifier", lambda i: i.update(classes=i["classes"][:2])))
    with pytest.raises(ValueError, match=rf"^onnx={cut}: classifier\.onnx outputs 3 class probabilities, but .* lists 2"):
        load_export(cut)
    swapped = _copy(d, tmp_path / "swapped", lambda m, _: m["classifier"].update(file="segmenter.onnx"))
    with pytest.raises(ValueError, match=r"segmenter\.onnx \(export\.json classifier\.file\) outputs 4 dims; expected a classification"):
        load_export(swapped)


def _external_graph(path: Path, location: str) -> None:
    """A segmenter-shaped graph whose one weight lives in an external file named `location`."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((1, 1, 32, 32), np.float32), "W")
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    for k, v in {"location": location, "offset": "0", "length": str(4 * 32 * 32)}.items():
        e = w.external_data.add()
        e.key, e.value = k, v
    nodes = [helper.make_node("ReduceMean", ["image"], ["m"], axes=[1], keepdims=1), helper.make_node("Add", ["m", "W"], ["s"]),
             helper.make_node("Sigmoid", ["s"], ["nucleus_probability"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])],
                              [helper.make_tensor_value_info("nucleus_probability", TensorProto.FLOAT, ["batch", 1, 32, 32])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    helper.set_model_props(model, {"wbc.stage": "segmentation", "wbc.classes": "[]"})
    path.write_bytes(model.SerializeToString())


@pytest.mark.parametrize("legacy", [False, True])
def test_a_graph_with_external_data_is_refused_before_onnxruntime_sees_it(good, tmp_path: Path, monkeypatch, legacy: bool) -> None:
    secret = tmp_path / "secret.bin"
    np.full((1, 1, 32, 32), 3.0, np.float32).tofile(secret)

    def edit(meta: dict, d: Path) -> None:
        if legacy:
            _legacy(meta, d)
        _external_graph(d / "segmenter.onnx", "../secret.bin")
        meta["segmenter"]["data_info"]["classes"] = []
        if not legacy:  # a hand-made export.json with the right hash: the external data is still refused
            meta["segmenter"]["sha256"] = hashlib.sha256((d / "segmenter.onnx").read_bytes()).hexdigest()

    d = _copy(good, tmp_path / "export", edit)
    monkeypatch.setattr("wbc.onnx_backend._session", lambda *a, **k: pytest.fail("an onnxruntime session was created"))
    with pytest.raises(ValueError, match=rf"^onnx={d}: segmenter\.onnx \(export\.json segmenter\.file\) keeps tensor\(s\) \['W'\] as external"):
        load_export(d)


def test_a_failed_re_export_leaves_the_previous_export(models, good, tmp_path: Path, monkeypatch) -> None:
    """The classifier fails after the new segmenter graph is written (an unsupported opset, Ctrl-C, OOM): the
    folder still holds the previous export, whole, and no temporary folder is left behind."""
    import wbc.onnx_backend as backend

    out = _copy(good, tmp_path / "export")
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    seg_b, clf_b = tiny_modules(tmp_path / "b", seed=7)
    real_export = backend._export

    def failing(head, shape, path, *args, **kwargs):
        if path.name == "classifier.onnx":
            raise RuntimeError("classifier export failed")
        return real_export(head, shape, path, *args, **kwargs)

    monkeypatch.setattr(backend, "_export", failing)
    with pytest.raises(RuntimeError, match="classifier export failed"):
        export_models(seg_b, clf_b, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # the temporary folder is gone
    monkeypatch.setattr(backend, "_export", real_export)
    export_models(seg_b, clf_b, out)  # an existing folder is overwritten, as before; other files stay
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(load_export(out)[0].predict_probability(x).numpy(), seg_b.predict_probability(x).numpy(), atol=1e-4, rtol=0)
    assert (out / "notes.txt").read_text() == "mine" and not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    # a folder mixing the new segmenter with the previous export.json (a crash between the moves) is refused
    shutil.copy(out / "segmenter.onnx", _copy(good, tmp_path / "mixed") / "segmenter.onnx")
    with pytest.raises(ValueError, match=r"segmenter\.onnx has sha256 \w+, export\.json segmenter\.sha256="):
        load_export(tmp_path / "mixed")


def test_export_refuses_models_an_export_could_not_run(models, tmp_path: Path) -> None:
    seg, clf = models
    with pytest.raises(ValueError, match=r"export\.py: the segmenter given is a classification model .* swapped\?"):
        export_models(clf, seg, tmp_path / "swapped")
    bare = type("Bare", (), {"hparams": {"stage": "segmentation", "data_info": {"image_size": 32}}})()
    with pytest.raises(ValueError, match=r"export\.py segmenter: segmenter\.data_info has no preprocess, postprocess"):
        export_models(bare, None, tmp_path / "bare")
    assert not (tmp_path / "swapped").exists() and not (tmp_path / "bare").exists()


@pytest.mark.parametrize("key", ["run", "ensemble", "segmenter", "classifier"])
@pytest.mark.parametrize("config", ["predict.yaml", "serve.yaml"])
def test_onnx_with_checkpoints_is_refused(good, tmp_path: Path, key: str, config: str) -> None:
    """onnx= runs the export's own models: a run / ensemble / checkpoint given too used to be silently ignored."""
    from wbc.cli.predict import build_pipeline

    cfg = compose_cfg(config, [f"onnx={good}", f"{key}={tmp_path / 'ckpt'}"], tmp_path / "out")
    with pytest.raises(ValueError, match=rf"^onnx={good} and {key}={tmp_path / 'ckpt'} were both given: .*expected one of them"):
        build_pipeline(cfg)
