"""Configs read from files never run code (issue 12): a checkpoint's `hyper_parameters`, a run dir's
`.hydra/config.yaml` data node, `export.json` and `metrics.json` are files anyone can hand over.

Each payload writes a marker file when Hydra instantiates it (`os.system`, `builtins.open`,
`torch.load(weights_only=False)` of a pickle bomb, `shutil.copyfile`, `subprocess.run`, and one
nested inside a list of an allowed target). Every entry point that loads models (predict run= /
segmenter= / ensemble=, evaluate on a file / run dir / list, export, a resumed stage) must refuse it
with one error naming the file and the dotted key, and the marker must not exist. The `*_is_live`
controls switch the allowlist off and see the marker written: what today's code did.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import shlex
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from tests.helpers_data import cell, write_image
from tests.helpers_models import CONF_DIR, compose_cfg, save_checkpoint, tiny_modules
from wbc.stages import STAGES
from wbc.targets import check_targets

pytestmark = pytest.mark.usefixtures("one_thread")

PAYLOADS = ("os.system", "builtins.open", "torch.load", "shutil.copyfile", "subprocess.run", "nested", "oc.create")
# what Hydra 1.3.8's own target blocklist refuses when it instantiates the node (the others run)
HYDRA_BLOCKED = ("os.system", "subprocess.run")
REFUSED = r"is not allowed \("


class _Touch:
    """Unpickling it runs `touch <marker>` (what torch.load(weights_only=False) would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def payload(name: str, tmp: Path, marker: Path) -> dict:
    """A `_target_` mapping that writes `marker` when instantiated."""
    if name == "torch.load":
        bomb = tmp / "bomb.pt"
        torch.save(_Touch(marker), bomb)
        return {"_target_": "torch.load", "f": str(bomb), "weights_only": False}
    if name == "shutil.copyfile":
        src = tmp / "src.txt"
        src.write_text("x")
        return {"_target_": "shutil.copyfile", "src": str(src), "dst": str(marker)}
    if name == "oc.create":  # an interpolation Hydra resolves into a `_target_` node when it instantiates
        losses = [f"${{oc.create:{{_target_: builtins.open, file: {marker}, mode: w}}}}"]
        return {"_target_": "lightning_modules.losses.SumLoss", "losses": losses, "weights": [1.0]}
    if name == "nested":  # inside a list, inside an allowed target's arguments; Hydra's blocklist stops
        # os.system only when it gets there, after open() ran
        losses = [payload("builtins.open", tmp, marker), payload("os.system", tmp, marker)]
        return {"_target_": "lightning_modules.losses.SumLoss", "losses": losses, "weights": [1.0, 1.0]}
    return {
        "os.system": {"_target_": "os.system", "_args_": [f"touch {shlex.quote(str(marker))}"]},
        "builtins.open": {"_target_": "builtins.open", "file": str(marker), "mode": "w"},
        "subprocess.run": {"_target_": "subprocess.run", "args": ["touch", str(marker)]},
    }[name]


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> tuple[L.LightningModule, L.LightningModule]:
    return tiny_modules(tmp_path_factory.mktemp("unsafe"))


def write_ckpt(module: L.LightningModule, path: Path, where: str | None = None, node: dict | None = None) -> Path:
    """A checkpoint whose hyper_parameters hold `node` at the dotted key `where` (`net.widths.0`)."""
    hp = copy.deepcopy(dict(module.hparams))
    if where is not None:
        *parents, last = where.split(".")
        target = hp
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        target[int(last) if isinstance(target, list) else last] = node
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hp, "pytorch-lightning_version": L.__version__}, path)
    return path


# where a payload is built when today's code rebuilds the module (the classifier's net gets a
# num_classes argument, so its payload sits one level down, in the `widths` list)
LIVE_KEY = {"segmentation": "net", "classification": "net.widths.0"}


def evil_ckpt(modules, stage: str, name: str, path: Path, tmp: Path, key: str | None = None) -> Path:
    module = modules[0] if stage == "segmentation" else modules[1]
    return write_ckpt(module, path, key or LIVE_KEY[stage], payload(name, tmp, tmp / "marker"))


