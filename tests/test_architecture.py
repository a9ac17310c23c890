"""The architecture's promises: one source of post-processing (evaluate and predict give the same
masks), stages composed by Hydra (a classification key is a CLI address), evaluate.py on any stage,
packaging (no top-level modules, console scripts), no import side effects, layering, no cycles."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from wbc.cli import evaluate, predict

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("wbc", "datamodules", "lightning_modules")
OFFLINE_KEYS = ("NO_ALBUMENTATIONS_UPDATE", "WANDB_MODE", "HF_HUB_OFFLINE", "WANDB_SILENT")

pytestmark = pytest.mark.usefixtures("one_thread")


def _python(code: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env or dict(os.environ), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def test_evaluate_and_predict_give_identical_masks(make_cfg, run_training, make_eval_cfg, tmp_path: Path, data_dir: Path) -> None:
    """The segmenter is validated with non-default post-processing (clear_border on, a larger
    minimum area); evaluate.py and predict.py both read it from the checkpoint, so every test
    image gets the same mask from both commands."""
    from tests.conftest import compose_config

    cfg = make_cfg(["postprocess.clear_border=true", "postprocess.min_area=12"], output_dir=tmp_path / "seg")
    run_training(cfg)
    run = Path(cfg.paths.output_dir)
    metrics, objects = evaluate.evaluate(make_eval_cfg(run))
    assert objects["postprocess"].clear_border and objects["postprocess"].min_area == 12
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["postprocess"]["clear_border"] is True and summary["postprocess"]["min_area"] == 12
    cases = summary["metric_per_case"]
    images = [Path(c["image"]) for c in cases]
    pcfg = compose_config("predict.yaml", [f"input={images[0].parent}", f"segmenter={run}", "save_crops=false"], tmp_path / "pred", data_dir)
    predict.predict(pcfg)
    for case, image in zip(cases, images):
        from_eval = cv2.imread(str(tmp_path / "eval" / "masks" / f"{case['id'].replace('/', '_')}.png"), cv2.IMREAD_GRAYSCALE)
        from_predict = cv2.imread(str(tmp_path / "pred" / "masks" / f"{image.stem}.png"), cv2.IMREAD_GRAYSCALE)
        assert from_eval is not None and from_predict is not None, case["id"]
        np.testing.assert_array_equal(from_eval > 0, from_predict > 0, err_msg=case["id"])
    # an explicit override still wins (and only where given)
    _, objects = evaluate.evaluate(make_eval_cfg(run, "postprocess.clear_border=false"))
    assert objects["postprocess"].clear_border is False and objects["postprocess"].min_area == 12


def test_pipeline_stage_keys_are_cli_addresses(make_cfg, tmp_path: Path) -> None:
    """`classification.model.optimizer.lr` / `classification.trainer.max_epochs` tune that stage only."""
    from wbc.stages import stage_config

    cfg = make_cfg(["experiment=pipeline", "classification.model.optimizer.lr=3e-4", "classification.trainer.max_epochs=5"])
    cls = stage_config(cfg, "classification", tmp_path / "c")
    seg = stage_config(cfg, "segmentation", tmp_path / "s")
    assert cls.model.optimizer.lr == pytest.approx(3e-4) and cls.trainer.max_epochs == 5
    assert cls.model.scheduler.T_max == 5  # ${trainer.max_epochs} resolves in the stage's own config
    assert cls.data._target_.endswith("ClassificationDataModule") and cls.monitor == "val/macro_f1"
    assert seg.model.optimizer.lr == pytest.approx(0.003) and seg.trainer.max_epochs == cfg.trainer.max_epochs
    assert seg.data._target_.endswith("SegmentationDataModule") and seg.monitor == "val/dice"
    assert cls.paths.output_dir == str(tmp_path / "c") and "classification" not in cls and "segmentation" not in cls


def test_a_shared_cli_value_reaches_every_pipeline_stage(make_cfg, tmp_path: Path) -> None:
    """`trainer.max_epochs=7` on the command line trains both stages 7 epochs (the classification
    stage's own default, 30, used to win silently); the stage's own key still wins where given."""
    from wbc.cli.train import cli_keys
    from wbc.stages import stage_config

    overrides = ["experiment=pipeline", "trainer.max_epochs=7", "+model.foo=1", "augment@data.crops.transforms=robust"]
    keys = cli_keys(overrides)
    assert keys == ["experiment", "trainer.max_epochs", "model.foo"]
    cfg = make_cfg(overrides[:2])
    assert stage_config(cfg, "classification", tmp_path / "c").trainer.max_epochs == 30  # without the keys: the old behaviour
    cls = stage_config(cfg, "classification", tmp_path / "c", keys)
    assert cls.trainer.max_epochs == 7 and cls.model.scheduler.T_max == 7
    assert stage_config(cfg, "segmentation", tmp_path / "s", keys).trainer.max_epochs == 7
    both = ["experiment=pipeline", "trainer.max_epochs=7", "classification.trainer.max_epochs=3"]
    cls = stage_config(make_cfg(both), "classification", tmp_path / "c", cli_keys(both))
    assert cls.trainer.max_epochs == 3


def test_the_segmentation_stage_schedule_has_its_own_cli_address(make_cfg, tmp_path: Path) -> None:
    """`segmentation.trainer.max_epochs=4` (no `+`) sets the segmenter's epochs only; left unset
    (null in conf/stage/pipeline.yaml) the stage follows the shared trainer.max_epochs."""
    from wbc.cli.train import cli_keys
    from wbc.stages import stage_config

    plain = ["experiment=pipeline", "trainer.max_epochs=7"]
    seg = stage_config(make_cfg(plain), "segmentation", tmp_path / "s", cli_keys(plain))
    assert seg.trainer.max_epochs == 7 and seg.model.scheduler.T_max == 7
    own = [*plain, "segmentation.trainer.max_epochs=4"]
    cfg = make_cfg(own)
    seg = stage_config(cfg, "segmentation", tmp_path / "s", cli_keys(own))
    assert seg.trainer.max_epochs == 4 and seg.model.scheduler.T_max == 4
    assert stage_config(cfg, "classification", tmp_path / "c", cli_keys(own)).trainer.max_epochs == 7


def test_train_crop_is_a_data_address_and_a_classifier_refuses_it(make_cfg) -> None:
    """`data.train_crop=64` (no `+`) reaches the segmentation DataModule; a classifier, whose input is
    the cell crop, refuses it instead of ignoring it."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    dm = instantiate(make_cfg(["data.train_crop=32"]).data)
    assert dm.train_crop == 32
    assert instantiate(make_cfg().data).train_crop is None
    with pytest.raises(InstantiationException, match=r"data\.train_crop=32: random patches are for segmentation"):
        instantiate(make_cfg(["experiment=classify", "data.train_crop=32"]).data)


def test_evaluate_a_single_classifier_run(make_cfg, run_training, make_eval_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(["experiment=classify"], output_dir=tmp_path / "cls")
    trained, _ = run_training(cfg)
    metrics, objects = evaluate.evaluate(make_eval_cfg(Path(cfg.paths.output_dir)))
    out = tmp_path / "eval"
    assert {"test/macro_f1", "test/balanced_accuracy", "test/accuracy"} <= set(metrics)
    assert metrics["test/macro_f1"] == pytest.approx(trained["test/macro_f1"], abs=1e-6)  # same weights, same crops
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("sample_id,cell,true,pred,p_") and len(rows) - 1 == objects["summary"]["n_crops"]
    assert (out / "confusion.png").is_file() and json.loads((out / "metrics.json").read_text())["split"] == "test"


def test_no_top_level_modules_and_console_scripts() -> None:
    """From outside the checkout (cwd=/, no PYTHONPATH) the install offers the packages and the
    `wbc-*` console scripts, and nothing called `train`, `evaluate`, `predict` or `export`."""
    code = """
import importlib.metadata as md, importlib.util as u, json
dist = md.distribution("wbc-lab")
top = sorted({str(f).split("/")[0] for f in dist.files or []})
print(json.dumps({
    "clash": [n for n in ("train", "evaluate", "predict", "export", "audit", "compare", "fit_morphology") if u.find_spec(n)],
    "ours": [n for n in ("wbc", "datamodules", "lightning_modules") if u.find_spec(n)],
    "scripts": {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"},
    "top_py": [t for t in top if t.endswith(".py") and not t.startswith("__editable__")],
}))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    got = json.loads(_python(code, env, cwd=Path("/")).stdout.strip().splitlines()[-1])
    assert got["clash"] == [] and got["top_py"] == [], got
    assert got["ours"] == ["wbc", "datamodules", "lightning_modules"]
    expected = {f"wbc-{n}": f"wbc.cli.{n}:main" for n in ("train", "evaluate", "predict", "export", "audit", "compare", "serve")}
    assert got["scripts"] == {**expected, "wbc-fit-morphology": "wbc.cli.fit_morphology:main"}


def test_importing_the_package_leaves_the_environment_alone() -> None:
    code = f"""
import os, pkgutil, importlib
# third-party imports first (OpenCV's own loader extends LD_LIBRARY_PATH): only ours are under test
import torch, lightning, hydra, cv2, albumentations, skimage, timm, segmentation_models_pytorch, torchmetrics, matplotlib
import sklearn.model_selection, scipy.ndimage, PIL.Image, tifffile, imagehash  # sklearn sets KMP_* on import
before = dict(os.environ)
for pkg in {PACKAGES!r}:
    mod = importlib.import_module(pkg)
    for info in pkgutil.walk_packages(mod.__path__, pkg + "."):
        importlib.import_module(info.name)
assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())
from wbc.cli import prepare
prepare()
assert os.environ["HF_HUB_OFFLINE"] == "0" and os.environ["WANDB_MODE"] == "offline", os.environ
"""
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_KEYS}
    env.update(HF_HUB_OFFLINE="0", NO_ALBUMENTATIONS_UPDATE="1")  # the user's own choices
    _python(code, env)


def test_pure_code_imports_neither_lightning_nor_hydra() -> None:
    pure = ["wbc.data.imageio", "wbc.data.manifest", "wbc.data.splits", "wbc.data.synthetic", "wbc.data.smear_drawing", "wbc.data.transforms",
            "wbc.postprocess", "wbc.cells", "wbc.rundir", "wbc.resume", "wbc.inference", "wbc.predict_io", "wbc.evaluation.segmentation",
            "wbc.evaluation.classification", "wbc.onnx_backend"]
    code = f"""
import importlib, sys
for name in {pure!r}:
    importlib.import_module(name)
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning", "hydra"))
assert not bad, bad
"""
    _python(code)


def test_onnx_predict_runs_without_lightning(tmp_path: Path) -> None:
    """predict.py onnx=... with `lightning` made unimportable."""
    from tests.helpers_data import cell, write_image
    from tests.helpers_models import tiny_modules
    from wbc.onnx_backend import export_models

    seg, clf = tiny_modules(tmp_path)
    export_models(seg, clf, tmp_path / "export")
    image = write_image(tmp_path / "in" / "a.png", cell(64)[0])
    out = tmp_path / "pred"
    code = f"""
import sys
sys.modules["lightning"] = sys.modules["pytorch_lightning"] = None  # any import of them raises
sys.argv = ["predict.py", "onnx={tmp_path / 'export'}", "input={image}", "hydra.run.dir={out}", "extras.print_config=false"]
from wbc.cli.predict import main
main()
assert not [m for m in sys.modules if m.startswith("lightning") and sys.modules[m] is not None]
"""
    _python(code)
    assert (out / "predictions.csv").is_file() and (out / "masks" / "a.png").is_file()


def _module_imports(path: Path) -> set[str]:
    """Modules imported at module level (imports inside functions are deferred, not cycles)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_no_import_cycles_and_no_file_over_400_lines() -> None:
    modules = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path
    graph = {m: {i for i in _module_imports(p) if i in modules and i != m} for m, p in modules.items()}

    def visit(m: str, stack: list[str], done: set[str]) -> None:
        if m in stack:
            raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(m):], m]))
        if m in done:
            return
        for n in sorted(graph[m]):
            visit(n, [*stack, m], done)
        done.add(m)

    done: set[str] = set()
    for m in sorted(graph):
        visit(m, [], done)
    long = {str(p.relative_to(ROOT)): n for p in [*modules.values(), *ROOT.glob("*.py")] if (n := len(p.read_text().splitlines())) > 420}
    assert not long, long
