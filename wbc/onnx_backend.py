"""ONNX export of the two models and onnxruntime stand-ins that `CellPipeline` accepts.

`export_models(segmenter, classifier, out_dir)` writes `segmenter.onnx` (image -> nucleus
probability), `classifier.onnx` (crops -> class probabilities; dynamic batch) and `export.json`
holding each model's `data_info` (preprocessing, network size, classes, crop geometry), so a
prediction from the export sees exactly the inputs the checkpoints were trained on. An ensemble
(fold runs, or an RGB and a grey + CLAHE segmenter for another lab's smears) is exported as one
graph that averages its members; segmenters of different inputs take them stacked along the
channels (`data_info.input_groups`), which the pipeline builds from export.json as from checkpoints.
Each graph carries its stage and classes and export.json its sha256, and the loader checks them against each
other (wbc.onnx_checks); the files are written into a temporary sibling folder and moved in at the end.

`OnnxSegmenter` / `OnnxClassifier` quack like the Lightning modules as far as
`wbc.inference.CellPipeline` is concerned (`predict_probability`, `predict_proba`,
`.hparams.data_info`, `.to()`, `.eval()`), so `pipeline_from_export(dir)` runs the very same
pipeline code on onnxruntime (`python predict.py onnx=<export dir> input=...`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wbc.ensemble import AttributeDict
from wbc.io import write_json
from wbc.onnx_checks import (
    EXPORT_JSON,
    FORMAT_VERSION,
    STAGES,
    check_data_info,
    check_export_json,
    require,
    stamp_graph,
    verify_graph,
    warn_unverified,
)

log = logging.getLogger("wbc")

MORPHOLOGY_JSON = "morphology.json"
OPSET = 17


class _ProbabilityHead(torch.nn.Module):
    """The module's own probability method (`probability`: nucleus probability via sigmoid or the
    softmax nucleus channel; `probabilities`: class softmax), test-time flips included, as one graph."""

    def __init__(self, module, method: str) -> None:
        super().__init__()
        self.module = module
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.module, self.method)(x)


class _ViewsHead(_ProbabilityHead):
    """The classifier's probabilities and, as a second output, each view's (test-time flips or ensemble
    members: V x B x C), so the "views disagree" review flag works on an export too."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self.module, self.method)(x), self.module.predict_views(x)


def _view_count(model: Any, shape: tuple[int, ...]) -> int:
    views = getattr(model, "predict_views", None)
    with torch.no_grad():
        return int(views(torch.rand(*shape)).shape[0]) if callable(views) else 1


def _head(model: torch.nn.Module, method: str, ensemble_method: str) -> _ProbabilityHead:
    """A module's own probability method, or an ensemble's (which averages its members' own)."""
    return _ProbabilityHead(model, method if hasattr(model, method) else ensemble_method)


def _input_shape(data_info: dict, batch: int = 1) -> tuple[int, int, int, int]:
    groups = data_info.get("input_groups") or [data_info.get("preprocess") or {}]  # an ensemble's stacked inputs
    channels = sum(1 if (g or {}).get("grayscale") else 3 for g in groups)
    if (data_info.get("crops") or {}).get("masked") == "both":  # a classifier ensemble's plain + masked crops (wbc.cells)
        channels *= 2
    size = int(data_info.get("image_size") or 128)
    return (batch, channels, size, size)


def _classifier_shape(data_info: dict, batch: int = 1) -> tuple[int, int, int, int]:
    """The classifier graph's input: crops of data_info.crops.image_size (the network size of a crop)."""
    crop_size = int((data_info.get("crops") or {}).get("image_size") or data_info.get("image_size") or 64)
    return _input_shape({**data_info, "image_size": crop_size}, batch)


def _export(head: torch.nn.Module, shape: tuple[int, ...], path: Path, input_name: str, output_name: str, opset: int,
            views_name: str | None = None) -> None:
    head = head.cpu().eval()
    example = torch.rand(*shape)
    with warnings.catch_warnings(), torch.no_grad():  # into the export's temporary folder (export_models moves it into place)
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            head,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[input_name],
            output_names=[output_name, *([views_name] if views_name else [])],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}, **({views_name: {1: "batch"}} if views_name else {})},
        )


