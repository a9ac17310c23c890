"""Cross-validation sweeps: `train.py -m data.fold=...` through the real CLI (sweep summary, resume,
failed folds), an Optuna search, the CV/sweep configs (wbc.cv's pure functions: test_cv_summary.py).
CLI runs use one intra-op thread (OMP_NUM_THREADS=1): on a shared 2-core box that is
several times faster for these tiny models."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from wbc import resume, rundir

ROOT = Path(__file__).resolve().parents[1]
TINY_CLI = (
    "data=synthetic_tiny",
    "data.splits.k=2",
    "trainer.max_epochs=1",
    "logger=csv",
    "callbacks.rich_progress_bar=null",
    "extras.print_config=false",
    "num_overlays=0",
)


def run_cli(args: list[str], data_dir: Path, script: str = "train.py", timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "WBC_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run([sys.executable, script, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- the real CLI
@pytest.fixture(scope="module")
def seg_sweep(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict:
    """A 2-fold segmentation sweep through the CLI (~10 s); a snapshot of what it wrote, taken
    before test_resume_... re-runs into the same sweep dir."""
    sweep = tmp_path_factory.mktemp("cv") / "sweep"
    proc = run_cli(["-m", *TINY_CLI, "data.fold=0,1", f"hydra.sweep.dir={sweep}"], data_dir)
    return {
        "dir": sweep,
        "stdout": proc.stdout,
        "summary": read_json(sweep / "cv_summary.json"),
        "csv": csv_rows(sweep / "cv_summary.csv"),
        "metrics": {j: read_json(sweep / j / "metrics.json") for j in ("0", "1")},
        "val_summaries": {j: read_json(sweep / j / "val_eval" / "summary.json") for j in ("0", "1")},
    }


def test_sweep_writes_cv_summary_with_mean_and_sample_std(seg_sweep) -> None:
    s, metrics = seg_sweep["summary"], seg_sweep["metrics"]
    assert s["kind"] == "cv" and s["stage"] == "segmentation"
    assert s["folds"] == [0, 1] and s["failed_folds"] == [] and s["n_ok"] == 2
    assert "ddof=1" in s["std_definition"]
    assert [f["job"] for f in s["per_fold"]] == ["0", "1"]
    assert [f["run_dir"] for f in s["per_fold"]] == [str(seg_sweep["dir"] / j) for j in ("0", "1")]
    # every numeric val/test metric of the folds, recomputed from their metrics.json
    expected = {k for m in metrics.values() for k, v in m.items() if is_number(v) and k.startswith(("val/", "test/"))}
    assert expected <= set(s["mean"]), expected - set(s["mean"])
    assert {"val/dice_best", "test/dice_post", "val/dice_post"} <= set(s["mean"])
    for key in expected:
        values = [metrics[j][key] for j in ("0", "1")]
        assert s["mean"][key] == pytest.approx(np.mean(values), abs=1e-12), key
        assert s["std"][key] == pytest.approx(np.std(values, ddof=1), abs=1e-12), key
        assert s["n"][key] == 2
    # the CSV holds the same figures: one row per fold, then mean and std, then the pooled OOF row
    rows = {r["job"]: r for r in seg_sweep["csv"]}
    assert list(rows) == ["0", "1", "mean", "std", "oof"]
    for key in ("val/dice_best", "test/dice_post"):
        assert float(rows["mean"][key]) == pytest.approx(s["mean"][key], rel=1e-5)
        assert float(rows["std"][key]) == pytest.approx(s["std"][key], rel=1e-5)
        assert float(rows["0"][key]) == pytest.approx(metrics["0"][key], rel=1e-5)
    assert "val/dice_best" in seg_sweep["stdout"] and "±" in seg_sweep["stdout"]
    # each job records the software it ran with (job.json); one machine, one checkout: no differences named
    software = read_json(seg_sweep["dir"] / "0" / "job.json")["software"]
    assert software["packages"]["torch"] == torch.__version__.split("+")[0] and "software_differences" not in s


def test_sweep_pools_out_of_fold_validation_cases(seg_sweep, data_dir: Path) -> None:
    """Each fold scores its validation images (val_eval/summary.json); the summary averages all of
    them together (not the mean of the fold means), and every training image is scored once."""
    sweep, s = seg_sweep["dir"], seg_sweep["summary"]
    cases = [c for j in ("0", "1") for c in seg_sweep["val_summaries"][j]["metric_per_case"]]
    ids = [c["id"] for c in cases]
    assert len(ids) == len(set(ids)) > 0  # the validation folds are disjoint
    splits = json.loads(next((data_dir / "synthetic_tiny").glob("splits_*_k2_*.json")).read_text())
    assert sorted(ids) == sorted(i for f in splits["folds"] for i in f["val"])  # ... and cover the training part
    oof = s["oof"]["segmentation"]
    assert oof["n_cases"] == oof["n_unique_cases"] == len(cases)

    def nanmean(key: str) -> float:
        return float(np.nanmean([np.nan if c[key] is None else c[key] for c in cases]))

    assert oof["metrics"]["oof/val/dice_post"] == pytest.approx(nanmean("dice"))
    assert oof["metrics"]["oof/val/dice_raw_fullres"] == pytest.approx(nanmean("dice_raw"))
    for j in ("0", "1"):  # the fold's own headline is its val cases' mean
        assert seg_sweep["metrics"][j]["val/dice_post"] == pytest.approx(seg_sweep["val_summaries"][j]["mean"]["dice"])
    pooled = csv_rows(sweep / "cv_oof_cases.csv")
    assert sorted(r["id"] for r in pooled) == sorted(ids)


def test_resumed_sweep_skips_finished_continues_interrupted_and_names_failed(seg_sweep, data_dir: Path) -> None:
    """Same sweep dir + resume=true: fold 0 (metrics.json) is skipped, fold 1 (metrics.json lost:
    interrupted) continues from its last.ckpt, and a job that fails (data.fold=7 with k=2) is
    recorded as FAILED while the sweep goes on and its summary names it."""
    sweep = seg_sweep["dir"]
    done = sweep / "0" / "metrics.json"
    mtime = done.stat().st_mtime_ns
    (sweep / "1" / "metrics.json").unlink()
    assert (sweep / "1" / "checkpoints" / "last.ckpt").is_file()
    proc = run_cli(["-m", *TINY_CLI, "trainer.max_epochs=2", "data.fold=0,1,7", f"hydra.sweep.dir={sweep}", "resume=true"], data_dir)
    out = proc.stdout + proc.stderr
    # finished fold: skipped, untouched
    assert done.stat().st_mtime_ns == mtime
    assert f"{sweep / '0'} already finished" in out and "skipped" in out
    assert "skipped" in (sweep / "0" / "train.log").read_text()
    # interrupted fold: continued from last.ckpt (epoch 1 only), its learning curve kept epoch 0
    assert f"{sweep / '1'} continues from {sweep / '1' / 'checkpoints' / 'last.ckpt'}" in out
    epochs = {int(float(r["epoch"])) for r in csv_rows(sweep / "1" / "csv" / "metrics.csv") if r.get("train/loss")}
    assert epochs == {0, 1}
    assert read_json(sweep / "1" / "metrics.json")["val/dice_best"] >= seg_sweep["metrics"]["1"]["val/dice_best"] - 1e-6
    # failing fold: FAILED marker, the sweep went on, the summary names it
    failed = (sweep / "2" / "FAILED").read_text()
    assert "SplitError" in failed and "data.fold=7" in failed
    assert not (sweep / "2" / "metrics.json").exists()
    # fold 0 kept the schedule it ran (1 epoch, job.json), fold 1 ran on to 2: two settings, not one mean
    assert "trainer.max_epochs" in out and "skipped" in out
    s = read_json(sweep / "cv_summary.json")
    groups = {"trainer.max_epochs=1" in g["overrides"]: g for g in s["groups"]}
    assert groups[True]["folds"] == [0] and groups[False]["folds"] == [1] and groups[False]["failed_folds"] == [7]
    assert "trainer.max_epochs=2" in groups[False]["overrides"] and s["failed_folds"] == [7]
    assert groups[False]["failed"][0]["job"] == "2" and "data.fold=7" in groups[False]["failed"][0]["reason"]
    for job, g in (("0", groups[True]), ("1", groups[False])):
        assert g["mean"]["val/dice_best"] == pytest.approx(read_json(sweep / job / "metrics.json")["val/dice_best"])
    rows = {r["job"]: r for r in csv_rows(sweep / "cv_summary.csv")}
    assert rows["2"]["status"] == "failed" and "SplitError" in rows["2"]["note"]


def test_evaluate_and_predict_on_the_sweep_dir(seg_sweep, make_eval_cfg, tmp_path: Path) -> None:
    """evaluate.py ckpt_path=<sweep dir>: each finished fold scores what its own training run
    scored on the test split, and the ensemble is scored too; predict.py ensemble=<sweep dir> of a
    segmentation-only sweep gives masks (no classifier)."""
    from tests.helpers_models import compose_cfg
    from wbc.cli import evaluate, predict
    from wbc.ensemble import SegmentationEnsemble

    sweep = seg_sweep["dir"]
    finished = [j for j in ("0", "1", "2") if (sweep / j / "metrics.json").is_file() and not (sweep / j / "FAILED").exists()]
    metrics, out = evaluate.evaluate(make_eval_cfg(sweep, "num_overlays=0"))
    table = read_json(tmp_path / "eval" / "ensemble_summary.json")
    assert len(finished) >= 2 and [r["member"] for r in table["members"]] == [f"fold{j}" for j in finished]
    for r, j in zip(table["members"], finished):
        assert r["test/dice_post"] == pytest.approx(read_json(sweep / j / "metrics.json")["test/dice_post"], abs=1e-6)
    assert metrics["test/dice_post"] == table["ensemble"]["test/dice_post"]
    image = next(Path(c["image"]) for c in seg_sweep["val_summaries"]["0"]["metric_per_case"])
    counts, objects = predict.predict(compose_cfg("predict.yaml", [f"input={image}", f"ensemble={sweep}", "extras.print_config=false"], tmp_path / "pred"))
    assert isinstance(objects["pipeline"].segmenter, SegmentationEnsemble) and objects["pipeline"].classifier is None
    assert counts["failed"] == 0 and (tmp_path / "pred" / "masks" / f"{image.stem}.png").is_file()


def test_resume_refuses_a_run_dir_of_another_fold(seg_sweep, data_dir: Path, tmp_path: Path) -> None:
    """Job numbers follow the swept values: `data.fold=1` resumed into job 0 (fold 0) must not reuse fold 0's results."""
    record = resume.job_record(0, "segmentation", ["data.fold=0"], 0)
    run = tmp_path / "0"
    rundir.start_job(run, record)
    with pytest.raises(ValueError, match="fold=0.*fold=1"):
        resume.check_same_job(run, resume.job_record(1, "segmentation", ["data.fold=1"], 0))
    resume.check_same_job(run, resume.job_record(0, "segmentation", ["data.fold=0", "resume=true", "logger=wandb"], 0))


