"""Cross-dataset classification (issue 16): train on one segmentation_wbc set, test on the other.

    python benchmarks/cross_dataset.py                          # dev split of the held-out set (decide levers)
    python benchmarks/cross_dataset.py --split test --variants cells_wb   # the chosen lever on the test split
    python benchmarks/cross_dataset.py --collect                # table from finished runs

dataset1: 300 cells in ~120 px images on yellowish backgrounds (nucleus ~45 px across); dataset2:
100 fields of 300 px on white/pink (nucleus ~108 px): a different lab, camera and magnification.
Each run is `train.py experiment=cross_cls data=cross_cls_<direction>` (fold 0 of the training set,
seed 42, the in-domain 4-class recipe), scored on ground-truth crops of the held-out set: its
training images with `--split dev` (nothing of it is trained on, and its test split stays unseen
while levers are chosen), its persisted test split with `--split test`. Variants:
- pixels:   the in-domain recipe's fixed 128 px ROI (data.crops.size=128)
- cells:    the ROI in cell units, 2.7 nucleus diameters (data.crops.diameters=2.7: the whole cell
            and a margin on both sets)
- cells_wb: cells + background white balance (data.preprocess.white_balance=true)
- cells_grey: cells, grey + CLAHE input (no colour at all)
- cells_wb_hed: cells_wb + Macenko stain-intensity augmentation (albumentations.HEStain)
- cells_reinhard: cells, colour kept but normalised (data.preprocess.stain_norm=reinhard)
- cells_grey_robust: cells_grey + the optics preset (conf/augment/robust.yaml: defocus blur, JPEG
            re-encoding, scale jitter; its Macenko stain entry needs colour and is dropped)
- cells_grey_masked: cells_grey with everything outside the nucleus zeroed (data.crops.masked=true)
- cells_grey_lite1: cells_grey on the larger EfficientNet-Lite1 (offline ImageNet weights)
- cells_reinhard_robust: cells_reinhard + the optics preset with its Macenko stain-intensity entry
            (colour kept: normalised, then jittered around the target, blurred, re-encoded, rescaled)
- cells_reinhard_greymix: cells_reinhard with half the training crops shown grey (albumentations.ToGray)
- cells_reinhard_lpft: cells_reinhard, the head trained alone for 10 of the 30 epochs, then everything (LP-FT)
- cells_reinhard_lp: cells_reinhard, the head alone for the whole schedule (ImageNet features frozen)
- cells_reinhard_mixstyle: cells_reinhard with MixStyle on the backbone's first three stages
            (conf/callbacks/mixstyle.yaml: feature means and spreads blended between crops while training)
- cells_reinhard_randconv: cells_reinhard with RandConv (conf/callbacks/randconv.yaml: training crops blended
            with a random convolution of themselves)
- cells_reinhard_randconv1: the same on every training batch (p 1.0: still blended, a U(0, 1) share of the crop kept)
With `--adapt-bn` each finished run is also tested with its batch-norm statistics re-estimated on the
held-out images (`callbacks=[default,adapt_bn]`, AdaBN: same weights, no labels read), into
`<run>_adabn`; the table shows both. `--collect --ensemble-seeds 42 43 44` also scores those seeds'
finished runs as one ensemble (their held-out probabilities averaged), `--collect --ensemble-variants A B`
the runs of those variants (of `--seed`, or of every ensemble seed) as one model; `--collect --prior-em` re-scores each
finished run's held-out probabilities for the held-out set's own class frequencies, estimated without labels
by EM (Saerens et al. 2002: the training prior taken as the mean of the run's own validation probabilities;
no training, seconds). `--entropy N` adds N passes of Tent's entropy minimisation over
the batch-norm scales and shifts after AdaBN (`callbacks.adapt_bn.entropy_epochs=N`), into `<run>_tent<N>`.
Needs ../shared/data (or WBC_SHARED_DATA) and the `pretrained` extra. Prints macro-F1, balanced
accuracy and per-class recall on the held-out set next to the training set's own validation figure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIRECTIONS = {"d1_to_d2": "dataset1 -> dataset2", "d2_to_d1": "dataset2 -> dataset1"}
VARIANTS = {
    "pixels": ["data.crops.size=128"],
    "cells": ["data.crops.diameters=2.7"],
    "cells_wb": ["data.crops.diameters=2.7", "data.preprocess.white_balance=true"],
    # colour taken away: grey + CLAHE (the source study's input), cell-unit crops
    "cells_grey": ["data.crops.diameters=2.7", "data.preprocess.grayscale=true", "data.preprocess.clahe=true"],
    # stain jitter of the right kind: each crop's own stain vectors (Macenko) with perturbed intensities
    "cells_wb_hed": ["data.crops.diameters=2.7", "data.preprocess.white_balance=true",
                     "+data.crops.transforms.hed={_target_:albumentations.HEStain,method:macenko,"
                     "intensity_scale_range:[0.6,1.4],intensity_shift_range:[-0.2,0.2],p:0.8}"],
    "cells_reinhard": ["data.crops.diameters=2.7", "data.preprocess.stain_norm=reinhard"],
    "cells_grey_robust": ["data.crops.diameters=2.7", "data.preprocess.grayscale=true", "data.preprocess.clahe=true",
                          "augment@data.crops.transforms=robust", "~data.crops.transforms.stain"],
    # shape only: everything outside the nucleus zeroed (background, cytoplasm and stain cast gone)
    "cells_grey_masked": ["data.crops.diameters=2.7", "data.preprocess.grayscale=true", "data.preprocess.clahe=true",
                          "data.crops.masked=true"],
    # the larger ImageNet backbone (offline Lite1 wheel) on the best input so far
    "cells_grey_lite1": ["data.crops.diameters=2.7", "data.preprocess.grayscale=true", "data.preprocess.clahe=true",
                         "model.net.name=tf_efficientnet_lite1"],
    # the best colour input with AdaBN (Reinhard) plus the optics preset, stain entry kept
    "cells_reinhard_robust": ["data.crops.diameters=2.7", "data.preprocess.stain_norm=reinhard",
                              "augment@data.crops.transforms=robust"],
    # the best colour input with AdaBN, half the training crops shown grey (conf/augment/grey_mix.yaml's entry)
    "cells_reinhard_greymix": ["data.crops.diameters=2.7", "data.preprocess.stain_norm=reinhard",
                               "+data.crops.transforms.grey={_target_:albumentations.ToGray,num_output_channels:3,p:0.5}"],
    # the best colour input with AdaBN, the head trained alone first so the ImageNet features are less
    # distorted (LP-FT, conf/callbacks/head_first.yaml; spelled inline so --adapt-bn's callbacks= still composes)
    "cells_reinhard_lpft": ["data.crops.diameters=2.7", "data.preprocess.stain_norm=reinhard",
                            "+callbacks.head_first={_target_:lightning_modules.callbacks.HeadFirst,epochs:10}"],
    # ... and the head alone for the whole schedule (a linear probe on the frozen ImageNet features)
    "cells_reinhard_lp": ["data.crops.diameters=2.7", "data.preprocess.stain_norm=reinhard",
                          "+callbacks.head_first={_target_:lightning_modules.callbacks.HeadFirst,epochs:1000}"],
    # the best colour input with AdaBN, feature statistics mixed between crops while training (MixStyle;
    # conf/callbacks/mixstyle.yaml's defaults, spelled inline so --adapt-bn's callbacks= still composes)
    "cells_reinhard_mixstyle": ["data.crops.diameters=2.7", "data.preprocess.stain_norm=reinhard",
                                "+callbacks.mixstyle={_target_:lightning_modules.callbacks.MixStyle,p:0.5,alpha:0.1}"],
    # ... training crops blended with a random convolution of themselves (RandConv, conf/callbacks/randconv.yaml)
    "cells_reinhard_randconv": ["data.crops.diameters=2.7", "data.preprocess.stain_norm=reinhard",
                                "+callbacks.randconv={_target_:lightning_modules.callbacks.RandomConvolution,p:0.5}"],
    "cells_reinhard_randconv1": ["data.crops.diameters=2.7", "data.preprocess.stain_norm=reinhard",
                                 "+callbacks.randconv={_target_:lightning_modules.callbacks.RandomConvolution,p:1.0}"],
    # the best colour input with AdaBN, everything outside the nucleus zeroed (the grey masked row's lever in colour)
    "cells_reinhard_masked": ["data.crops.diameters=2.7", "data.preprocess.stain_norm=reinhard", "data.crops.masked=true"],
    # ... and with a tighter crop (2.0 nucleus diameters: less cytoplasm and background, the nucleus larger)
    "cells_reinhard_d2": ["data.crops.diameters=2.0", "data.preprocess.stain_norm=reinhard"],
}
CLASSES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil")


def run_dir(direction: str, variant: str, split: str, seed: int, adapted: str = "") -> Path:
    """The run's dir; `adapted` ("adabn", "tent1", ...) names a re-test of its weights with adaptation."""
    return ROOT / "outputs" / "cross_dataset" / f"{direction}_{variant}_{split}_s{seed}{'_' + adapted if adapted else ''}"