def _install(tmp: Path, out: Path) -> None:
    """Move a finished export from `tmp` into `out` (files of other names there stay, as before): export.json
    is removed first and moved last, so a crash in between leaves a folder that is refused (no export.json,
    or graphs whose sha256 it does not record), never old and new files that run together."""
    out.mkdir(parents=True, exist_ok=True)
    (out / EXPORT_JSON).unlink(missing_ok=True)
    for f in sorted(tmp.iterdir()):
        if f.name != EXPORT_JSON:
            os.replace(f, out / f.name)
    os.replace(tmp / EXPORT_JSON, out / EXPORT_JSON)


def _checked_info(model: Any, key: str) -> dict:
    """The model's data_info, refused before anything is written if an export of it would be refused at load."""
    stage = model.hparams.get("stage", STAGES[key])
    if stage != STAGES[key]:
        raise ValueError(f"export.py: the {key} given is a {stage} model (hparams.stage); expected a {STAGES[key]} one "
                         "(segmenter= and classifier= swapped?)")
    info = dict(model.hparams.get("data_info") or {})
    check_data_info(key, info, f"export.py {key}")
    return info


def export_models(segmenter, classifier=None, out_dir: str | Path = "onnx", opset: int = OPSET, sources: dict | None = None, morphology=None) -> dict:
    """Write segmenter.onnx [+ classifier.onnx] [+ morphology.json: a wbc.morphology model averaged into the
    class probabilities, carried so the export runs as the pipeline it came from] + export.json into out_dir;
    returns the JSON dict."""
    require("onnx", "export.py")  # torch.onnx.export writes through it
    seg_info = _checked_info(segmenter, "segmenter")  # refused before any file is written
    cls_info = _checked_info(classifier, "classifier") if classifier is not None else {}
    if morphology is not None and classifier is not None:
        morphology.check_classes(cls_info.get("classes") or [])
    # everything is written into a temporary sibling folder first: a failed (re-)export leaves `out` as it was
    real = Path(out_dir).resolve()
    real.parent.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix=f".{real.name[:32]}.export-", dir=real.parent))
    try:
        meta = _write_export(segmenter, classifier, seg_info, cls_info, out, opset, sources, morphology)
        _install(out, real)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return meta


def _write_export(segmenter, classifier, seg_info: dict, cls_info: dict, out: Path, opset: int, sources: dict | None, morphology) -> dict:
    meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "opset": opset, "torch": torch.__version__, "sources": dict(sources or {})}
    seg_shape = _input_shape(seg_info)
    _export(_head(segmenter, "probability", "predict_probability"), seg_shape, out / "segmenter.onnx", "image", "nucleus_probability", opset)
    meta["segmenter"] = {
        "file": "segmenter.onnx",
        "sha256": stamp_graph(out / "segmenter.onnx", "segmenter", seg_info),
        "stage": STAGES["segmenter"],
        "io": "image: B x C x S x S float in [0, 1] after data_info.preprocess and a resize to S -> nucleus_probability: B x 1 x S x S",
        "input_shape": [None, *seg_shape[1:]],
        "data_info": seg_info,
    }
    if classifier is not None:
        cls_shape = _classifier_shape(cls_info, batch=2)
        views = _view_count(classifier.cpu().eval(), cls_shape) > 1  # test-time flips or members: their agreement is a review reason
        head = _head(classifier, "probabilities", "predict_proba")
        _export(_ViewsHead(head.module, head.method) if views else head, cls_shape, out / "classifier.onnx", "crops", "class_probability", opset,
                "class_probability_views" if views else None)
        meta["classifier"] = {
            "file": "classifier.onnx",
            "sha256": stamp_graph(out / "classifier.onnx", "classifier", cls_info),
            "stage": STAGES["classifier"],
            "io": "crops: B x C x s x s float in [0, 1] (data_info.crops) -> class_probability: B x n_classes (order: data_info.classes)"
                  + ("; class_probability_views: V x B x n_classes (each test-time view or member)" if views else ""),
            "input_shape": [None, *cls_shape[1:]],
            "data_info": cls_info,
            # the temperature is inside the graph; the review threshold is applied by the pipeline
            "calibration": dict(classifier.calibration()) if callable(getattr(classifier, "calibration", None)) else {},
        }
    if morphology is not None:
        morphology.save(out / MORPHOLOGY_JSON)
        meta["morphology"] = {"file": MORPHOLOGY_JSON, "classes": list(morphology.classes), "outline_closing": morphology.outline_closing}
    write_json(out / EXPORT_JSON, meta)
    return meta


