"""Label budget (issue 16): how many annotated cells of a new lab does a classifier need?

A lab whose smears differ from ours annotates a few cells per class and fine-tunes. Each run trains the
4-class recipe (`experiment=cross_cls`: Lite0, 30 epochs, last epoch scored) on at most K images per
class of the target set's fold-0 training part (`data.train_per_class=K`, drawn with the split seed),
either from ImageNet weights or from a model trained on the other source (`init_from=<its run>`),
and scores the target set's fold-0 validation part and its test split (ground-truth crops).

    python benchmarks/cross_dataset.py --variants cells_reinhard          # the source models, if not run yet
    python benchmarks/label_budget.py --direction d2_to_d1 --budgets 5 10 20
    python benchmarks/label_budget.py --collect

The source model is `benchmarks/cross_dataset.py`'s run of the same direction (`--source-variant`,
default cells_reinhard), so the fine-tuning runs use its input settings. Needs ../shared/data (or
WBC_SHARED_DATA) and the `pretrained` extra. Prints macro-F1 and eosinophil recall per budget.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# the sibling benchmark's runs and variants (run as a script, benchmarks/ is on sys.path)
from cross_dataset import DIRECTIONS, VARIANTS, run_dir

ROOT = Path(__file__).resolve().parents[1]

TARGET = {"d1_to_d2": "segmentation_wbc_d2", "d2_to_d1": "segmentation_wbc_d1"}


def out_dir(direction: str, variant: str, budget: int, start: str, seed: int) -> Path:
    return ROOT / "outputs" / "label_budget" / f"{direction}_{variant}_k{budget}_{start}_s{seed}"


def source_preprocess(source: Path) -> list[str]:
    """The source model's input settings as overrides (its checkpoint's data_info), so that both starts
    see the pixels the source model was trained on (the combined data configs use CLAHE, the
    single-set ones do not)."""
    sys.path.insert(0, str(ROOT))
    # the project's checked loader: weights-only, stage and config targets checked
    from lightning_modules.common import load_checkpoint

    info = load_checkpoint(str(source), "classification", key="init_from")["hyper_parameters"]["data_info"]
    return [f"data.preprocess.{k}={'null' if v is None else v}" for k, v in info["preprocess"].items()]


def run(direction: str, variant: str, budget: int, start: str, seed: int) -> None:
    out = out_dir(direction, variant, budget, start, seed)
    if (out / "metrics.json").is_file():
        return
    source = run_dir(direction, variant, "dev", seed) / "checkpoints" / "last.ckpt"
    if not source.is_file():
        raise SystemExit(f"{source}: no source model; run python benchmarks/cross_dataset.py --directions {direction} --variants {variant} --seed {seed}")
    cmd = [sys.executable, "train.py", "experiment=cross_cls", f"data={TARGET[direction]}", f"data.train_per_class={budget}",
           f"seed={seed}", f"hydra.run.dir={out}", "extras.print_config=false", *VARIANTS[variant], *source_preprocess(source)]
    if start == "source":
        cmd.append(f"init_from={source}")
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=False)
    if out.is_dir():
        (out / "seconds.txt").write_text(f"{time.time() - t0:.0f}\n")


def table() -> str:
    lines = ["| train -> target | input | start | cells per class | n train | val macro-F1 | test macro-F1 | test eos. recall | time |",
             "|---|---|---|---|---|---|---|---|---|"]
    runs = sorted((ROOT / "outputs" / "label_budget").glob("*/metrics.json"))
    for m_path in runs:
        d = m_path.parent
        direction, rest = d.name[:8], d.name[9:]
        variant, k, start, seed = rest.rsplit("_", 3)
        m = json.loads(m_path.read_text())
        log = (d / "cross_cls.log").read_text() if (d / "cross_cls.log").is_file() else ""
        kept = log.split("training images kept")[0].rsplit(": ", 1)[-1].split(" of ")[0] if "training images kept" in log else "?"
        secs = (d / "seconds.txt").read_text().strip() if (d / "seconds.txt").is_file() else "?"
        lines.append(f"| {DIRECTIONS[direction]} | {variant} | {'other source' if start == 'source' else 'ImageNet'} | {k[1:]} | {kept} | "
                     f"{m.get('val/macro_f1', float('nan')):.3f} | {m.get('test/macro_f1', float('nan')):.3f} | "
                     f"{m.get('test/recall/eosinophil', float('nan')):.2f} | {secs} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--direction", default="d2_to_d1", choices=list(DIRECTIONS))
    ap.add_argument("--source-variant", default="cells_reinhard", choices=list(VARIANTS))
    ap.add_argument("--budgets", nargs="*", type=int, default=[5, 10, 20])
    ap.add_argument("--starts", nargs="*", default=["source", "imagenet"], choices=["source", "imagenet"])
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--collect", action="store_true", help="only tabulate finished runs")
    args = ap.parse_args(argv)
    if not args.collect:
        for k in args.budgets:
            for start in args.starts:
                run(args.direction, args.source_variant, k, start, args.seed)
    print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