@pytest.mark.slow  # two trials in a subprocess (~20-35 s): CI keeps the config-level check of the searches below
def test_optuna_search_two_trials(data_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "optuna"
    run_cli(
        [*TINY_CLI, "hparams_search=seg_optuna", "hydra.sweeper.n_trials=2", "+trainer.limit_train_batches=2",
         "test=false", f"hydra.sweep.dir={sweep}"],
        data_dir,
    )
    values = [read_json(sweep / j / "metrics.json")["val/dice_best"] for j in ("0", "1")]
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.best_value == pytest.approx(max(values))  # direction: maximize, the metric main() returns
    assert set(results.best_params) == {"model.optimizer.lr", "model.loss.name", "model.net.encoder_name", "data.train_transforms.rotate.p"}
    s = read_json(sweep / "sweep_summary.json")  # not a fold sweep: one table of trials
    assert s["kind"] == "sweep" and s["n_ok"] == 2 and s["optimized_metric"] == "val/dice_best"


# ----------------------------------------------------------------------------- configs
def compose(overrides: list[str], config_name: str = "train.yaml"):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name, overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize(
    ("experiment", "stage", "metric"),
    [("seg_cv", "segmentation", "val/dice_best"), ("cls_cv", "classification", "val/macro_f1_best"), ("pipeline_cv", "pipeline", "pipeline/macro_f1")],
)
def test_cv_experiments_are_multiruns_over_the_folds(experiment: str, stage: str, metric: str) -> None:
    from hydra.types import RunMode

    cfg = compose([f"experiment={experiment}", "data=synthetic_tiny"])
    assert cfg.hydra.mode == RunMode.MULTIRUN
    assert cfg.stage == stage and cfg.optimized_metric == metric
    assert cfg.hydra.sweeper.params["data.fold"] == f"range(0,{cfg.data.splits.k})"  # the folds follow data.splits.k
    assert cfg.hydra.callbacks.cv_summary._target_ == "wbc.hydra_callbacks.CVSummary"
    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "${hydra.job.num}"  # deterministic job dirs (resume)


@pytest.mark.parametrize("search", ["seg_optuna", "cls_optuna"])
def test_optuna_configs_search_existing_keys(search: str) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    extra = ["experiment=classify"] if search == "cls_optuna" else []
    cfg = compose([*extra, f"hparams_search={search}"])
    sw = cfg.hydra.sweeper
    assert sw._target_.endswith("OptunaSweeper") and sw.direction == "maximize" and sw.n_trials > 0
    assert {"model.optimizer.lr", "model.loss.name"} <= set(sw.params)
    assert any(k.startswith("model.net.") for k in sw.params) and any(".p" in k and k.startswith("data.") for k in sw.params)
    for key in sw.params:  # a typo would make every trial fail
        assert OmegaConf.select(cfg, key) is not None, key
    assert cfg.optimized_metric in ("val/dice_best", "val/macro_f1_best")


@pytest.mark.parametrize("trainer", ["gpu", "ddp"])
def test_gpu_and_ddp_trainer_configs_build_a_trainer(trainer: str, tmp_path: Path) -> None:
    """Composed as given; the Trainer is then built with the accelerator forced to the CPU."""
    from omegaconf import open_dict

    from wbc.fit import build_trainer

    cfg = compose([f"trainer={trainer}", "logger=none", "callbacks=none"])
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed" and cfg.trainer.channels_last
    if trainer == "ddp":
        assert cfg.trainer.strategy == "ddp" and cfg.trainer.sync_batchnorm
    with open_dict(cfg):
        cfg.trainer.accelerator, cfg.trainer.devices = "cpu", 1
        cfg.paths.output_dir = str(tmp_path)
        del cfg["hydra"]
    built = build_trainer(cfg, tmp_path)
    assert type(built.strategy).__name__ == ("DDPStrategy" if trainer == "ddp" else "SingleDeviceStrategy")


def test_submitit_slurm_launcher_config() -> None:
    cfg = compose(["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.partition == "gpu" and launcher.timeout_min == 30
    assert {"gpus_per_node", "cpus_per_task", "mem_gb", "tasks_per_node"} <= set(launcher)
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra.utils import instantiate

    assert type(instantiate(launcher)).__name__ == "SlurmLauncher"  # builds without a cluster


# ----------------------------------------------------------------------------- other stages, dashboards, GPU
@pytest.mark.slow  # a 5-fold subprocess sweep (~20-35 s): CI keeps the segmentation sweep and the dashboard unit tests above
def test_cv_experiment_classification_with_dashboards(data_dir: Path, tmp_path: Path) -> None:
    """experiment=cls_cv (the folds from data.splits.k) with csv + tensorboard + wandb (offline) loggers (~10 s)."""
    sweep = tmp_path / "cls"
    run_cli(["experiment=cls_cv", "data=synthetic_tiny", "trainer.max_epochs=1", "logger=many", "callbacks.rich_progress_bar=null",
             "extras.print_config=false", f"hydra.sweep.dir={sweep}"], data_dir)
    s = read_json(sweep / "cv_summary.json")
    assert s["folds"] == [0, 1] and s["stage"] == "classification"
    assert s["oof"]["classification"]["n_crops"] == sum(len(csv_rows(sweep / j / "val_predictions.csv")) for j in ("0", "1"))
    assert "oof/val/macro_f1" in s["oof"]["classification"]["metrics"]
    assert list((sweep / "tensorboard" / "cv_summary").glob("events.*"))
    assert list((sweep / "wandb").glob("offline-run-*/files/media/table/cv_summary*.table.json"))
    assert json.loads((sweep / "0" / "job.json").read_text())["loggers"]["wandb"]["group"].endswith("-" + sweep.name)


@pytest.mark.slow
def test_pipeline_cv_pools_both_stages(data_dir: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "pipe"
    run_cli(["experiment=pipeline_cv", *TINY_CLI, f"hydra.sweep.dir={sweep}"], data_dir, timeout=1200)
    s = read_json(sweep / "cv_summary.json")
    assert s["folds"] == [0, 1] and {"segmentation", "classification"} <= set(s["oof"])
    assert "pipeline/macro_f1" in s["mean"] or "pipeline/detection_recall" in s["mean"]


def test_gpu_check_without_gpu_says_so(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert gpu_check.main(["--data", "synthetic_tiny"]) == gpu_check.NO_GPU
    assert "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.gpu
def test_gpu_check_trains_both_stages(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, data_dir: Path, tmp_path: Path) -> None:

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check

    monkeypatch.setenv("WBC_DATA_DIR", str(data_dir))
    assert gpu_check.main(["--data", "synthetic_tiny", "--epochs", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "segmentation" in out and "classification" in out and "peak GiB" in out