def run_dir(modules, path: Path, stage: str, evil: tuple[str, Path] | None = None) -> Path:
    """A finished run of `stage` (checkpoints/ + metrics.json); `evil`: (payload, tmp) in its checkpoint."""
    ckpt = path / "checkpoints" / "epoch_000.ckpt"
    if evil:
        evil_ckpt(modules, stage, evil[0], ckpt, evil[1])
    else:
        save_checkpoint(modules[0] if stage == "segmentation" else modules[1], ckpt)
    (path / "metrics.json").write_text(json.dumps({"best_checkpoint": str(ckpt)}))
    return path


def pipeline_run(modules, path: Path, evil_stage: str | None = None, evil: tuple[str, Path] | None = None) -> Path:
    for stage in STAGES:
        run_dir(modules, path / stage, stage, evil if stage == evil_stage else None)
    (path / "metrics.json").write_text("{}")
    return path


def without_the_check(marker: Path, name: str, fn, *args) -> None:
    """Today's code (the check patched out): the payload runs, or Hydra's blocklist stops it late."""
    if name in HYDRA_BLOCKED:
        with pytest.raises(Exception, match="blocklisted"):
            fn(*args)
        return
    with contextlib.suppress(Exception):
        fn(*args)
    assert marker.exists(), "the payload did not run without the allowlist: the test would prove nothing"


def refused(marker: Path, fn, *args, match: str = REFUSED) -> str:
    with pytest.raises(ValueError, match=match) as err:
        fn(*args)
    assert not marker.exists(), "the payload ran"
    return str(err.value)


# ----------------------------------------------------------------------------- the allowlist itself
def test_every_target_this_project_configures_is_allowed(modules) -> None:
    """conf/ (models, augmentations, data, stages) and the checkpoints it trains must still load."""
    targets = []
    for group in ("model", "augment", "data", "stage", "experiment"):
        for f in sorted((CONF_DIR / group).glob("*.yaml")):
            text = f.read_text()
            targets += [(f.name, line.split(":", 1)[1].strip()) for line in text.splitlines() if line.strip().startswith("_target_:")]
    assert len(targets) > 15
    for name, target in targets:
        check_targets({"_target_": target}, name)
    for module in modules:
        check_targets(dict(module.hparams), "tiny checkpoint", "hyper_parameters")
    for target in ("timm.create_model", "segmentation_models_pytorch.Unet", "torch.nn.CrossEntropyLoss", "albumentations.Affine", "torch.optim.SGD"):
        check_targets({"_target_": target}, "user swap")


@pytest.mark.parametrize("target", [
    "torch.nn.modules.module.torch.load",  # an allowed prefix reaching torch.load through a module attribute
    "segmentation_models_pytorch.Unet.from_pretrained",  # a class attribute (reads a folder)
    "timm.models.load_checkpoint", "albumentations.FDA", "albumentations.HistogramMatching",
    "albumentations.PixelDistributionAdaptation", "albumentations.TemplateTransform", "albumentations.Lambda",
    "wbc.data.transforms.cv2.imread", "wbc.data.synthetic.generate", "lightning_modules.common.build", "torch.__builtins__",
])
def test_allowed_prefixes_cannot_reach_files_or_code(target: str) -> None:
    with pytest.raises(ValueError, match=rf"ckpt_path=x: hyper_parameters.net._target_='{target}' is not allowed"):
        check_targets({"net": {"_target_": target}}, "ckpt_path=x", "hyper_parameters")


