"""Label budget (issue 16): how many annotated cells of a new lab does a classifier need?

A lab whose smears differ from ours annotates a few cells per class and fine-tunes. Each run trains the
4-class recipe (`experiment=cross_cls`: Lite0, 30 epochs, last epoch scored) on at most K images per
class of the target set's fold-0 training part (`data.train_per_class=K`, drawn with the split seed),
either from ImageNet weights or from a model trained on the other source (`init_from=<its run>`),
and scores the target set's fold-0 validation part and its test split (ground-truth crops). Start
`pseudo` needs no annotation: the other source's model, fine-tuned on the K training images per class
it is surest of, labelled with its own calls after AdaBN on the target (`data.pseudo_labels`, from
`cross_dataset.py --adapt-bn`'s predictions on the target's development part); `pseudoens2` is a second
round, labelled by the first round's (`pseudoens`) models of every seed, averaged.

    python benchmarks/cross_dataset.py --variants cells_reinhard          # the source models, if not run yet
    python benchmarks/label_budget.py --direction d2_to_d1 --budgets 5 10 20
    python benchmarks/label_budget.py --direction d2_to_d1 --budgets 10 20 --starts pseudo   # self-training
    python benchmarks/label_budget.py --direction d2_to_d1 --budgets 20 --starts pseudoens   # labels of 3 seeds averaged
    python benchmarks/label_budget.py --direction d2_to_d1 --budgets 40 --starts pseudoens2 --first-budget 20  # second round
    python benchmarks/label_budget.py --collect
    # through the full pipeline: the held-out source's leave-one-dataset-out segmenter as is, and
    # fine-tuned on the same K images per class (from that segmenter, or from ImageNet), each scored
    # with the budget's classifier on the target's test split (evaluate.py segmenter=... classifier=...)
    python benchmarks/label_budget.py --direction d2_to_d1 --budgets 10 --segmenter <quality_seg_lodo_d1 run>

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
# the target set's in-domain segmentation recipe, which the segmenter is fine-tuned with
SEG_EXPERIMENT = {"d1_to_d2": "quality_seg_d2", "d2_to_d1": "quality_seg_d1"}


def out_dir(direction: str, variant: str, budget: int, start: str, seed: int) -> Path:
    return ROOT / "outputs" / "label_budget" / f"{direction}_{variant}_k{budget}_{start}_s{seed}"


def seg_dir(direction: str, budget: int, start: str, seed: int) -> Path:
    return ROOT / "outputs" / "label_budget_seg" / f"{direction}_k{budget}_{start}_s{seed}"


def source_inputs(source: Path, stage: str = "classification") -> list[str]:
    """The source model's input settings as overrides (its checkpoint's data_info), so that both starts
    see the pixels the source model was trained on (the combined data configs use CLAHE, the
    single-set ones do not); a segmenter's input size too (the LODO recipe enlarges dataset1)."""
    # the project's checked loader: weights-only, stage and config targets checked
    from lightning_modules.common import load_checkpoint
    from wbc.rundir import as_overrides

    info = load_checkpoint(str(source), stage, key="init_from")["hyper_parameters"]["data_info"]
    out = as_overrides("data.preprocess", info["preprocess"])
    return out + ([f"data.image_size={info['image_size']}"] if stage == "segmentation" else [])


def timed(cmd: list[str], out: Path) -> None:
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=False)
    if out.is_dir():
        (out / "seconds.txt").write_text(f"{time.time() - t0:.0f}\n")


