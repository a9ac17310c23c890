"""Cross-dataset classification by nucleus morphology (issue 16): the cell-type cues that do not
depend on a lab's stain or magnification (`wbc/morphology.py`), against and beside the CNN.

    python benchmarks/morphology_cross.py                   # dev split of the held-out set (decide)
    python benchmarks/morphology_cross.py --split test      # the held-out test split (report)
    python benchmarks/morphology_cross.py --masks predicted # measured on the cells a LODO segmenter finds

The same cells as `benchmarks/cross_dataset.py`: `data=cross_cls_<direction>`, trained on fold 0's
training images of one segmentation_wbc source, scored on the ground-truth nuclei of the other
source's dev split (its training images) or test split; the training source's own fold-0 validation
is the in-domain figure (the CNN's without AdaBN, as in domain). The morphology model (class-balanced logistic regression, milliseconds to
fit) is written to outputs/morphology_unopened/<direction>.json, the cells found as fit_morphology.py finds
them (its postprocess.opening_kernel=0: outlines as drawn; `--override` changes it; outputs/morphology_closed
holds the models fitted through the 5x5 opening, outputs/morphology the first version, before the outline
regularisation and the measuring window). Beside it, the CNN runs of `cross_dataset.py
--variants cells_reinhard --adapt-bn --seed 42/43/44` (dev) and their `_on_test` re-tests, read
from outputs/cross_dataset when present: each seed alone, the three seeds averaged, and each
averaged with the morphology model's probabilities (equal weights).
With `--masks predicted` the model is fitted and scored on the nuclei a segmenter finds instead (the
LODO segmenter pair of outputs/lab_mixedseg, or `--segmenter DIRECTION=RUN[,RUN]`; on the training
source's images too, so training and use see masks of one kind), written to
outputs/morphology_unopened/<direction>_predicted.json for `evaluate.py ... morphology=`; no CNN rows then.
Needs ../shared/data (or WBC_SHARED_DATA).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DIRECTIONS = {"d1_to_d2": "dataset1 -> dataset2", "d2_to_d1": "dataset2 -> dataset1"}
CNN_SEEDS = (42, 43, 44)
# --masks predicted: the LODO segmenters of outputs/lab_mixedseg (RGB + grey + CLAHE, seed 42), trained on
# every source but the held-out one; override with --segmenter DIRECTION=RUN[,RUN]
SEGMENTERS = {"d1_to_d2": ["outputs/lodo_seg/d2_s42", "outputs/lodo_seg/d2_grey_s42"],
              "d2_to_d1": ["outputs/lodo_seg/d1_s42", "outputs/lodo_seg/d1_grey_s42"]}


def datamodule(direction: str, split: str, overrides: list[str] | None = None):
    """The cross-dataset data config's datamodule (splits and manifest only; nothing is decoded), finding
    cells with the composed `postprocess` node as train.py and fit_morphology.py do; `overrides`: more
    Hydra overrides (e.g. postprocess.opening_kernel=0)."""
    from _common import compose_train

    from wbc.fit import build_datamodule, postprocess_of

    cfg = compose_train(["experiment=cross_cls", f"data=cross_cls_{direction}", f"data.holdout_split={split}", *(overrides or [])])
    return build_datamodule(cfg.data, postprocess_of(cfg))


def features(dm, ids: list[str], pipe=None, closing: float = 0.0) -> tuple[np.ndarray, np.ndarray, int]:
    """(feature rows, class indices, cells missed) of each image's ground-truth cell, found and measured
    as fit_morphology.py does, or with `pipe` (a wbc.inference.CellPipeline) of the predicted cell that
    overlaps the true nucleus most, as predict.py finds and measures it; an image where no predicted cell
    touches the nucleus is missed. `closing`: the outline regularisation (wbc.morphology.regularise_outline)."""
    from wbc.cli.fit_morphology import measure_cells
    from wbc.data.manifest import NUCLEUS, load_sample
    from wbc.morphology import cell_features

    if pipe is None:
        x, y, unmeasured = measure_cells(dm, ids, closing)
        return x, y, len(unmeasured)
    m = dm.load_manifest()
    by_id, index = m.by_id(), {c: i for i, c in enumerate(m.classes)}
    x, y, missed = [], [], 0
    for sid in ids:
        rgb, labels = load_sample(by_id[sid], dm.encoding_of(sid))
        truth = labels == NUCLEUS
        res = pipe(rgb)
        overlap = [int((res.labels[truth] == inst.label).sum()) for inst in res.instances]
        f = cell_features(rgb, res.labels, [res.instances[int(np.argmax(overlap))]], closing)[0] if any(overlap) else None
        if f is None:
            missed += 1
            continue
        x.append(f)
        y.append(index[by_id[sid].class_name])
    return np.array(x), np.array(y), missed


def cnn_probabilities(direction: str, split: str, seed: int, ids: list[str], classes: list[str], which: str = "test") -> np.ndarray | None:
    """A cells_reinhard + AdaBN run's held-out (`which="test"`) or own fold-0 validation (`"val"`, not
    adapted) probabilities in `ids` order, or None if not run."""
    name = f"{direction}_cells_reinhard_dev_s{seed}" + ("_adabn" + ("_on_test" if split == "test" else "") if which == "test" else "")
    path = ROOT / "outputs" / "cross_dataset" / name / f"{which}_predictions.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        rows = {r["sample_id"]: [float(r[f"p_{c}"]) for c in classes] for r in csv.DictReader(f)}
    if set(rows) != set(ids):
        print(f"{path}: scores other cells than this split's {len(ids)}; left out", file=sys.stderr)
        return None
    return np.array([rows[i] for i in ids])


def scores(y: np.ndarray, p: np.ndarray, n_classes: int) -> tuple[float, float, list[float]]:
    from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score

    pred = p.argmax(1)
    labels = list(range(n_classes))
    return (f1_score(y, pred, labels=labels, average="macro", zero_division=0), balanced_accuracy_score(y, pred),
            list(recall_score(y, pred, labels=labels, average=None, zero_division=0)))


def in_domain(y: np.ndarray, p: np.ndarray | None) -> str:
    """The in-domain macro-F1 cell of a row ("" when the run's validation predictions are missing)."""
    return "" if p is None else f"{scores(y, p, p.shape[1])[0]:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--directions", nargs="*", default=list(DIRECTIONS), choices=list(DIRECTIONS))
    ap.add_argument("--split", default="dev", choices=["dev", "test"])
    ap.add_argument("--c", type=float, default=1.0, help="inverse regularisation strength of the logistic regression")
    ap.add_argument("--masks", default="truth", choices=["truth", "predicted"],
                    help="measure the ground-truth nuclei, or the cells a LODO segmenter finds (fit and score alike)")
    ap.add_argument("--segmenter", nargs="*", default=[], metavar="DIRECTION=RUN[,RUN]", help="the segmenter of --masks predicted")
    ap.add_argument("--outline-closing", type=float, default=None, metavar="D",
                    help="fill holes and close each nucleus outline at D equivalent diameters before measuring "
                         "(0 = as segmented; default wbc.morphology.OUTLINE_CLOSING); recorded in the model file")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "morphology_unopened", help="where the fitted models are written")
    ap.add_argument("--override", nargs="*", default=["postprocess.opening_kernel=0"], metavar="KEY=VALUE",
                    help="Hydra overrides of the data config that finds the cells (e.g. postprocess.opening_kernel=0)")
    args = ap.parse_args(argv)
    segmenters = {**SEGMENTERS, **{k: v.split(",") for k, v in (a.split("=", 1) for a in args.segmenter)}}
    from wbc.morphology import OUTLINE_CLOSING, MorphologyClassifier

    closing = OUTLINE_CLOSING if args.outline_closing is None else args.outline_closing

    out_dir = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    print("| train -> test | model | held-out split | macro-F1 | balanced acc. | recall neu / lym / mon / eos | in-domain val macro-F1 | time |")
    print("|---|---|---|---|---|---|---|---|")
    for direction in args.directions:
        t0 = time.time()
        dm = datamodule(direction, args.split, args.override)
        ids = dm.split_ids()
        classes = list(dm.load_manifest().classes)
        pipe = None
        if args.masks == "predicted":
            from wbc.ensemble import load_models
            from wbc.inference import CellPipeline

            # the data config's cell finding (single-cell sets: every nucleus piece of an image is one cell), as
            # evaluate.py's pipeline with this direction's classifier has it; a segmenter alone would split lobes
            seg = load_models([str(ROOT / r) for r in segmenters[direction]], "segmentation", "segmenter", "cpu")
            pipe = CellPipeline(seg, None, crop_spec=dm.crop_spec)
        x_train, y_train, _ = features(dm, ids["train"], pipe, closing)
        x_val, y_val, _ = features(dm, ids["val"], pipe, closing)
        x_test, y_test, missed = features(dm, ids["test"], pipe, closing)
        model = MorphologyClassifier.fit(x_train, y_train, classes, c=args.c, outline_closing=closing)
        model.save(out_dir / f"{direction}{'_predicted' if pipe else ''}.json")
        seconds = time.time() - t0
        val_f1 = scores(y_val, model.predict_proba(x_val), len(classes))[0]
        p_morph = model.predict_proba(x_test)

        def line(name: str, p: np.ndarray, val: str = "", secs: str = "", where: str = DIRECTIONS[direction], y=y_test) -> None:
            f1, bacc, rec = scores(y, p, p.shape[1])
            print(f"| {where} | {name} | {args.split} | {f1:.3f} | {bacc:.3f} | {' / '.join(f'{r:.2f}' for r in rec)} | {val} | {secs} |")

        if pipe is not None:
            line(f"nucleus morphology on the cells {' + '.join(segmenters[direction])} finds ({missed} of {len(ids['test'])} missed)",
                 p_morph, f"{val_f1:.3f}", f"{seconds:.0f} s")
            continue
        line("nucleus morphology (logistic regression)", p_morph, f"{val_f1:.3f}", f"{seconds:.0f} s")
        cnn = {s: cnn_probabilities(direction, args.split, s, ids["test"], classes) for s in CNN_SEEDS}
        cnn = {s: p for s, p in cnn.items() if p is not None}
        p_morph_val = model.predict_proba(x_val)
        fused = []
        for s, p in cnn.items():
            own = cnn_probabilities(direction, args.split, s, ids["val"], classes, "val")
            line(f"CNN cells_reinhard + AdaBN, seed {s}", p, in_domain(y_val, own))
            line(f"CNN seed {s} + morphology (probabilities averaged)", (p + p_morph) / 2,
                 in_domain(y_val, None if own is None else (own + p_morph_val) / 2))
            fused.append(scores(y_test, (p + p_morph) / 2, len(classes))[0])
        if len(cnn) > 1:
            mean_cnn = np.mean(list(cnn.values()), 0)
            line(f"CNN seeds {', '.join(map(str, cnn))} averaged", mean_cnn)
            line(f"CNN seeds {', '.join(map(str, cnn))} averaged + morphology", (mean_cnn + p_morph) / 2)
            print(f"| {DIRECTIONS[direction]} | CNN + morphology, mean over single seeds | {args.split} | "
                  f"{statistics.mean(fused):.3f} ± {statistics.stdev(fused):.3f} | | | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
