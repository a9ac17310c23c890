"""export.py and onnx= without the ONNX packages (the default install leaves them to the `onnx` extra):
one error naming the package and the extra, not a bare ModuleNotFoundError deep in the exporter."""

from __future__ import annotations

import importlib.util

import pytest

from wbc.onnx_checks import require


def test_a_missing_onnx_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"onnx= needs the 'onnxruntime' package: pip install -e '\.\[onnx\]'"):
        require("onnxruntime", "onnx=")
    require("onnx", "export.py")  # installed: nothing said
