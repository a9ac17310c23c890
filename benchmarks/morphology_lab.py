"""A lab's own labelled cells and the nucleus-morphology model (issue 16): with K labels a class, is the
morphology model worth refitting on them (`fit_morphology.py` on predict.py's annotated_dataset), or the
source's model worth keeping, beside the classifier fine-tuned on the same labels?

    python benchmarks/morphology_lab.py                # decide: the held-out source's dev cells the lab did not label
    python benchmarks/morphology_lab.py --split test   # report: its test cells (after the choice)

The lab runs of `outputs/lab_labels/<set>_k<K>_s<seed>` (benchmarks/label_budget.py's product path: predict
with annotations -> annotated_dataset -> fine-tuned classifier), the LODO RGB + grey segmenter pair of
"Both inputs as one segmenter", the source's morphology model of outputs/morphology_unopened/<direction>.json
(`morphology_cross.py`: the outlines as drawn, as fit_morphology.py measures them; `--source-models
outputs/morphology_closed` for the models fitted through the 5x5 opening, the first table in the README). For each classifier seed the lab's morphology model is
fitted by `fit_morphology.py` on that run's annotated_dataset (all its labelled cells: fit_on=train+val) into
outputs/morphology_lab_unopened/ (`--out`). Each image's cell is the predicted cell over its true nucleus (as evaluate.py's
pipeline finds it, one cell an image); an image with none is a wrong call. Rows: macro-F1 (over the classes
the cells hold: on dev, the lab may have labelled every cell of a class) of the fine-tuned
classifier alone, averaged with the source's / the lab's morphology model, the lab's model alone, and
averaged with one model fitted on the source's and the lab's cells together (pooled).
Needs ../shared/data (or WBC_SHARED_DATA) and those runs.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
# held-out set -> (direction its classifier came from, labels a class, LODO segmenter pair)
LABS = {"d1": ("d2_to_d1", 20, ["outputs/lodo_seg/d1_s42", "outputs/lodo_seg/d1_grey_s42"]),
        "d2": ("d1_to_d2", 10, ["outputs/lodo_seg/d2_s42", "outputs/lodo_seg/d2_grey_s42"])}
SEEDS = (42, 43, 44)
OUT = ROOT / "outputs" / "morphology_lab_unopened"  # outputs/morphology_lab: the lab models of the first table (opened outlines)


def labelled_images(lab_run: Path) -> set[str]:
    """Stems of the images the lab labelled (annotated_dataset's group column = the source image)."""
    with (lab_run / "predict" / "annotated_dataset" / "labels.csv").open(newline="") as f:
        return {r["group"] for r in csv.DictReader(f)}


def lab_data(lab_run: Path, classes: list[str], crops: dict) -> list[str]:
    """The fit_morphology.py overrides of the lab run's annotated_dataset (all its cells, found with the
    classifier's crop settings `crops`, as predict.py's printed command has them)."""
    from wbc.rundir import as_overrides

    ds = lab_run / "predict" / "annotated_dataset"
    return ["data=folder", "data.layout=csv", f"data.root={ds}", f"data.splits.file={ds / 'splits.json'}",
            f"data.classes=[{','.join(classes)}]", *as_overrides("data.crops", crops), "fit_on=train+val"]


def fit_lab_model(overrides: list[str], out: Path) -> Path:
    """fit_morphology.py with `overrides` (lab_data) into `out`; the model file."""
    model = out / "morphology.json"
    if not model.is_file():
        cmd = [sys.executable, str(ROOT / "fit_morphology.py"), *overrides, f"hydra.run.dir={out}"]
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return model


def pooled_model(direction: str, overrides: list[str], classes: list[str]):
    """One model fitted on the source's fold-0 training cells (as outputs/morphology_unopened's) and the lab's
    labelled cells together, measured alike (fit_morphology.measure_cells, the default outline closing)."""
    from _common import compose_train
    from morphology_cross import datamodule

    from wbc.cli.fit_morphology import measure_cells
    from wbc.fit import build_datamodule, postprocess_of
    from wbc.morphology import OUTLINE_CLOSING, MorphologyClassifier

    src = datamodule(direction, "dev", ["postprocess.opening_kernel=0"])  # as fit_morphology.py measures
    x_src, y_src, _ = measure_cells(src, src.split_ids()["train"], OUTLINE_CLOSING)
    lab_cfg = compose_train(overrides, "fit_morphology.yaml")
    lab = build_datamodule(lab_cfg.data, postprocess_of(lab_cfg))
    ids = lab.split_ids()
    x_lab, y_lab, _ = measure_cells(lab, ids["train"] + ids["val"], OUTLINE_CLOSING)
    assert list(lab.load_manifest().classes) == classes == list(src.load_manifest().classes)
    return MorphologyClassifier.fit(np.concatenate([x_src, x_lab]), np.concatenate([y_src, y_lab]), classes, outline_closing=OUTLINE_CLOSING)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labs", nargs="*", default=list(LABS), choices=list(LABS))
    ap.add_argument("--split", default="dev", choices=["dev", "test"])
    ap.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    ap.add_argument("--out", type=Path, default=OUT, help="where the lab's fitted models go (an existing one is reused)")
    ap.add_argument("--source-models", type=Path, default=ROOT / "outputs" / "morphology_unopened", help="the source's <direction>.json models")
    args = ap.parse_args(argv)
    from morphology_cross import datamodule
    from sklearn.metrics import f1_score

    from wbc.data.manifest import NUCLEUS, load_sample
    from wbc.ensemble import load_models
    from wbc.inference import CellPipeline
    from wbc.morphology import MorphologyClassifier

    print("| held out | cells | seed | fine-tuned classifier | + source's morphology | + lab's morphology | lab's morphology alone | "
          "+ pooled (source + lab cells) | time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for lab in args.labs:
        direction, k, segmenter = LABS[lab]
        dm = datamodule(direction, args.split)
        m = dm.load_manifest()
        by_id, classes = m.by_id(), list(m.classes)
        source_model = MorphologyClassifier.load(args.source_models / f"{direction}.json")
        seg = load_models([str(ROOT / r) for r in segmenter], "segmentation", "segmenter", "cpu")
        images = {sid: load_sample(by_id[sid], dm.encoding_of(sid)) for sid in dm.split_ids()["test"]}
        figures: dict[str, list[float]] = {}
        for seed in args.seeds:
            t0 = time.time()
            lab_run = ROOT / "outputs" / "lab_labels" / f"{lab}_k{k}_s{seed}"
            clf = load_models(str(lab_run / "finetuned"), "classification", "classifier", "cpu")
            pipe = CellPipeline(seg, clf)
            overrides = lab_data(lab_run, classes, pipe.crop_spec.to_dict())
            lab_model = MorphologyClassifier.load(fit_lab_model(overrides, args.out / f"{lab}_k{k}_s{seed}"))
            pooled = pooled_model(direction, overrides, classes)
            skip = labelled_images(lab_run) if args.split == "dev" else set()
            # the lab's copies were named <folder>_<id> (segmentation_wbc_d1/dataset1/7 -> dataset1_7)
            ids = [sid for sid in images if sid.split("/", 1)[1].replace("/", "_") not in skip]
            p = {name: np.full((len(ids), len(classes)), 1.0 / len(classes)) for name in ("cnn", "source", "lab", "pooled")}
            y = np.array([classes.index(by_id[sid].class_name) for sid in ids])
            for i, sid in enumerate(ids):
                rgb, labels = images[sid]
                res = pipe(rgb)
                overlap = [int((res.labels[labels == NUCLEUS] == inst.label).sum()) for inst in res.instances]
                if not any(overlap):
                    continue  # missed: a uniform row, a wrong call unless by chance
                j = int(np.argmax(overlap))
                p["cnn"][i] = res.class_probs[j]
                for name, model in (("source", source_model), ("lab", lab_model), ("pooled", pooled)):
                    q = model.cell_probabilities(rgb, res.labels, [res.instances[j]], pipe.classes)[0]
                    if np.isfinite(q).all():
                        p[name][i] = q
            rows = {"cnn": p["cnn"], "+source": (p["cnn"] + p["source"]) / 2, "+lab": (p["cnn"] + p["lab"]) / 2, "lab": p["lab"],
                    "+pooled": (p["cnn"] + p["pooled"]) / 2}
            present = sorted(set(y.tolist()))  # a class the lab labelled every cell of has none left to score
            f1 = {name: f1_score(y, q.argmax(1), labels=present, average="macro", zero_division=0) for name, q in rows.items()}
            for name, v in f1.items():
                figures.setdefault(name, []).append(v)
            print(f"| {lab} ({args.split}{', not labelled' if skip else ''}) | {len(ids)} | {seed} | {f1['cnn']:.3f} | {f1['+source']:.3f} | "
                  f"{f1['+lab']:.3f} | {f1['lab']:.3f} | {f1['+pooled']:.3f} | {time.time() - t0:.0f} s |", flush=True)
        if len(args.seeds) > 1:
            mean = {name: statistics.mean(v) for name, v in figures.items()}
            higher = {name: sum(a > b for a, b in zip(figures[name], figures["cnn"])) for name in ("+source", "+lab", "+pooled")}
            print(f"| {lab} mean | | | {mean['cnn']:.3f} | {mean['+source']:.3f} ({higher['+source']} of {len(args.seeds)} higher) | "
                  f"{mean['+lab']:.3f} ({higher['+lab']} of {len(args.seeds)} higher) | {mean['lab']:.3f} | "
                  f"{mean['+pooled']:.3f} ({higher['+pooled']} of {len(args.seeds)} higher) | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
