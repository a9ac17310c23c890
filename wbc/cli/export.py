"""`wbc-export` / `python export.py run=<pipeline run dir> [out=<dir>]`: the trained models to ONNX,
or `python export.py segmenter=<ckpt or run dir> [classifier=<ckpt or run dir>] out=<dir>`.
A sweep dir of fold runs or a list (`segmenter=[<RGB run>,<grey run>]`) exports that ensemble as one
model, as predict.py would run it.

Writes segmenter.onnx, classifier.onnx and export.json (each model's data_info: preprocessing,
network size, classes, crop geometry, read from the checkpoints); `morphology=<model.json>` (fit_morphology.py)
also carries a nucleus-morphology model, averaged in wherever the export runs. Predict with onnxruntime:
`python predict.py onnx=<out> input=<image or folder>`. Default out: `<run>/onnx`.
"""

from __future__ import annotations

import sys
from pathlib import Path

KEYS = ("run", "segmenter", "classifier", "out", "opset", "morphology")
USAGE = ("usage: python export.py run=<pipeline run dir> [out=<dir>] | segmenter=<ckpt, run, sweep or [a,b]> "
         "[classifier=<ckpt, run, sweep or [a,b]>] out=<dir> [opset=17] [morphology=<model.json>]")


def parse_args(argv: list[str]) -> dict[str, str | None]:
    """key=value arguments (the same style as the Hydra entry points); unknown keys are an error."""
    args: dict[str, str | None] = dict.fromkeys(KEYS)
    for item in argv:
        if item in ("-h", "--help"):
            raise SystemExit(USAGE)
        key, sep, value = item.partition("=")
        if not sep or key not in KEYS:
            raise SystemExit(f"export.py: unexpected argument {item!r}; expected key=value with key in {list(KEYS)}\n{USAGE}")
        args[key] = None if value in ("", "null", "None") else value
    return args


def model_spec(value: str | None) -> str | list[str] | None:
    """`[a,b]` (several runs: their ensemble) -> a list of paths, as Hydra gives predict.py; else the value."""
    if value is None or not (value.startswith("[") and value.endswith("]")):
        return value
    items = [v.strip() for v in value[1:-1].split(",") if v.strip()]
    if not items:
        raise SystemExit(f"export.py: {value!r} lists no checkpoint\n{USAGE}")
    return items


def export(argv: list[str]) -> dict:
    from wbc.onnx_backend import OPSET, export_checkpoints

    args = parse_args(argv)
    segmenter = args["segmenter"] or args["run"]
    classifier = args["classifier"] or args["run"]
    if segmenter is None:
        raise SystemExit(f"export.py needs run=<pipeline run dir> or segmenter=<checkpoint>\n{USAGE}")
    out = args["out"] or (str(Path(args["run"]) / "onnx") if args["run"] else None)
    if out is None:
        raise SystemExit(f"export.py: out=<dir> is required with segmenter=...\n{USAGE}")
    meta = export_checkpoints(model_spec(segmenter), model_spec(classifier), out, int(args["opset"] or OPSET), args["morphology"])
    written = ", ".join(m["file"] for m in (meta.get("segmenter"), meta.get("classifier"), meta.get("morphology")) if m)
    print(f"exported {written} + export.json to {out}")
    return meta


def main() -> None:
    """Console script `wbc-export` (and `python export.py`)."""
    from wbc.cli import prepare

    prepare()
    export(sys.argv[1:])
