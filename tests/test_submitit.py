"""The SLURM path without a cluster: `hydra/launcher=submitit_local` (hydra-submitit-launcher's local
executor: the same plugin, pickled jobs and job-dir layout as on SLURM) runs a 2-fold sweep end to end,
summary and resume included (slow); the `submitit_slurm` config composes with the keys the README
and conf/hydra/launcher/submitit_slurm.yaml document (fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.test_cv import TINY_CLI, run_cli

ROOT = Path(__file__).resolve().parents[1]


def compose_hydra(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train.yaml", overrides=overrides, return_hydra_config=True)


def test_submitit_slurm_composes_with_the_documented_keys() -> None:
    """The README recipe (a CV experiment on SLURM, one GPU per fold) and the DDP layout the config
    comments describe (trainer=ddp with N devices = N tasks per node, resume on preemption)."""
    cfg = compose_hydra(["experiment=seg_cv", "hydra/launcher=submitit_slurm", "trainer=gpu", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1
    cfg = compose_hydra(
        ["experiment=seg_cv", "hydra/launcher=submitit_slurm", "trainer=ddp", "trainer.devices=4", "hydra.launcher.gpus_per_node=4",
         "hydra.launcher.tasks_per_node=4", "hydra.launcher.cpus_per_task=8", "hydra.launcher.mem_gb=64", "hydra.launcher.timeout_min=600",
         "hydra.launcher.max_num_timeout=3", "hydra.launcher.account=lab", "+hydra.launcher.additional_parameters.mail-type=END",
         "resume=true", "hydra.sweep.dir=cv/seg"]
    )  # fmt: skip
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["tasks_per_node"] == cfg.trainer.devices == 4 and launcher["max_num_timeout"] == 3
    assert launcher["submitit_folder"] == "cv/seg/.submitit/%j" and launcher["name"] == cfg.task_name
    assert launcher["additional_parameters"] == {"mail-type": "END"}
    # every field of the plugin's own schema is set here (so Hydra's schema check has nothing to add)
    from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf

    assert set(SlurmQueueConf.__dataclass_fields__) <= set(launcher)
    local = compose_hydra(["hydra/launcher=submitit_local"]).hydra.launcher
    assert set(LocalQueueConf.__dataclass_fields__) <= set(local) and local.tasks_per_node == 1


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_submitit_local_sweep_writes_cv_summary_and_resumes(tmp_path: Path, data_dir: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY_CLI, "data.fold=0,1", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}"]
    run_cli(args, data_dir)
    summary = json.loads((sweep / "cv_summary.json").read_text())
    assert summary["kind"] == "cv" and summary["folds"] == [0, 1] and summary["n_ok"] == 2 and summary["failed_folds"] == []
    assert "oof/val/dice_post" in summary["oof"]["segmentation"]["metrics"]
    for job in ("0", "1"):
        assert (sweep / job / "metrics.json").is_file() and (sweep / job / "val_eval" / "summary.json").is_file()
        assert json.loads((sweep / job / "job.json").read_text())["fold"] == int(job)
    assert list((sweep / ".submitit").iterdir()), "the submitit job folders (pickles, logs) are missing"
    before = {"0": (sweep / "0" / "metrics.json").stat().st_mtime_ns}

    # resume: fold 0 finished, fold 1 lost (a cancelled job: its dir is gone): only fold 1 runs again
    import shutil

    shutil.rmtree(sweep / "1")
    (sweep / "cv_summary.json").unlink()
    proc = run_cli([*args, "resume=true"], data_dir)
    assert (sweep / "0" / "metrics.json").stat().st_mtime_ns == before["0"]
    assert (sweep / "1" / "metrics.json").is_file() and (sweep / "1" / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((sweep / "cv_summary.json").read_text())["n_ok"] == 2
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*.out")) + proc.stdout
    assert "already finished" in logs