def adapted_name(entropy: int) -> str:
    return f"tent{entropy}" if entropy else "adabn"


def run(direction: str, variant: str, split: str, seed: int, extra: list[str]) -> float:
    out = run_dir(direction, variant, split, seed)
    if (out / "metrics.json").is_file():
        return float("nan")
    cmd = [sys.executable, "train.py", "experiment=cross_cls", f"data=cross_cls_{direction}", f"data.holdout_split={split}",
           f"seed={seed}", f"hydra.run.dir={out}", "extras.print_config=false", *VARIANTS[variant], *extra]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=False)
    seconds = time.time() - t0
    if out.is_dir():
        (out / "seconds.txt").write_text(f"{seconds:.0f}\n")
    return seconds


def adapt(direction: str, variant: str, split: str, seed: int, extra: list[str], entropy: int = 0) -> None:
    """Test a finished run's last checkpoint again, its batch-norm statistics taken from the held-out
    images (and with `entropy`, that many Tent passes over its batch-norm scales and shifts)."""
    trained, out = run_dir(direction, variant, split, seed), run_dir(direction, variant, split, seed, adapted_name(entropy))
    if (out / "metrics.json").is_file() or not (trained / "checkpoints" / "last.ckpt").is_file():
        return
    cmd = [sys.executable, "train.py", "experiment=cross_cls", f"data=cross_cls_{direction}", f"data.holdout_split={split}",
           f"seed={seed}", f"hydra.run.dir={out}", "extras.print_config=false", *VARIANTS[variant], *extra,
           "train=false", f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}", "callbacks=[default,adapt_bn]",
           f"callbacks.adapt_bn.entropy_epochs={entropy}"]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=False)
    if out.is_dir():
        (out / "seconds.txt").write_text(f"{time.time() - t0:.0f}\n")


