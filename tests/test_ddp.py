"""DDP: the epoch-keyed sampler sharded over ranks, rank-zero-only run files, and (slow) a 2-process
CPU run (gloo) whose test figures equal the single-process evaluation of the same checkpoint.

The fast tests check the pieces in-process (samplers, the DataModule's loaders under a fake 2-rank
trainer, the rank-zero guards, the trainer settings). The slow ones run `train.py trainer=ddp_cpu`
through the real CLI: Lightning starts rank 1 by running the command line again, and a
`sitecustomize` audit hook records every file rank 1 opens for writing inside the run dir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from datamodules.sampling import DistributedEpochSampler, EpochSampler, ShardSampler, balanced_weights
from wbc import resume, rundir

ROOT = Path(__file__).resolve().parents[1]


def shards(n: int, world: int, seed: int, epoch: int, weights=None) -> list[list[int]]:
    out = []
    for rank in range(world):
        s = DistributedEpochSampler(n, world, rank, seed, weights)
        s.set_epoch(epoch)
        out.append(list(s))
    return out


def single(n: int, seed: int, epoch: int, weights=None) -> list[int]:
    s = EpochSampler(n, seed, weights)
    s.set_epoch(epoch)
    return list(s)


# ----------------------------------------------------------------------------- samplers (fast)
@pytest.mark.parametrize("n,world", [(12, 2), (13, 2), (10, 3), (2, 3)])
def test_distributed_epoch_sampler_deals_the_single_process_order(n: int, world: int) -> None:
    for epoch in (0, 3):
        parts = shards(n, world, seed=7, epoch=epoch)
        order = single(n, seed=7, epoch=epoch)
        assert len({len(p) for p in parts}) == 1, "every rank must run the same number of steps"
        dealt = [parts[p % world][p // world] for p in range(len(parts[0]) * world)]
        assert dealt[:n] == order  # position p of the single-process epoch goes to rank p % world
        assert sorted(set(dealt)) == sorted(order)  # the union is the whole split, items and augmentation keys
        seen = [i for p in parts for i in p]
        assert len(seen) - n == (-n) % world  # only the padding to a multiple of world is repeated
        if n % world == 0:
            assert all(not set(a) & set(b) for k, a in enumerate(parts) for b in parts[k + 1 :])  # disjoint
    assert shards(13, 2, 7, 1) == shards(13, 2, 7, 1)  # same seed + epoch -> same shards
    assert shards(13, 2, 7, 1) != shards(13, 2, 7, 2) and shards(13, 2, 7, 1) != shards(13, 2, 8, 1)
    assert all(i // n == 3 for p in shards(n, world, 7, 3) for i in p)  # the epoch travels in the index


def test_distributed_balanced_sampler_shards_the_same_draws() -> None:
    w = balanced_weights([0] * 10 + [1] * 3 + [2])
    parts = shards(14, 2, seed=1, epoch=2, weights=w)
    assert [x for pair in zip(*parts) for x in pair] == single(14, seed=1, epoch=2, weights=w)


@pytest.mark.parametrize("n,world", [(7, 2), (8, 2), (5, 3)])
def test_shard_sampler_scores_every_item_exactly_once(n: int, world: int) -> None:
    parts = [list(ShardSampler(n, world, r)) for r in range(world)]
    assert sorted(i for p in parts for i in p) == list(range(n))
    assert [len(ShardSampler(n, world, r)) for r in range(world)] == [len(p) for p in parts]


def test_loaders_under_two_ranks_give_the_single_process_items(make_cfg) -> None:
    """The real DataModule under a fake 2-rank trainer: training shards reproduce the single-process
    epoch item for item (same augmented tensors), the test shards cover the split once."""
    from wbc.fit import build_datamodule

    cfg = make_cfg()  # augment=study on the training split
    dm = build_datamodule(cfg.data)
    dm.setup()
    ds = dm.datasets["train"]
    single_loader = dm.train_dataloader()
    single_loader.sampler.set_epoch(1)
    reference = {int(i): ds[int(i)] for i in single_loader.sampler}
    seen: dict[int, dict] = {}
    test_ids: list[int] = []
    for rank in range(2):
        dm.trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 2, "rank": rank})
        loader = dm.train_dataloader()
        assert isinstance(loader.sampler, DistributedEpochSampler)
        loader.sampler.set_epoch(1)
        for i in loader.sampler:
            seen[int(i)] = ds[int(i)]
        test_loader = dm.test_dataloader()
        assert isinstance(test_loader.sampler, ShardSampler)
        test_ids += [int(i) for b in test_loader for i in b["index"]]
    assert seen.keys() == reference.keys()
    for i, item in reference.items():
        assert torch.equal(seen[i]["image"], item["image"]) and torch.equal(seen[i]["mask"], item["mask"])
    assert sorted(test_ids) == list(range(len(dm.datasets["test"])))


# ----------------------------------------------------------------------------- rank zero (fast)
@pytest.mark.parametrize(
    "env,zero",
    [({}, True), ({"LOCAL_RANK": "0"}, True), ({"LOCAL_RANK": "1"}, False), ({"SLURM_PROCID": "3"}, False),
     ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False), ({"RANK": "0", "SLURM_PROCID": "0"}, True)],
)
def test_is_rank_zero_reads_the_launchers_variables(env: dict, zero: bool) -> None:
    assert rundir.is_rank_zero(env) is zero


def test_other_ranks_write_no_job_files(tmp_path: Path, make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    from wbc.run import extras

    cfg = make_cfg(["extras.print_config=true"], output_dir=tmp_path / "run")
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    rundir.start_job(out, resume.job_record(0, "segmentation", []))
    rundir.write_failure(out, RuntimeError("rank 1 failed"))
    extras(cfg)
    assert list(out.iterdir()) == []
    monkeypatch.setenv("LOCAL_RANK", "0")
    rundir.start_job(out, resume.job_record(0, "segmentation", []))
    extras(cfg)
    assert {p.name for p in out.iterdir()} == {rundir.JOB_FILE, "config_tree.log"}


def test_ddp_trainer_builds_on_cpu_without_sync_batchnorm(make_cfg, tmp_path: Path) -> None:
    """`trainer=ddp trainer.accelerator=cpu` (sync_batchnorm: true, from the GPU config) and
    trainer=ddp_cpu build a gloo DDP Trainer; SyncBatchNorm would fail there."""
    from lightning.pytorch.strategies import DDPStrategy

    from wbc.fit import build_trainer, fit_accelerator

    for overrides in (["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"], ["trainer=ddp_cpu"]):
        cfg = make_cfg(overrides)
        trainer = build_trainer(cfg, tmp_path)
        assert isinstance(trainer.strategy, DDPStrategy) and trainer.world_size == 2
        assert trainer.strategy._layer_sync is None  # no SyncBatchNorm conversion
        assert trainer.strategy._process_group_backend in (None, "gloo")
    assert fit_accelerator({"accelerator": "cpu", "sync_batchnorm": True})["sync_batchnorm"] is False
    cuda = torch.cuda.is_available()
    assert fit_accelerator({"accelerator": "gpu", "sync_batchnorm": True})["sync_batchnorm"] is cuda


# ----------------------------------------------------------------------------- 2 processes (slow)
SITECUSTOMIZE = '''
import os, sys
if os.environ.get("LOCAL_RANK", "0") != "0":
    watched, record = os.environ["WBC_TEST_WATCH"], os.environ["WBC_TEST_WRITES"]
    def _hook(event, args):
        paths = []
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1] or "", args[2] or 0
            if any(c in str(mode) for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                paths.append(args[0])
        elif event in ("os.rename", "os.remove", "os.mkdir", "shutil.rmtree"):
            paths += [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
        for p in paths:
            p = os.path.abspath(os.fsdecode(p))
            if p.startswith(watched):
                with open(record, "a") as fh:
                    fh.write(f"{event} {p}\\n")
    sys.addaudithook(_hook)
'''
TINY_CLI = ("data=synthetic_tiny", "trainer.max_epochs=2", "logger=csv", "callbacks.rich_progress_bar=null", "extras.print_config=false", "num_overlays=2")


def run_cli(args: list[str], data_dir: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "WBC_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1", **(env_extra or {})}
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"train.py {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def figures(metrics: dict, prefix: str = "test/") -> dict[str, float]:
    """The per-image / per-crop test figures. Not `test/loss`: the mean of per-batch losses depends on
    how the split is cut into batches (per rank under DDP; eval_batch_size in one process)."""
    return {k: v for k, v in metrics.items() if k.startswith(prefix) and isinstance(v, float) and k != "test/loss"}


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["segmentation", "classification"])
def test_two_process_ddp_run_equals_single_process_evaluation(stage: str, tmp_path: Path, data_dir: Path) -> None:
    """Train once with 2 CPU processes; its test figures (Lightning's, synced over the ranks, and the
    rank-zero scoring) equal a single-process evaluation of the checkpoint it tested."""
    extra = [] if stage == "segmentation" else ["experiment=classify"]
    hook_dir, writes = tmp_path / "hook", tmp_path / "rank1_writes.txt"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    env = {"PYTHONPATH": os.pathsep.join([str(hook_dir), os.environ.get("PYTHONPATH", "")]), "WBC_TEST_WATCH": str(ddp_dir), "WBC_TEST_WRITES": str(writes)}
    run_cli([*extra, *TINY_CLI, "trainer=ddp_cpu", f"hydra.run.dir={ddp_dir}"], data_dir, env)
    ddp = json.loads((ddp_dir / "metrics.json").read_text())
    ckpt = ddp["best_checkpoint"]
    assert ckpt and Path(ckpt).is_file()
    # train=false: test + score the given checkpoint (no validation metric to return: optimized_metric=null)
    run_cli([*extra, *TINY_CLI, "train=false", f"ckpt_path={ckpt}", "optimized_metric=null", f"hydra.run.dir={single_dir}"], data_dir)
    one = json.loads((single_dir / "metrics.json").read_text())
    a, b = figures(ddp), figures(one)
    assert a.keys() == b.keys() and len(a) >= 4
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7), k  # float32 sums in another order

    # every test image / crop exactly once in what rank zero wrote
    if stage == "segmentation":
        cases = json.loads((ddp_dir / "test_eval" / "summary.json").read_text())["metric_per_case"]
        ids = [c["id"] for c in cases]
        single_ids = [c["id"] for c in json.loads((single_dir / "test_eval" / "summary.json").read_text())["metric_per_case"]]
        assert len(ids) == len(set(ids)) == len(single_ids) and sorted(ids) == sorted(single_ids)
    else:
        rows = (ddp_dir / "test_predictions.csv").read_text().splitlines()
        assert len(rows) == len(set(rows)) == len((single_dir / "test_predictions.csv").read_text().splitlines())
        assert np.isclose(a["test/n_crops"], len(rows) - 1)
    # rank 1 wrote no run file. Allowed: Hydra's makedirs(exist_ok) of the run dir and the job log, which
    # Hydra's job_logging opens in every process (conf/hydra/default.yaml names it by task, not by rank)
    recorded = writes.read_text().splitlines() if writes.is_file() else []
    assert recorded, "the audit hook saw nothing: rank 1 did not run under it"
    task = "classify" if stage == "classification" else "train"
    # rank 1 writes only its own job log (hydra/default.yaml: ${wbc.rank_suffix:}), never rank zero's
    allowed = {f"os.mkdir {ddp_dir}", f"open {ddp_dir / (task + '.rank1.log')}"}
    assert set(recorded) <= allowed, sorted(set(recorded) - allowed)
    epochs = [r for r in (ddp_dir / "csv" / "metrics.csv").read_text().splitlines()[1:] if r]
    assert len(epochs) == len(set(epochs))


def test_local_multirun_with_ddp_is_refused_before_it_runs(make_cfg, tmp_path: Path) -> None:
    """Lightning would start rank 1 by running the command line again: the whole sweep."""
    from wbc.fit import build_trainer

    with pytest.raises(ValueError, match="local multirun"):
        build_trainer(make_cfg(["trainer=ddp_cpu", "hydra.mode=MULTIRUN"]), tmp_path)
    build_trainer(make_cfg(["hydra.mode=MULTIRUN"]), tmp_path)  # one process per job: fine