def export_checkpoints(segmenter: Any, classifier: Any, out_dir: str | Path, opset: int = OPSET, morphology: str | Path | None = None) -> dict:
    """Checkpoints (files, run dirs, sweep dirs of fold runs or lists of them, as predict.py takes
    them) -> ONNX export in out_dir; several of one stage are exported as their ensemble; `morphology`
    a wbc.morphology model file to carry (read and re-written, so only a valid model travels)."""
    from wbc.ensemble import load_models, member_checkpoints
    from wbc.morphology import MorphologyClassifier

    def load(spec: Any, stage: str, key: str) -> tuple[torch.nn.Module | None, str | list[str] | None]:
        if spec is None:
            return None, None
        paths = [str(c) for _, c in member_checkpoints(spec, stage, key)]
        return load_models(spec, stage, key), (paths[0] if len(paths) == 1 else paths)

    morph = MorphologyClassifier.load(morphology) if morphology is not None else None  # a bad file is refused first
    seg, seg_src = load(segmenter, "segmentation", "segmenter")
    clf, cls_src = load(classifier, "classification", "classifier")
    sources = {"segmenter": seg_src, "classifier": cls_src, **({"morphology": str(morphology)} if morphology is not None else {})}
    return export_models(seg, clf, out_dir, opset, sources, morph)


# --------------------------------------------------------------------------- runtime side


def _session(graph: Path | bytes, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no busy-waiting between runs: the spinning pool threads would slow the CPU-bound cell
    # extraction that follows each segmenter call
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = graph if isinstance(graph, bytes) else str(graph)
    return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])


class _OnnxModel:
    """What CellPipeline touches of a LightningModule, backed by an onnxruntime session (CPU)."""

    stage = ""

    def __init__(self, path: str | Path, data_info: dict | None, threads: int | None = None, graph: bytes | None = None) -> None:
        """`graph`: the file's bytes as load_export checked them (run as they are, so the file can not change in between)."""
        self.path = Path(path)
        if graph is None and not self.path.is_file():
            raise FileNotFoundError(f"onnx={self.path.parent}: {self.path.name} not found (run export.py first)")
        self.session = _session(self.path if graph is None else graph, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.hparams = AttributeDict(data_info=dict(data_info or {}), stage=self.stage)
        self.device = torch.device("cpu")
        self._last: tuple[Any, list[torch.Tensor]] | None = None

    def to(self, device: str | torch.device = "cpu", *args, **kwargs) -> _OnnxModel:
        if torch.device(device).type != "cpu":
            log.warning("onnx backend runs on onnxruntime's CPU provider; device=%s ignored", device)
        return self

    def eval(self) -> _OnnxModel:
        return self

    def run(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        return self.outputs(x)[0]

    def outputs(self, x: torch.Tensor | np.ndarray) -> list[torch.Tensor]:
        """Every output of the graph for `x`; the last call's are kept, so asking for a second output of
        the same batch (a classifier's views) does not run the graph again."""
        if self._last is not None and self._last[0] is x:
            return self._last[1]
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        out = [torch.from_numpy(o) for o in self.session.run(None, {self.input_name: np.ascontiguousarray(arr, dtype=np.float32)})]
        self._last = (x, out)
        return out

    __call__ = run


class OnnxSegmenter(_OnnxModel):
    stage = "segmentation"

    def predict_probability(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)


class OnnxClassifier(_OnnxModel):
    stage = "classification"
    calibration_info: dict = {}  # noqa: RUF012 - replaced per instance by load_export

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)

    def predict_views(self, x: torch.Tensor) -> torch.Tensor:
        """Each view's probabilities (V x B x C) when the export has them, else the one view (1 x B x C)."""
        out = self.outputs(x)
        return out[1] if len(out) > 1 else out[0][None]

    def calibration(self) -> dict:
        """What export.json recorded of the classifier's calibration (its temperature is in the graph)."""
        return dict(self.calibration_info)


def read_export(export_dir: str | Path) -> dict:
    """export.json of an export folder, checked: valid JSON with a segmenter entry, every file it names inside
    the folder, a known format_version, each entry of its stage with the data_info the pipeline needs (one
    clear error naming the folder and the key otherwise; the graphs are checked against it by load_export)."""
    d = Path(export_dir)
    meta_path = d / EXPORT_JSON
    if not meta_path.is_file():
        raise FileNotFoundError(f"onnx={export_dir}: no {EXPORT_JSON} there; expected a folder written by export.py")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"onnx={export_dir}: {EXPORT_JSON} is not valid JSON ({err})") from err
    if not isinstance(meta, dict) or "segmenter" not in meta:
        raise ValueError(f"onnx={export_dir}: {EXPORT_JSON} has no 'segmenter' entry")
    for key in ("segmenter", "classifier", "morphology"):
        if key == "segmenter" or meta.get(key):
            export_file(d, meta, key)  # refuse an entry pointing outside the folder before anything is read
    check_export_json(export_dir, meta)
    return meta