def row(direction: str, variant: str, split: str, seed: int, adapted: str = "") -> str | None:
    out = run_dir(direction, variant, split, seed, adapted)
    if not (out / "metrics.json").is_file():
        return None
    m = json.loads((out / "metrics.json").read_text())
    secs = (out / "seconds.txt").read_text().strip() if (out / "seconds.txt").is_file() else "?"
    recalls = " / ".join(f"{m.get(f'test/recall/{c}', float('nan')):.2f}" for c in CLASSES)
    trained = run_dir(direction, variant, split, seed) / "metrics.json"  # an AdaBN row: its weights' own validation
    val = m.get("val/macro_f1", json.loads(trained.read_text()).get("val/macro_f1") if trained.is_file() else None)
    name = {"": variant, "adabn": f"{variant} + AdaBN"}.get(adapted, f"{variant} + AdaBN + Tent x{adapted.removeprefix('tent')}")
    return (f"| {DIRECTIONS[direction]} | {name} | {split} | {m.get('test/macro_f1', float('nan')):.3f} | "
            f"{m.get('test/balanced_accuracy', float('nan')):.3f} | {recalls} | {val if val is None else f'{val:.3f}'} | "
            f"{m.get('test/ece', float('nan')):.3f} | {secs} s |")


def ensemble_row(direction: str, variants: list[str], split: str, seeds: list[int], adapted: str = "") -> str | None:
    """The runs of several training seeds and/or variants as one model: their held-out crops' class
    probabilities (test_predictions.csv) averaged (seed_ensemble.py's averaging), then scored; None while a
    member is not run."""
    from bench_stats import macro_f1
    from seed_ensemble import average
    from sklearn.metrics import balanced_accuracy_score, recall_score

    files = [run_dir(direction, v, split, seed, adapted) / "test_predictions.csv" for v in variants for seed in seeds]
    if not all(f.is_file() for f in files):
        return None
    _, true, pred = average(files, f"{direction} {' + '.join(variants)} {adapted}: the members' runs must score the same crops to be averaged")
    recalls = " / ".join(f"{r:.2f}" for r in recall_score(true, pred, labels=list(CLASSES), average=None, zero_division=0))
    name = f"{' + '.join(variants)}{' + AdaBN' if adapted == 'adabn' else ''}, ensemble of seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
    return (f"| {DIRECTIONS[direction]} | {name} | {split} | {macro_f1(true, pred, list(CLASSES)):.3f} | "
            f"{balanced_accuracy_score(true, pred):.3f} | {recalls} | | | |")