@pytest.mark.parametrize("node, match", [
    ({"_target_": 5}, r"_target_=5 is not allowed \(a _target_ must be a dotted name"),
    ({"_target_": "${oc.env:EVIL}"}, r"_target_='\$\{oc.env:EVIL\}' is not allowed"),
    ({"_target_": "albumentations.Compose", "transforms": [{"_target_": "albumentations.FDA", "read_fn": {"_target_": "builtins.open", "_partial_": True}}]},
     r"net.transforms\[0\]._target_='albumentations.FDA'"),
    ({"_target_": "albumentations.HorizontalFlip", "read_fn": None}, r"net.read_fn is not allowed"),
    ({"_target_": "timm.create_model", "model_name": "resnet18", "pretrained_cfg_overlay": {"file": "/x.pth"}}, r"net.pretrained_cfg_overlay is not allowed"),
    ({"_target_": "torch.optim.AdamW", "_partial_": True, "_args_": [{"_target_": "os.system", "_args_": ["x"]}]}, r"net._args_\[0\]._target_='os.system'"),
    ({"_target_": "torch.nn.Sequential", "_args_": ['${oc.decode:"{_target_: builtins.open, file: x, mode: w}"}']},
     r"net._args_\[0\]='\$\{oc.decode:.* is not allowed \(an interpolation"),
])
def test_non_string_partial_and_file_arguments_are_refused(node: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_targets({"net": node}, "ckpt_path=x", "hyper_parameters")  # plain, as a checkpoint holds it
    with pytest.raises(ValueError, match=r"ckpt_path=x: hyper_parameters\.net\S* is not allowed"):
        check_targets(OmegaConf.create({"net": node}), "ckpt_path=x", "hyper_parameters")  # a DictConfig (resolved)


# ----------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("name", PAYLOADS)
@pytest.mark.parametrize("stage", list(STAGES))
def test_checkpoint_payload_is_live(modules, stage: str, name: str, tmp_path: Path, monkeypatch) -> None:
    """Control: with the allowlist off (today's code) each crafted checkpoint runs its payload (or,
    for os.system / subprocess.run, Hydra's blocklist stops it only at instantiation)."""
    monkeypatch.setattr("lightning_modules.common.check_targets", lambda *a, **k: None)
    ckpt = evil_ckpt(modules, stage, name, tmp_path / "a.ckpt", tmp_path)
    without_the_check(tmp_path / "marker", name, STAGES[stage].load, ckpt)


@pytest.mark.parametrize("name", PAYLOADS)
@pytest.mark.parametrize("stage, key", [
    ("segmentation", None), ("segmentation", "net.decoder_channels.0"), ("segmentation", "loss"), ("segmentation", "optimizer"),
    ("classification", None), ("classification", "scheduler"), ("classification", "data_info.crops"),
])
def test_stage_load_refuses_checkpoint_targets(modules, stage: str, key: str | None, name: str, tmp_path: Path) -> None:
    """Stage.load (resume, predict, evaluate and export all go through it): refused before any build."""
    ckpt = evil_ckpt(modules, stage, name, tmp_path / "a.ckpt", tmp_path, key)
    dotted = "hyper_parameters." + (key or LIVE_KEY[stage]).replace(".0", "[0]")
    msg = refused(tmp_path / "marker", STAGES[stage].load, ckpt)
    assert msg.startswith(f"ckpt_path={ckpt}: {dotted}")
    assert ("is not allowed (an interpolation" if name == "oc.create" else "allowed: lightning_modules.networks.") in msg


@pytest.mark.parametrize("name", PAYLOADS)
def test_predict_refuses_crafted_checkpoints(modules, name: str, tmp_path: Path) -> None:
    """predict.py segmenter= (a file), run= (a pipeline run: its classifier) and ensemble= (a list)."""
    from wbc.cli import predict

    image = write_image(tmp_path / "in" / "a.png", cell(64)[0])
    seg = evil_ckpt(modules, "segmentation", name, tmp_path / "seg.ckpt", tmp_path)
    run = pipeline_run(modules, tmp_path / "run", "classification", (name, tmp_path))
    good = pipeline_run(modules, tmp_path / "good")
    bad = pipeline_run(modules, tmp_path / "bad", "segmentation", (name, tmp_path))
    for spec in (f"segmenter={seg}", f"run={run}", f"ensemble=[{good},{bad}]"):
        cfg = compose_cfg("predict.yaml", [f"input={image}", spec], tmp_path / "out")
        refused(tmp_path / "marker", predict.predict, cfg)


@pytest.mark.parametrize("name", PAYLOADS)
def test_evaluate_refuses_crafted_checkpoints(modules, name: str, make_eval_cfg, tmp_path: Path) -> None:
    """evaluate.py on a checkpoint file, a run dir and a list of runs."""
    from wbc.cli import evaluate

    ckpt = evil_ckpt(modules, "segmentation", name, tmp_path / "x" / "seg.ckpt", tmp_path)
    run = run_dir(modules, tmp_path / "cls_run", "classification", (name, tmp_path))
    good = run_dir(modules, tmp_path / "good", "segmentation")
    bad = run_dir(modules, tmp_path / "bad", "segmentation", (name, tmp_path))
    for spec in (ckpt, run, f"[{good},{bad}]"):
        refused(tmp_path / "marker", evaluate.evaluate, make_eval_cfg(spec))


@pytest.mark.parametrize("name", PAYLOADS)
def test_export_refuses_crafted_checkpoints(modules, name: str, tmp_path: Path) -> None:
    from wbc.cli import export

    good = save_checkpoint(modules[0], tmp_path / "seg.ckpt")
    bad = evil_ckpt(modules, "classification", name, tmp_path / "cls.ckpt", tmp_path)
    refused(tmp_path / "marker", export.export, [f"segmenter={good}", f"classifier={bad}", f"out={tmp_path / 'onnx'}"])
    assert not (tmp_path / "onnx" / "export.json").exists()


@pytest.mark.parametrize("name", PAYLOADS)
def test_resumed_stage_does_not_reload_a_crafted_checkpoint(modules, name: str, make_cfg, tmp_path: Path, caplog) -> None:
    """resume=true finds the stage finished: load_finished_stage must not rebuild the crafted module
    (it logs why and trains again)."""
    from wbc.fit import load_finished_stage

    out = run_dir(modules, tmp_path / "stage", "segmentation", (name, tmp_path))
    with caplog.at_level(logging.WARNING, logger="wbc"):
        assert load_finished_stage(make_cfg(["resume=true"]), out) is None
    assert not (tmp_path / "marker").exists()
    assert re.search(rf"ckpt_path={re.escape(str(out))}.*: hyper_parameters\.net\S*=.* is not allowed", caplog.text)


# ----------------------------------------------------------------------------- run dir data node
def data_run(modules, make_cfg, path: Path, key: str, node: dict) -> Path:
    """A segmentation run whose .hydra/config.yaml data node holds `node` at `key`."""
    run_dir(modules, path, "segmentation")
    data = OmegaConf.to_container(make_cfg().data, resolve=True)
    *parents, last = key.split(".")
    target = data
    for part in parents:
        target = target[part]
    target[last] = node
    (path / ".hydra").mkdir()
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"data": data}))
    return path


