"""Checks that tie an ONNX export's `export.json` to its graphs (wbc.onnx_backend).

export.json is a plain file anyone can edit or hand over: a class list cut, extended or reordered, a
segmenter graph named as the classifier, an edited image size or a half-finished re-export would otherwise
run and give wrong answers without a word. So export.py stamps each graph with the data_info essentials
(its stage and classes, in the graph's metadata_props) and records each graph's sha256 in export.json; the
loader refuses every disagreement with one ValueError naming the folder, the key and what was expected.
Exports of format_version 1 (before hashes and metadata) still load, with a warning that they can not be
verified. A tensor stored as external data is refused in any export: export.py never writes one, and its
path would make onnxruntime read a file from outside the folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("wbc")

EXPORT_JSON = "export.json"
FORMAT_VERSION = 2  # 2: each graph's sha256 in export.json and its stage / classes in its metadata_props
UNVERIFIED_VERSION = 1  # written before them: loads with a warning
STAGES = {"segmenter": "segmentation", "classifier": "classification"}
META_STAGE, META_CLASSES, META_VERSION = "wbc.stage", "wbc.classes", "wbc.format_version"


def require(module: str, what: str) -> None:
    """One clear error when the ONNX packages are missing: the default install leaves them to the `onnx`
    extra, and a bare ModuleNotFoundError deep in an export did not say what to install."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(f"{what} needs the {module!r} package: pip install -e '.[onnx]' (or pip install 'wbc-lab[onnx]')")


def missing_info(key: str, info: dict) -> list[str]:
    """The data_info keys the pipeline needs for this model that `info` lacks: without them it would run
    on library defaults, not the inputs the model was trained on."""
    need: dict[str, bool] = {"preprocess": "preprocess" in info or bool(info.get("input_groups"))}
    if key == "segmenter":
        need["image_size"] = "image_size" in info
        # checkpoints before data_info.postprocess kept it in crops.instance_params
        need["postprocess"] = "postprocess" in info or "instance_params" in (info.get("crops") or {})
    else:
        need["crops"] = isinstance(info.get("crops"), dict)
        need["classes"] = bool(info.get("classes"))
    return [k for k, ok in need.items() if not ok]