def prior_em(probs, source_prior, iters: int = 200):
    """Posteriors re-weighted for the class frequencies of the images they were scored on, the
    frequencies estimated by EM from those posteriors alone (Saerens, Latinne & Decaestecker 2002)."""
    import numpy as np

    prior = source_prior.copy()
    for _ in range(iters):
        q = probs * (prior / source_prior)
        q /= q.sum(1, keepdims=True)
        new = q.mean(0)
        done = np.abs(new - prior).max() < 1e-6
        prior = new
        if done:
            break
    q = probs * (prior / source_prior)
    return q / q.sum(1, keepdims=True), prior


def prior_em_row(direction: str, variant: str, split: str, seed: int, adapted: str = "") -> str | None:
    """A finished run's held-out macro-F1 after EM class-prior adaptation (`prior_em`)."""
    from bench_stats import macro_f1

    from wbc.evaluation.classification import prediction_arrays, read_predictions_csv

    held, own = run_dir(direction, variant, split, seed, adapted) / "test_predictions.csv", run_dir(direction, variant, split, seed) / "val_predictions.csv"
    if not (held.is_file() and own.is_file()):
        return None
    (classes, rows), (_, val) = read_predictions_csv(held), read_predictions_csv(own)
    probs, true = prediction_arrays(rows, classes)
    source = prediction_arrays(val, classes)[0].mean(0)
    adjusted, prior = prior_em(probs, source)
    f1 = [macro_f1(true, p.argmax(1), range(len(classes))) for p in (probs, adjusted)]
    name = f"{variant}{' + AdaBN' if adapted == 'adabn' else ''} + EM class priors (estimated {' / '.join(f'{v:.2f}' for v in prior)})"
    return f"| {DIRECTIONS[direction]} | {name} | {split} | {f1[1]:.3f} (without: {f1[0]:.3f}) | | | | | |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--directions", nargs="*", default=list(DIRECTIONS), choices=list(DIRECTIONS))
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--split", default="dev", choices=["dev", "test"])
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--extra", nargs="*", default=[], help="extra Hydra overrides for every run")
    ap.add_argument("--adapt-bn", action="store_true", help="also test each finished run with AdaBN on the held-out images")
    ap.add_argument("--entropy", type=int, default=0, metavar="N",
                    help="with --adapt-bn: also N passes of Tent's entropy minimisation (into <run>_tent<N>)")
    ap.add_argument("--collect", action="store_true", help="only tabulate finished runs")
    ap.add_argument("--prior-em", action="store_true", help="also each run re-scored for the held-out class frequencies (EM, no labels)")
    ap.add_argument("--ensemble-seeds", nargs="*", type=int, default=[], metavar="SEED",
                    help="also score the finished runs of these seeds as one ensemble (probabilities averaged)")
    ap.add_argument("--ensemble-variants", nargs="*", default=[], choices=list(VARIANTS), metavar="VARIANT",
                    help="also score the finished runs of these variants (of --seed, or of every --ensemble-seeds) as one model")
    args = ap.parse_args(argv)
    if not args.collect:
        for d in args.directions:
            for v in args.variants:
                run(d, v, args.split, args.seed, args.extra)
                if args.adapt_bn:
                    adapt(d, v, args.split, args.seed, args.extra)
                    if args.entropy:
                        adapt(d, v, args.split, args.seed, args.extra, args.entropy)
    print("\n| train -> test | variant | held-out split | macro-F1 | balanced acc. | recall neu / lym / mon / eos | in-domain val macro-F1 | ECE | time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d in args.directions:
        for v in args.variants:
            done = sorted(p.name.rsplit("_", 1)[1] for p in run_dir(d, v, args.split, args.seed).parent.glob(
                f"{run_dir(d, v, args.split, args.seed).name}_tent*"))
            for adapted in ("", "adabn", *done):
                line = row(d, v, args.split, args.seed, adapted)
                if line:
                    print(line)
            for adapted in ("", "adabn") if args.prior_em else ():
                line = prior_em_row(d, v, args.split, args.seed, adapted)
                if line:
                    print(line)
            for adapted in ("", "adabn") if len(args.ensemble_seeds) > 1 else ():
                line = ensemble_row(d, [v], args.split, args.ensemble_seeds, adapted)
                if line:
                    print(line)
        for adapted in ("", "adabn") if len(args.ensemble_variants) > 1 else ():
            line = ensemble_row(d, args.ensemble_variants, args.split, args.ensemble_seeds or [args.seed], adapted)
            if line:
                print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
