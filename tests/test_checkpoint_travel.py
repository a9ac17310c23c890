"""What travels between runs: a pipeline's ckpt_path names a pipeline run dir (it had been dropped without a word,
and train=false tested freshly initialised weights), a run dir is accepted where a checkpoint is (train=false tests
its choice, a resume continues its last.ckpt), a resume is refused on other classes or inputs (each output would
mean another class), and a torch.compile'd checkpoint is rebuilt as the plain network for inference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lightning_modules.classification import ClassifierModule
from lightning_modules.common import check_resume_checkpoint, module_from_checkpoint
from tests.helpers_models import save_checkpoint, tiny_modules
from wbc.fit import resume_from
from wbc.stages import stage_checkpoint


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    return tiny_modules(tmp_path_factory.mktemp("tiny"))


def test_a_pipeline_ckpt_path_names_the_run_dir_of_each_stage(tmp_path: Path) -> None:
    source = tmp_path / "source"
    for stage in ("segmentation", "classification"):
        (source / stage / "checkpoints").mkdir(parents=True)
    new = tmp_path / "new" / "segmentation"
    assert stage_checkpoint(str(source), "segmentation", new) == str(source / "segmentation")
    assert stage_checkpoint(None, "segmentation", new) is None
    with pytest.raises(ValueError, match=r"ckpt_path=.*elsewhere: a pipeline run takes a pipeline run dir .* has no segmentation/ sub-run"):
        stage_checkpoint(str(tmp_path / "elsewhere"), "segmentation", new)
    (new / "checkpoints").mkdir(parents=True)
    (new / "checkpoints" / "last.ckpt").write_bytes(b"x")  # a run continued in place
    assert stage_checkpoint(str(tmp_path / "elsewhere"), "segmentation", new) == str(new / "checkpoints" / "last.ckpt")


def test_a_run_dir_as_ckpt_path_is_resolved(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("epoch_001.ckpt", "last.ckpt"):
        (run / "checkpoints" / name).write_bytes(b"x")
    (run / "metrics.json").write_text('{"best_checkpoint": "checkpoints/epoch_001.ckpt"}')

    def cfg(**kw):
        return OmegaConf.create({"stage": "classification", "ckpt_path": str(run), **kw})

    assert resume_from(cfg(train=False), tmp_path / "out") == str(run / "checkpoints" / "epoch_001.ckpt")  # its choice
    assert resume_from(cfg(train=True), tmp_path / "out") == str(run / "checkpoints" / "last.ckpt")  # a resume continues
    with pytest.raises(FileNotFoundError, match=r"holds no classification/checkpoints/last.ckpt or checkpoints/last.ckpt"):
        resume_from(OmegaConf.create({"stage": "classification", "ckpt_path": str(tmp_path), "train": True}), tmp_path / "out")


def test_a_resume_on_other_classes_is_refused(modules, tmp_path: Path) -> None:
    _, clf = modules
    state = {"optimizer_states": [], "loops": {}, "epoch": 0, "global_step": 0}
    path = save_checkpoint(clf, tmp_path / "last.ckpt", **state)
    info = dict(clf.hparams["data_info"])
    check_resume_checkpoint(str(path), "classification", info)  # the same run: fine
    reordered = {**info, "classes": list(reversed(info["classes"]))}
    with pytest.raises(ValueError, match=r"trained with other classes or inputs than this run's \(data_info\.classes: .*init_from"):
        check_resume_checkpoint(str(path), "classification", reordered)


def test_a_compiled_checkpoint_loads_as_the_plain_network(modules, tmp_path: Path) -> None:
    _, clf = modules
    path = tmp_path / "compiled.ckpt"
    state = {k.replace("net.", "net._orig_mod.", 1): v for k, v in clf.state_dict().items()}  # what model.compile=true saves
    torch.save({"state_dict": state, "hyper_parameters": {**dict(clf.hparams), "compile": True}}, path)
    loaded = module_from_checkpoint(ClassifierModule, str(path), "classification")
    assert not hasattr(loaded.net, "_orig_mod")  # not torch.compile'd again
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded.net(x), clf.eval().net(x))


@pytest.mark.parametrize("name", ["hf-hub:attacker/beacon", "HF_HUB:attacker/beacon", "local-dir:/tmp/somewhere"])
def test_a_checkpoint_naming_a_hub_repo_or_folder_as_model_is_refused(modules, tmp_path: Path, name: str) -> None:
    """timm fetches `hf-hub:<repo>`'s config (and weights) when the network is built, even from a checkpoint: with
    HF_HUB_OFFLINE unset a received file could make the machine contact a repo its sender names."""
    from wbc.targets import UnsafeConfigError

    _, clf = modules
    hp = {**dict(clf.hparams), "net": {**dict(clf.hparams["net"]), "name": name}}
    path = tmp_path / "hub.ckpt"
    torch.save({"state_dict": clf.state_dict(), "hyper_parameters": hp}, path)
    with pytest.raises(UnsafeConfigError, match=r"net\.name=.* is not allowed \(a model name that fetches from a hub repo"):
        module_from_checkpoint(ClassifierModule, str(path), "classification")


def test_a_bad_checkpoint_is_named_by_the_key_that_gave_it(tmp_path: Path) -> None:
    """segmenter= / classifier= had been reported as ckpt_path=."""
    from wbc.ensemble import load_models

    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"^classifier=.*bad\.ckpt: not a PyTorch/Lightning checkpoint file"):
        load_models(str(bad), "classification", "classifier")


def test_a_checkpoints_folder_symlinked_to_scratch_stays_inside_its_run(modules, tmp_path: Path) -> None:
    """HPC runs keep checkpoints/ on scratch storage through a symlink: metrics.json's best checkpoint under it had
    been refused as "outside the run dir" (a path that leaves the run dir as written still is: test_unsafe_configs)."""
    from wbc.rundir import resolve_checkpoint

    scratch = tmp_path / "scratch" / "run1"
    scratch.mkdir(parents=True)
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").symlink_to(scratch, target_is_directory=True)
    best = save_checkpoint(modules[0], run / "checkpoints" / "epoch_001.ckpt")
    save_checkpoint(modules[0], run / "checkpoints" / "last.ckpt")
    (run / "metrics.json").write_text(f'{{"best_checkpoint": "{best}"}}')
    assert resolve_checkpoint(run, "segmentation") == best


def test_a_checkpoint_without_its_input_settings_is_said_not_silently_defaulted(modules, caplog) -> None:
    """A data_info without image_size / crops (a stripped or hand-made file) ran at 128 px / default crops without a word."""
    import copy

    from wbc.inference import CellPipeline

    seg, clf = (copy.deepcopy(m) for m in modules)
    del seg.hparams["data_info"]["image_size"]
    del clf.hparams["data_info"]["crops"]
    with caplog.at_level("WARNING", logger="wbc"):
        CellPipeline(seg, clf)
    assert "the segmenter's data_info has no ['image_size']" in caplog.text
    assert "the classifier's data_info has no ['crops']" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="wbc"):
        CellPipeline(*modules)
    assert "data_info has no" not in caplog.text