def reuse_or_claim(out: Path, made_from: Path) -> bool:
    """True when `out` already holds a finished run made from `made_from` (its record, `made_from.txt`);
    one made from another segmenter is refused, never reused under the wrong name nor overwritten.
    Otherwise `out` is claimed for the run about to start (the record written) and False returned."""
    record = out / "made_from.txt"
    if not (out / "metrics.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        record.write_text(f"{made_from.resolve()}\n")
        return False
    if record.is_file() and record.read_text().strip() != str(made_from.resolve()):
        raise SystemExit(f"{out}: finished with {record.read_text().strip()}, not {made_from.resolve()}; "
                         "move that directory away to score this one")
    return True


def own_ids(predictions: list[Path], part: str, dest: Path) -> Path:
    """`predictions` (made on the combined cross-dataset data, ids `<part>/<id>`) with the target set's own
    ids, as its single-set data config names its images; rows of other parts are refused. Several files
    (one per seed) must score the same images: their probabilities are averaged and `pred` re-taken."""
    import csv

    from seed_ensemble import mean_probabilities

    from wbc.evaluation.classification import read_predictions_csv

    tables = [read_predictions_csv(p) for p in predictions]
    classes, rows = tables[0]
    for path, (_, other) in zip(predictions[1:], tables[1:]):
        if [r["sample_id"] for r in other] != [r["sample_id"] for r in rows]:
            raise SystemExit(f"{path}: scored other images than {predictions[0]}; an ensemble needs the same ones")
    if len(tables) > 1:  # the seed ensemble's calls (seed_ensemble.py's averaging)
        _, mean = mean_probabilities(predictions, "an ensemble needs the same images")
        probs = [mean[(r["sample_id"], r["cell"])][1] for r in rows]
        rows = [{**r, **{f"p_{c}": f"{v:.5f}" for c, v in zip(classes, p)}, "pred": classes[int(p.argmax())]} for r, p in zip(rows, probs)]
    others = sorted({r["sample_id"] for r in rows if not r["sample_id"].startswith(part + "/")})
    if others:
        raise SystemExit(f"{predictions[0]}: {len(others)} rows are not of {part} (e.g. {others[:3]})")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, list(rows[0]) if rows else ["sample_id", "pred", *(f"p_{c}" for c in classes)])
        writer.writeheader()
        writer.writerows({**r, "sample_id": r["sample_id"].removeprefix(part + "/")} for r in rows)
    return dest


def relabel(direction: str, variant: str, budget: int, seed: int) -> Path:
    """A first-round self-trained model's (`pseudoens`, K = `budget`) calls on the target's whole development
    part, for a second round. No AdaBN: its batch-norm statistics already come from the target's images."""
    trained = out_dir(direction, variant, budget, "pseudoens", seed)
    ckpt, out = trained / "checkpoints" / "last.ckpt", trained / "relabel"
    if not ckpt.is_file():
        raise SystemExit(f"{ckpt}: no first-round model; run python benchmarks/label_budget.py --direction {direction} "
                         f"--budgets {budget} --starts pseudoens --seed {seed}")
    if not (out / "test_predictions.csv").is_file():
        timed([sys.executable, "train.py", "experiment=cross_cls", f"data=cross_cls_{direction}", "data.holdout_split=dev",
               f"seed={seed}", f"hydra.run.dir={out}", "extras.print_config=false", *VARIANTS[variant], *source_inputs(ckpt),
               "train=false", f"ckpt_path={ckpt}"], out)
    return out / "test_predictions.csv"


def resolved(start: str, budget: int, first_budget: int | None) -> str:
    """`start` as its runs are named: a second round (`pseudoens2`) names the first round's K its labels come from."""
    return f"pseudoens2from{budget if first_budget is None else first_budget}" if start == "pseudoens2" else start


def run(direction: str, variant: str, budget: int, start: str, seed: int, pseudo_seeds: tuple[int, ...] = (42, 43, 44),
        first_budget: int | None = None) -> None:
    start = resolved(start, budget, first_budget)
    out = out_dir(direction, variant, budget, start, seed)
    if (out / "metrics.json").is_file():
        return
    source = run_dir(direction, variant, "dev", seed) / "checkpoints" / "last.ckpt"
    if not source.is_file():
        raise SystemExit(f"{source}: no source model; run python benchmarks/cross_dataset.py --directions {direction} --variants {variant} --seed {seed}")
    labels = f"data.train_per_class={budget}"
    if start in ("pseudo", "pseudoens"):  # the source model's own calls after AdaBN on the target's images: no annotation
        seeds = pseudo_seeds if start == "pseudoens" else (seed,)  # pseudoens: the calls of several seeds' models averaged
        calls = [run_dir(direction, variant, "dev", s, "adabn") / "test_predictions.csv" for s in seeds]
        for path, s in zip(calls, seeds):
            if not path.is_file():
                raise SystemExit(f"{path}: no AdaBN predictions; run python benchmarks/cross_dataset.py --directions {direction} "
                                 f"--variants {variant} --seed {s} --adapt-bn")
    elif start.startswith("pseudoens2from"):  # second round: the first round's models' calls, averaged over seeds
        calls = [relabel(direction, variant, int(start.removeprefix("pseudoens2from")), s) for s in pseudo_seeds]
    if start.startswith("pseudo"):
        labels = f"data.pseudo_labels={{file:'{own_ids(calls, TARGET[direction], out / 'pseudo_source.csv')}',per_class:{budget}}}"
    cmd = [sys.executable, "train.py", "experiment=cross_cls", f"data={TARGET[direction]}", labels,
           f"seed={seed}", f"hydra.run.dir={out}", "extras.print_config=false", *VARIANTS[variant], *source_inputs(source)]
    if start == "source" or start.startswith("pseudo"):
        cmd.append(f"init_from={source}")
    timed(cmd, out)


