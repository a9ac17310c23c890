"""GPU check: train each stage for 1-2 epochs with `trainer=gpu` and print img/s and peak GPU memory.

    python benchmarks/gpu_check.py [--epochs 2] [--data synthetic] [--stages segmentation classification]
                                   [--override trainer.precision=32-true ...] [--compose-only]

Each stage goes through the real entry point (`train.train` on the config composed from
conf/train.yaml with `trainer=gpu`; classification with `experiment=classify`), so this checks
that the GPU config (bf16 mixed precision, channels_last, cudnn benchmark) trains end to end.
Printed per stage: training img/s (epochs after the first, which pays for cudnn autotuning; the
only epoch when --epochs 1), the peak GPU memory (`torch.cuda.max_memory_allocated`), the final
validation metric and the wall time of the whole stage (fit + test + scoring).
Without a CUDA GPU it exits with status 2 and says so; `--compose-only` then still checks that
the configs compose and the Trainer builds (on the CPU). Figures, not assertions.

With several visible GPUs (or `--devices N`) it trains with `trainer=ddp` over them: Lightning starts
the other ranks by running this command again (with Hydra's run-dir arguments, which are ignored
here), and only rank zero prints; img/s is then rank zero's share (multiply by N for the node).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

STAGES = {"segmentation": [], "classification": ["experiment=classify"]}
NO_GPU = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=2, help="epochs per stage (1-2 is enough; default 2)")
    p.add_argument("--data", default="synthetic", help="conf/data/<name> (default: the embedded synthetic set)")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    p.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    p.add_argument("--out", default=str(ROOT / "outputs" / "benchmarks" / "gpu_check"), help="run dirs go here")
    p.add_argument("--compose-only", action="store_true", help="only compose the configs and build the Trainer (works on CPU)")
    p.add_argument("--devices", type=int, default=None, help="GPUs to train on (default: all visible; >1 = trainer=ddp)")
    args, rest = p.parse_known_args(argv)
    unknown = [a for a in rest if not a.startswith("hydra.")]  # Lightning's DDP children get hydra.run.dir=...
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def devices(args: argparse.Namespace) -> int:
    import torch

    return args.devices if args.devices is not None else max(1, torch.cuda.device_count())


def compose_stage(stage: str, args: argparse.Namespace, accelerator: str | None = None):
    from _common import compose_train
    from omegaconf import open_dict

    n = devices(args) if accelerator is None else (args.devices or 1)
    overrides = [
        *STAGES[stage],
        *(["trainer=ddp", f"trainer.devices={n}"] if n > 1 else ["trainer=gpu"]),
        f"data={args.data}",
        f"trainer.max_epochs={args.epochs}",
        "trainer.min_epochs=1",
        "logger=csv",
        "callbacks.rich_progress_bar=null",
        "callbacks.early_stopping=null",
        "extras.print_config=false",
        "num_overlays=2",
        *([f"trainer.accelerator={accelerator}", "trainer.precision=32-true"] if accelerator else []),
        *args.override,
    ]
    cfg = compose_train(overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(Path(args.out) / stage)
        del cfg["hydra"]
    return cfg


def throughput_callback():
    import lightning as L
    import torch

    class Throughput(L.Callback):
        """Images and seconds of each training epoch (GPU synchronised at the boundaries)."""

        def __init__(self) -> None:
            self.epochs: list[tuple[int, float]] = []
            self._n, self._t0 = 0, 0.0

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            torch.cuda.synchronize()
            self._n, self._t0 = 0, time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self._n += len(batch["image"])

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            torch.cuda.synchronize()
            self.epochs.append((self._n, time.perf_counter() - self._t0))

        def img_per_s(self) -> float:
            timed = self.epochs[1:] or self.epochs  # the first epoch pays for cudnn autotuning
            n, t = sum(e[0] for e in timed), sum(e[1] for e in timed)
            return n / t if t > 0 else float("nan")

    return Throughput()


def run_stage(stage: str, args: argparse.Namespace) -> dict:
    import torch

    from wbc.cli import train
    from wbc.fit import build_trainer

    cfg = compose_stage(stage, args)
    meter = throughput_callback()
    original = build_trainer

    def with_meter(*a, **kw):  # the stage's own Trainer, plus the meter
        trainer = original(*a, **kw)
        trainer.callbacks.append(meter)
        return trainer

    import wbc.fit

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    wbc.fit.build_trainer = with_meter
    t0 = time.perf_counter()
    try:
        metrics, objects = train.train(cfg)
    finally:
        wbc.fit.build_trainer = original
    wall = time.perf_counter() - t0
    return {
        "stage": stage,
        "img_per_s": meter.img_per_s(),
        "images_per_epoch": meter.epochs[-1][0] if meter.epochs else 0,
        "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
        "precision": cfg.trainer.precision,
        "monitor": cfg.monitor,
        "monitor_value": metrics.get(cfg.monitor),
        "wall_s": wall,
    }


def compose_only(args: argparse.Namespace) -> int:
    """Compose every stage's GPU config and build its Trainer on the CPU (no training)."""
    from wbc.fit import build_trainer

    for stage in args.stages:
        cfg = compose_stage(stage, args, accelerator="cpu")
        trainer = build_trainer(cfg, Path(cfg.paths.output_dir))
        print(f"{stage}: trainer={'ddp' if trainer.world_size > 1 else 'gpu'} composes (channels_last={cfg.trainer.get('channels_last')}, "
              f"benchmark={cfg.trainer.benchmark}, processes={trainer.world_size}); Trainer built on "
              f"{type(trainer.accelerator).__name__} for this check")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.compose_only:
        return compose_only(args)
    if not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False; torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}). Run it on a GPU machine; "
            "`--compose-only` checks the configs on the CPU.",
            file=sys.stderr,
        )
        return NO_GPU
    from wbc.rundir import is_rank_zero

    rows = [run_stage(stage, args) for stage in args.stages]
    if not is_rank_zero():
        return 0
    print(f"GPU: {torch.cuda.get_device_name(0)} x {devices(args)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(f"\n{'stage':<15}{'img/s':>10}{'peak GiB':>10}{'precision':>12}  {'final metric':<28}{'wall s':>8}")
    for r in rows:
        value = "n/a" if r["monitor_value"] is None else f"{r['monitor_value']:.4f}"
        print(f"{r['stage']:<15}{r['img_per_s']:>10.1f}{r['peak_gpu_mem_gib']:>10.2f}{r['precision']:>12}  "
              f"{r['monitor'] + '=' + value:<28}{r['wall_s']:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