def export_file(export_dir: Path, meta: dict, key: str) -> Path:
    """`<export_dir>/<meta[key].file>`, which must stay inside the export folder: export.json is a file
    anyone can hand over, and `../x.onnx` or an absolute path would load (and run) a model from elsewhere."""
    entry = meta.get(key)
    name = entry.get("file") if isinstance(entry, dict) else None
    where = f"onnx={export_dir}: {EXPORT_JSON} {key}.file={name!r}"
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: expected the name of a file inside the export folder")
    root = Path(export_dir).resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or path == root:
        raise ValueError(f"{where} resolves to {path}, outside the export folder {root}; expected a file inside it")
    return path


def load_export(export_dir: str | Path, threads: int | None = None, meta: dict | None = None) -> tuple[OnnxSegmenter, OnnxClassifier | None]:
    """The export's two onnxruntime models, each graph checked against export.json first (wbc.onnx_checks);
    `meta`: its export.json as read_export returned it (read here if None)."""
    d = Path(export_dir)
    meta = read_export(d) if meta is None else meta
    unverified = False

    def graph(key: str) -> tuple[Path, bytes]:
        nonlocal unverified
        path = export_file(d, meta, key)
        if not path.is_file():
            raise FileNotFoundError(f"onnx={export_dir}: {path.name} not found (run export.py first)")
        info = meta[key]["data_info"]
        shape = _input_shape(info) if key == "segmenter" else _classifier_shape(info)
        data, verified = verify_graph(export_dir, meta, key, path, shape[1:])
        unverified = unverified or not verified
        return path, data

    path, data = graph("segmenter")
    seg = OnnxSegmenter(path, meta["segmenter"]["data_info"], threads, data)
    clf = None
    if meta.get("classifier"):
        path, data = graph("classifier")
        clf = OnnxClassifier(path, meta["classifier"]["data_info"], threads, data)
        clf.calibration_info = dict(meta["classifier"].get("calibration") or {})
    if unverified:
        warn_unverified(export_dir)
    return seg, clf


def pipeline_from_export(
    export_dir: str | Path, device: str = "cpu", postprocess_overrides: dict | None = None, threads: int | None = None, scale=None, review=None,
    bit_depth: int | str | None = None,
):
    """A CellPipeline whose two models run on onnxruntime (the segmenter's post-processing, scale and bit
    depth come from export.json's data_info, as from a checkpoint; overrides win and are logged). The
    segmenter takes a batch of network-size tiles, so full fields slide over it as over the torch one."""
    from wbc.inference import CellPipeline
    from wbc.morphology import MorphologyClassifier

    meta = read_export(export_dir)
    seg, clf = load_export(export_dir, threads, meta)
    pipe = CellPipeline(seg, clf, device, postprocess_overrides=postprocess_overrides, scale=scale, review=review, bit_depth=bit_depth)
    if meta.get("morphology"):
        path = export_file(Path(export_dir), meta, "morphology")
        pipe.use_morphology(MorphologyClassifier.load(path), str(path))
    return pipe