@pytest.mark.parametrize("name", PAYLOADS)
def test_evaluate_run_dir_data_node_payload_is_live(modules, name: str, make_cfg, make_eval_cfg, tmp_path: Path, monkeypatch) -> None:
    """Control: with the check off (today's code) evaluating the run instantiates data.generator."""
    from wbc.cli import evaluate

    monkeypatch.setattr("wbc.evaluation.runs.check_targets", lambda *a, **k: None)
    run = data_run(modules, make_cfg, tmp_path / "run", "generator", payload(name, tmp_path, tmp_path / "marker"))
    without_the_check(tmp_path / "marker", name, evaluate.evaluate, make_eval_cfg(run))


@pytest.mark.parametrize("name", PAYLOADS)
@pytest.mark.parametrize("key", ["generator", "train_transforms.evil", "crops.transforms.evil"])
def test_evaluate_refuses_run_dir_data_targets(modules, name: str, key: str, make_cfg, make_eval_cfg, tmp_path: Path) -> None:
    from wbc.cli import evaluate

    run = data_run(modules, make_cfg, tmp_path / "run", key, payload(name, tmp_path, tmp_path / "marker"))
    msg = refused(tmp_path / "marker", evaluate.evaluate, make_eval_cfg(run))
    assert msg.startswith(f"{run / '.hydra' / 'config.yaml'}: data.{key}") and "_target_=" in msg