def check_data_info(key: str, info: dict, where: str) -> None:
    """Refuse a data_info the pipeline can not rebuild the model's inputs from (at export and at load)."""
    absent = missing_info(key, info)
    if absent:
        raise ValueError(f"{where}: {key}.data_info has no {', '.join(absent)}; expected the data_info train.py writes "
                         f"(the {STAGES[key]} model's preprocessing, network size, crops, classes, post-processing)")
    size = info.get("image_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise ValueError(f"{where}: {key}.data_info.image_size={size!r}: expected a positive whole number of pixels")
    classes = info.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise ValueError(f"{where}: {key}.data_info.classes={classes!r}: expected a list of class names")


def check_export_json(export_dir: str | Path, meta: dict) -> None:
    """The JSON-level checks: a known format_version, each model entry of the right stage with the
    data_info the pipeline needs."""
    where = f"onnx={export_dir}: {EXPORT_JSON}"
    version = meta.get("format_version")
    if isinstance(version, bool) or version not in (UNVERIFIED_VERSION, FORMAT_VERSION):
        raise ValueError(f"{where} format_version={version!r}: expected {UNVERIFIED_VERSION} or {FORMAT_VERSION} "
                         "(an export written by another version of export.py? re-export with this one)")
    for key, stage in STAGES.items():
        entry = meta.get(key)
        if key == "classifier" and not entry:
            continue
        if not isinstance(entry, dict):
            raise ValueError(f"{where} {key}={entry!r}: expected an object with file, stage and data_info")
        if entry.get("stage") != stage:
            raise ValueError(f"{where} {key}.stage={entry.get('stage')!r}: expected {stage!r} (the {key} entry names a {stage} model)")
        info = entry.get("data_info")
        if not isinstance(info, dict):
            raise ValueError(f"{where} {key}.data_info={info!r}: expected the model's data_info object")
        check_data_info(key, info, where)


def stamp_graph(path: Path, key: str, info: dict) -> str:
    """Write the data_info essentials into the graph's metadata_props; returns the file's sha256 (what
    export.json records, so a graph swapped or half re-exported afterwards is refused)."""
    require("onnx", "export.py")
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    props = {META_STAGE: STAGES[key], META_CLASSES: json.dumps(list(info.get("classes") or [])), META_VERSION: str(FORMAT_VERSION)}
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **props})
    onnx.save(model, str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tensors(graph: Any) -> Any:
    """Every tensor proto a graph holds: initializers, Constant values and those of subgraphs (If, Loop)."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield from (attr.sparse_tensor.values, attr.sparse_tensor.indices)
            for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                yield from _tensors(sub)


def _dims(value_info: Any) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def verify_graph(export_dir: str | Path, meta: dict, key: str, path: Path, expected_input: tuple[int, ...]) -> tuple[bytes, bool]:
    """The graph file's bytes, checked against export.json (what onnxruntime then runs, so the file can not
    change between check and load); and whether it could be verified (False: a format_version 1 export)."""
    require("onnx", "onnx=")
    require("onnxruntime", "onnx=")
    import onnx
    from onnx.external_data_helper import uses_external_data

    entry, name = meta[key], meta[key]["file"]
    where = f"onnx={export_dir}: {name}"
    data = path.read_bytes()
    try:
        model = onnx.load_model_from_string(data)  # never reads external data
    except Exception as err:
        raise ValueError(f"{where} ({EXPORT_JSON} {key}.file) is not an ONNX model ({err}); expected a graph written by export.py") from err
    external = [t.name for t in _tensors(model.graph) if uses_external_data(t)]
    if external:
        raise ValueError(f"{where} ({EXPORT_JSON} {key}.file) keeps tensor(s) {external[:3]} as external data (a file named inside the "
                         "graph); expected every tensor inside the graph, as export.py writes it")
    recorded = entry.get("sha256")
    verified = meta.get("format_version") == FORMAT_VERSION or recorded is not None
    # the specific disagreements first (a graph of the other stage, other classes), then the hash: any other edit
    _check_metadata(where, key, entry["data_info"], {p.key: p.value for p in model.metadata_props}, verified)
    _check_io(where, key, entry["data_info"], model, expected_input)
    if verified:
        actual = hashlib.sha256(data).hexdigest()
        if not isinstance(recorded, str) or actual != recorded:
            raise ValueError(f"{where} has sha256 {actual}, {EXPORT_JSON} {key}.sha256={recorded!r}; expected the graph export.json was "
                             "written with (a replaced file or an unfinished re-export? re-export with export.py)")
    return data, verified


def _check_metadata(where: str, key: str, info: dict, props: dict[str, str], required: bool) -> None:
    if META_STAGE not in props:
        if required:
            raise ValueError(f"{where} has no {META_STAGE} metadata; expected the stage and classes export.py stamps on each graph")
        return
    if props[META_STAGE] != STAGES[key]:
        raise ValueError(f"{where} is a {props[META_STAGE]} graph (its metadata {META_STAGE}), but {EXPORT_JSON} names it as {key}.file; "
                         f"expected a {STAGES[key]} graph")
    try:
        graph_classes = json.loads(props.get(META_CLASSES, "null"))
    except json.JSONDecodeError:
        graph_classes = props.get(META_CLASSES)
    classes = list(info.get("classes") or [])
    if graph_classes != classes:
        raise ValueError(f"{where}: {EXPORT_JSON} {key}.data_info.classes={classes} differ from the graph's metadata {META_CLASSES}="
                         f"{graph_classes}; expected the classes, in order, the graph was exported with")


def _check_io(where: str, key: str, info: dict, model: Any, expected_input: tuple[int, ...]) -> None:
    """The graph's input size and output rank / class count against export.json's data_info: a legacy
    export (no metadata) still gets these."""
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1 or not model.graph.output:
        raise ValueError(f"{where} has {len(inputs)} input(s) and {len(model.graph.output)} output(s); expected one input and a "
                         f"{STAGES[key]} output as export.py writes them")
    got = _dims(inputs[0])[1:]
    if len(got) != len(expected_input) or any(g is not None and g != e for g, e in zip(got, expected_input)):
        channels_ok = bool(got) and got[0] in (None, expected_input[0])
        size_key = "crops.image_size" if key == "classifier" else "image_size"
        what = size_key if channels_ok else "preprocess / input_groups / crops.masked: the input channels"
        raise ValueError(f"{where} takes inputs of B x {' x '.join(str(g) for g in got)}, but {EXPORT_JSON} {key}.data_info ({what}) "
                         f"makes B x {' x '.join(map(str, expected_input))}; expected the data_info the graph was exported with")
    out = _dims(model.graph.output[0])
    rank = 4 if key == "segmenter" else 2
    if len(out) != rank:
        shape = "B x 1 x S x S nucleus probability" if key == "segmenter" else "B x n_classes class probabilities"
        raise ValueError(f"{where} ({EXPORT_JSON} {key}.file) outputs {len(out)} dims; expected a {STAGES[key]} graph's {shape}")
    classes = list(info.get("classes") or [])
    if key == "classifier" and out[-1] is not None and out[-1] != len(classes):
        raise ValueError(f"{where} outputs {out[-1]} class probabilities, but {EXPORT_JSON} classifier.data_info.classes lists "
                         f"{len(classes)} ({classes}); expected one class name per output, in the graph's order")


def warn_unverified(export_dir: str | Path) -> None:
    log.warning("onnx=%s: %s has format_version %d (no graph hashes or metadata): its graphs cannot be verified against it; "
                "re-export with export.py to verify", export_dir, EXPORT_JSON, UNVERIFIED_VERSION)