def run_segmenter(direction: str, budget: int, start: str, seed: int, segmenter: Path, epochs: int) -> Path:
    """The held-out source's LODO segmenter fine-tuned on the K images per class the classifier got
    (`data.train_per_class` draws the same images: same split seed), or the same recipe from ImageNet."""
    from wbc.rundir import resolve_checkpoint, run_config

    out = seg_dir(direction, budget, start, seed)
    ckpt = resolve_checkpoint(segmenter, "segmentation", key="--segmenter")
    if reuse_or_claim(out, ckpt):
        return out
    crop = (run_config(segmenter).get("data") or {}).get("train_crop")
    cmd = [sys.executable, "train.py", f"experiment={SEG_EXPERIMENT[direction]}", f"data.train_per_class={budget}",
           f"data.train_crop={'null' if crop is None else crop}", f"trainer.max_epochs={epochs}", f"seed={seed}",
           f"hydra.run.dir={out}", "extras.print_config=false", *source_inputs(ckpt, "segmentation")]
    if start == "source":
        cmd.append(f"init_from={segmenter}")
    timed(cmd, out)
    return out


def run_pipeline(direction: str, classifier: Path, segmenter: Path, tag: str) -> None:
    """The classifier with a segmenter, end to end on the target's test split; `tag` names the segmenter."""
    out = classifier / f"pipeline_{tag}"
    if not (classifier / "metrics.json").is_file() or reuse_or_claim(out, segmenter):
        return
    timed([sys.executable, "evaluate.py", f"segmenter={segmenter}", f"classifier={classifier}", f"data=cross_cls_{direction}",
           "data.holdout_split=test", "num_overlays=0", "extras.print_config=false", f"hydra.run.dir={out}"], out)


def pseudo_right(run: Path, budget: int) -> str:
    """The share of a self-training run's chosen pseudo-labels that are right (its pseudo_source.csv keeps the
    true labels beside the calls; the candidates are the development images outside its validation part)."""
    from wbc.data.pseudo_labels import select_pseudo_labels
    from wbc.evaluation.classification import read_predictions_csv

    if not (run / "pseudo_source.csv").is_file() or not (run / "val_predictions.csv").is_file():
        return ""
    classes, rows = read_predictions_csv(run / "pseudo_source.csv")
    val = {r["sample_id"] for r in read_predictions_csv(run / "val_predictions.csv")[1]}
    true = {r["sample_id"]: r["true"] for r in rows}
    chosen = select_pseudo_labels(rows, [sid for sid in true if sid not in val], classes, budget)
    return f"{sum(true[sid] == c for sid, c in chosen.items()) / max(1, len(chosen)):.2f}"


