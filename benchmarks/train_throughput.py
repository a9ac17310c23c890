"""Training throughput: Lightning vs a bare PyTorch loop, and the data loader vs the training step.

    python benchmarks/train_throughput.py [--data synthetic] [--steps 20] [--warmup 3] [--threads N]

Both loops train the default segmentation model (conf/model/segmentation.yaml, composed with
Hydra) on the same batches of the synthetic DataModule's train loader, with the same
optimizer, threads and `trainer.deterministic` setting; the Lightning run has no progress bar,
logger, checkpointing, validation or model summary. Printed:
  - img/s of each loop and lightning/bare (goal >= 0.95),
  - img/s of iterating the train loader alone and loader/train-step (goal >= 3).
Figures, not assertions: they depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="synthetic", help="conf/data/<name> (default: synthetic, 128 px network input)")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per loop and round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, oneDNN kernels)")
    p.add_argument("--rounds", type=int, default=2, help="alternate bare/Lightning this many times; medians are printed")
    p.add_argument("--batch-size", type=int, default=None, help="default: the data config's batch_size")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    p.add_argument("--override", action="append", default=[], help="extra Hydra override for train.yaml (repeatable)")
    return p.parse_args(argv)


def compose_benchmark(overrides: list[str]):
    from _common import compose_train
    from omegaconf import open_dict

    cfg = compose_train(overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(ROOT / "outputs" / "benchmarks")
        del cfg["hydra"]
    return cfg


class Cycle:
    """The train loader's batches, epoch after epoch (the sampler is epoch-keyed)."""

    def __init__(self, loader) -> None:
        self.loader, self.epoch, self.it = loader, 0, None

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            if self.it is None:
                if hasattr(self.loader.sampler, "set_epoch"):
                    self.loader.sampler.set_epoch(self.epoch)
                self.it = iter(self.loader)
            try:
                return next(self.it)
            except StopIteration:
                self.it, self.epoch = None, self.epoch + 1


def new_model(cfg, data_info, seed: int = 0):
    import torch
    from hydra.utils import instantiate

    torch.manual_seed(seed)
    return instantiate(cfg.model, data_info=data_info)


def time_loader(loader, steps: int, warmup: int) -> float:
    batches = Cycle(loader)
    for _ in range(warmup):
        next(batches)
    n, t0 = 0, time.perf_counter()
    for _ in range(steps):
        n += len(next(batches)["image"])
    return n / (time.perf_counter() - t0)


def time_bare(cfg, data_info, loader, steps: int, warmup: int) -> float:
    """The same module's net + loss + optimizer, in a plain loop (no metrics, no logging)."""
    from hydra.utils import instantiate

    model = new_model(cfg, data_info).train()
    net, criterion = model.net, model.criterion
    optimizer = instantiate(dict(model.hparams.optimizer))(params=[p for p in net.parameters() if p.requires_grad])
    batches = Cycle(loader)
    n, t0 = 0, 0.0
    for i in range(warmup + steps):
        if i == warmup:
            n, t0 = 0, time.perf_counter()
        batch = next(batches)
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(net(batch["image"]), batch["mask"])
        loss.backward()
        optimizer.step()
        n += len(batch["image"])
    return n / (time.perf_counter() - t0)


def time_lightning(cfg, data_info, datamodule, steps: int, warmup: int) -> float:
    import lightning as L

    class Clock(L.Callback):
        def __init__(self) -> None:
            self.t0, self.t1, self.n = 0.0, 0.0, 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == warmup:
                self.t0, self.n = time.perf_counter(), 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step > warmup:
                self.n += len(batch["image"])
                self.t1 = time.perf_counter()

    clock = Clock()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=warmup + steps,
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        deterministic=bool(cfg.trainer.get("deterministic", False)),
        precision=cfg.trainer.get("precision", "32-true"),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
        default_root_dir=str(ROOT / "outputs" / "benchmarks"),
    )
    trainer.fit(new_model(cfg, data_info), datamodule=datamodule)
    return clock.n / (clock.t1 - clock.t0)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    import torch
    from _common import quiet_torch

    quiet_torch(args.threads)
    overrides = [f"data={args.data}", *args.override]
    if args.batch_size:
        overrides.append(f"data.batch_size={args.batch_size}")
    cfg = compose_benchmark(overrides)
    from wbc.fit import build_datamodule

    t = time.perf_counter()
    dm = build_datamodule(cfg.data)
    dm.setup("fit")
    loader = dm.train_dataloader()
    data_info = dm.data_info()
    print(f"data={args.data}: {len(dm.datasets['train'])} train images, batch {dm.batch_size}, net input "
          f"{dm.image_size} px, num_workers={dm.num_workers} (set up in {time.perf_counter() - t:.1f} s)")
    deterministic = bool(cfg.trainer.get("deterministic", False))
    torch.use_deterministic_algorithms(deterministic)  # what the Lightning run's Trainer sets too
    print(f"model: {cfg.model.net.arch} / {cfg.model.net.encoder_name}; torch threads={torch.get_num_threads()}; "
          f"deterministic={deterministic}; {args.warmup} warm-up + {args.steps} timed steps x {args.rounds} rounds")

    bare, light, load = [], [], []
    for r in range(args.rounds):
        load.append(time_loader(loader, args.steps, args.warmup))
        bare.append(time_bare(cfg, data_info, loader, args.steps, args.warmup))
        light.append(time_lightning(cfg, data_info, dm, args.steps, args.warmup))
        torch.use_deterministic_algorithms(deterministic)
        print(f"  round {r + 1}: loader {load[-1]:8.1f} img/s | bare loop {bare[-1]:6.1f} img/s | Lightning {light[-1]:6.1f} img/s")
    res = {"loader_img_s": statistics.median(load), "bare_img_s": statistics.median(bare), "lightning_img_s": statistics.median(light)}
    res["lightning_over_bare"] = res["lightning_img_s"] / res["bare_img_s"]
    res["loader_over_step"] = res["loader_img_s"] / res["lightning_img_s"]
    print(f"\ntraining, bare PyTorch loop : {res['bare_img_s']:8.1f} img/s")
    print(f"training, Lightning        : {res['lightning_img_s']:8.1f} img/s")
    print(f"  Lightning / bare         : {res['lightning_over_bare']:8.3f}   (goal >= 0.95)  {'OK' if res['lightning_over_bare'] >= 0.95 else 'BELOW GOAL'}")
    print(f"train loader alone         : {res['loader_img_s']:8.1f} img/s")
    print(f"  loader / training step   : {res['loader_over_step']:8.2f}   (goal >= 3)     {'OK' if res['loader_over_step'] >= 3 else 'BELOW GOAL'}")
    return res


if __name__ == "__main__":
    main()