def test_evaluate_with_data_given_still_refuses_the_run_dirs_data_target(modules, make_cfg, make_eval_cfg, tmp_path: Path) -> None:
    """`evaluate.py ckpt_path=<received run> data=<config>` takes the DataModule kind from the run's
    data node: that `_target_` is checked too (it was imported and called unchecked on this path)."""
    from wbc.cli import evaluate

    run = data_run(modules, make_cfg, tmp_path / "run", "_target_", {})
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    config["data"]["_target_"] = "collections.OrderedDict"
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    msg = refused(tmp_path / "marker", evaluate.evaluate, make_eval_cfg(run, "data=synthetic_tiny"))
    assert msg.startswith(f"{run / '.hydra' / 'config.yaml'}: data") and "collections.OrderedDict" in msg


# ----------------------------------------------------------------------------- paths read from files
@pytest.fixture(scope="module")
def elsewhere(modules, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ONNX export outside the export dirs the tests craft."""
    from wbc.onnx_backend import export_models

    out = tmp_path_factory.mktemp("elsewhere")
    export_models(modules[0], None, out)
    return out


@pytest.mark.parametrize("entry, file", [("segmenter", "../elsewhere/segmenter.onnx"), ("segmenter", "ABS"), ("classifier", "ABS")])
def test_export_json_files_stay_inside_the_export_dir(elsewhere, modules, entry: str, file: str, tmp_path: Path) -> None:
    from wbc.cli import predict
    from wbc.onnx_backend import load_export

    (tmp_path / "elsewhere").symlink_to(elsewhere, target_is_directory=True)
    file = str(elsewhere / "segmenter.onnx") if file == "ABS" else file
    d = tmp_path / "export"
    d.mkdir()
    (d / "segmenter.onnx").write_bytes((elsewhere / "segmenter.onnx").read_bytes())
    meta = json.loads((elsewhere / "export.json").read_text())
    meta["classifier"] = {"file": "segmenter.onnx", "data_info": meta["segmenter"]["data_info"]}
    meta[entry]["file"] = file
    (d / "export.json").write_text(json.dumps(meta))
    match = re.escape(f"onnx={d}: export.json {entry}.file={file!r} resolves to ") + ".*, outside the export folder"
    refused(tmp_path / "marker", load_export, d, match=match)
    image = write_image(tmp_path / "in" / "a.png", cell(64)[0])
    refused(tmp_path / "marker", predict.predict, compose_cfg("predict.yaml", [f"input={image}", f"onnx={d}"], tmp_path / "out"), match=match)
    meta[entry]["file"] = "segmenter.onnx"  # the same folder, legitimately
    meta.pop("classifier")  # (a segmenter graph as the classifier is refused on its own: tests/test_onnx_export_checks.py)
    (d / "export.json").write_text(json.dumps(meta))
    assert load_export(d)[0].path == (d / "segmenter.onnx").resolve()


def test_best_checkpoint_must_be_inside_the_run_dir(modules, make_eval_cfg, tmp_path: Path) -> None:
    """metrics.json best_checkpoint pointing elsewhere: refused (no local copy) or ignored (a moved run)."""
    from wbc.cli import evaluate
    from wbc.rundir import resolve_checkpoint

    outside = save_checkpoint(modules[0], tmp_path / "elsewhere" / "epoch_003.ckpt")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for best in (str(outside), "../elsewhere/epoch_003.ckpt"):
        (run / "metrics.json").write_text(json.dumps({"best_checkpoint": best}))
        match = re.escape(f"{run / 'metrics.json'}: best_checkpoint={best!r} is outside the run dir")
        with pytest.raises(ValueError, match=match):
            resolve_checkpoint(run, "segmentation")
        with pytest.raises(ValueError, match=match):
            evaluate.evaluate(make_eval_cfg(run))
    local = save_checkpoint(modules[0], run / "checkpoints" / "epoch_003.ckpt")  # the run dir was moved here
    assert resolve_checkpoint(run, "segmentation") == local
    (run / "metrics.json").write_text(json.dumps({"best_checkpoint": str(local)}))
    assert resolve_checkpoint(run, "segmentation") == local