def table() -> str:
    lines = ["| train -> target | input | start | cells per class | seed | n train | pseudo-labels right | val macro-F1 | test macro-F1 | "
             "test eos. recall | time |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    runs = sorted((ROOT / "outputs" / "label_budget").glob("*/metrics.json"))
    for m_path in runs:
        d = m_path.parent
        direction, rest = d.name[:8], d.name[9:]
        variant, k, start, seed = rest.rsplit("_", 3)
        m = json.loads(m_path.read_text())
        log = (d / "cross_cls.log").read_text() if (d / "cross_cls.log").is_file() else ""
        kept = log.split("training images kept")[0].rsplit(": ", 1)[-1].split(" of ")[0] if "training images kept" in log else "?"
        secs = (d / "seconds.txt").read_text().strip() if (d / "seconds.txt").is_file() else "?"
        lines.append(f"| {DIRECTIONS[direction]} | {variant} | {start_name(start)} | {k[1:]} | {seed[1:]} | {kept} | {pseudo_right(d, int(k[1:]))} | "
                     f"{m.get('val/macro_f1', float('nan')):.3f} | {m.get('test/macro_f1', float('nan')):.3f} | "
                     f"{m.get('test/recall/eosinophil', float('nan')):.2f} | {secs} s |")
    return "\n".join(lines)


START_NAMES = {"source": "other source", "imagenet": "ImageNet", "pseudo": "other source, its own labels (none annotated)",
               "pseudoens": "other source, labels of its seed ensemble (none annotated)",
               "pseudoens2": "other source, labels of the first round's seed ensemble (none annotated)"}


def start_name(start: str) -> str:
    if start.startswith("pseudoens2from"):
        return f"other source, second round: labels of the first round's (K = {start.removeprefix('pseudoens2from')}) seed ensemble"
    return START_NAMES[start]


SEGMENTERS = {"lodo": "the other sources' (LODO), as is", "finetuned": "fine-tuned on the same cells"}


def pipeline_table() -> str:
    """Each budget's classifier through the full pipeline on the target's test split."""
    lines = ["| train -> target | classifier start | cells per class | seed | segmenter | Dice | detection recall | "
             "cell macro-F1 | matched macro-F1 | GT-crop macro-F1 | time |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m_path in sorted((ROOT / "outputs" / "label_budget").glob("*/pipeline_*/metrics.json")):
        d, run = m_path.parent, m_path.parent.parent
        direction, (_, k, start, seed) = run.name[:8], run.name[9:].rsplit("_", 3)
        m = json.loads(m_path.read_text())
        secs = (d / "seconds.txt").read_text().strip() if (d / "seconds.txt").is_file() else "?"
        tag = d.name.removeprefix("pipeline_")
        seg = SEGMENTERS.get(tag, tag) + (" (from ImageNet)" if tag == "finetuned" and start == "imagenet" else "")
        lines.append(f"| {DIRECTIONS[direction]} | {start_name(start)} | {k[1:]} | {seed[1:]} | {seg} | "
                     + " | ".join(f"{m.get(key, float('nan')):.3f}" for key in (
                         "pipeline/nucleus_dice", "pipeline/detection_recall", "pipeline/cell_macro_f1", "pipeline/macro_f1",
                         "classification/test/macro_f1")) + f" | {secs} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--direction", default="d2_to_d1", choices=list(DIRECTIONS))
    ap.add_argument("--source-variant", default="cells_reinhard", choices=list(VARIANTS))
    ap.add_argument("--budgets", nargs="*", type=int, default=[5, 10, 20])
    ap.add_argument("--starts", nargs="*", default=["source", "imagenet"], choices=list(START_NAMES))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--pseudo-seeds", nargs="*", type=int, default=[42, 43, 44],
                    help="start pseudoens: the source seeds whose AdaBN calls are averaged into the labels")
    ap.add_argument("--first-budget", type=int, help="start pseudoens2: the K of the first-round (pseudoens) models whose "
                    "calls on the target's development part are averaged into the labels (default: the same K)")
    ap.add_argument("--segmenter", type=Path, help="the target's leave-one-dataset-out segmenter run (quality_seg_lodo_<target>): "
                    "also score each budget through the full pipeline, with it as is and fine-tuned on the same cells "
                    "(self-training starts: as is only, no masks are annotated)")
    ap.add_argument("--seg-epochs", type=int, default=20, help="the segmenter's fine-tuning schedule (fixed, last epoch scored)")
    ap.add_argument("--collect", action="store_true", help="only tabulate finished runs")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))  # the project's packages (wbc, lightning_modules) for the checked loaders
    if not args.collect:
        for k in args.budgets:
            for start in args.starts:
                run(args.direction, args.source_variant, k, start, args.seed, tuple(args.pseudo_seeds), args.first_budget)
                if args.segmenter is not None:
                    classifier = out_dir(args.direction, args.source_variant, k, resolved(start, k, args.first_budget), args.seed)
                    run_pipeline(args.direction, classifier, args.segmenter, "lodo")
                    if start.startswith("pseudo"):  # no annotated masks either: the segmenter stays as shipped
                        continue
                    tuned = run_segmenter(args.direction, k, start, args.seed, args.segmenter, args.seg_epochs)
                    if (tuned / "metrics.json").is_file():
                        run_pipeline(args.direction, classifier, tuned, "finetuned")
    print(table())
    print()
    print(pipeline_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
