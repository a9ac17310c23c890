"""How many cells a lab must label before `compare.py` can tell two models apart on its images.

Each pair (reference, candidate) is two predict.py runs on a new source's images, scored on every annotated
cell (here the test split's ground truth stands in for the lab's eye: one point per image at the nucleus
centroid of its mask, with the image's class). Then it draws what a lab would label, N cells at random or
K per class, many times, and runs compare.py's paired test (wbc.evaluation.annotated.paired) on each draw.
Printed per pair and size: how often the verdict is "better", "worse" or "cannot tell", and how often a
decisive verdict has the sign of the difference on all cells. No training; seconds.

    python benchmarks/annotated_check.py --annotations <points.csv> \\
        --pair <name>=<reference predict dir>,<candidate predict dir> [--pair ...] [--cells 10,20,40] [--per-class 3,5,10]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from wbc.evaluation.annotated import compare, paired


def draw(truth: np.ndarray, rng: np.random.Generator, n: int | None, per_class: int | None) -> np.ndarray:
    """Indices of one lab's labelled cells: n at random, or per_class of each class (all of a smaller class)."""
    if n is not None:
        return rng.choice(len(truth), size=min(n, len(truth)), replace=False)
    return np.concatenate([rng.choice(ix, size=min(per_class, len(ix)), replace=False)
                           for ix in (np.flatnonzero(truth == c) for c in np.unique(truth))])


def simulate(truth: np.ndarray, ref: np.ndarray, cand: np.ndarray, sizes: list[tuple[str, int | None, int | None]], args) -> dict:
    """For each size: the verdicts' shares over args.draws labs, and the sign agreement of decisive ones."""
    full = paired(list(truth), list(ref), list(cand), args.metric, args.bootstrap, args.confidence, 0)
    out = {"all_cells": len(truth), "full": full, "sizes": {}}
    sign = np.sign(full["difference"])
    for name, n, per_class in sizes:
        rng = np.random.default_rng(args.seed)
        verdicts, cells = Counter(), []
        for d in range(args.draws):
            ix = draw(truth, rng, n, per_class)
            cells.append(len(ix))
            a = paired(list(truth[ix]), list(ref[ix]), list(cand[ix]), args.metric, args.bootstrap, args.confidence, d)
            verdicts[a["verdict"]] += 1
        decisive = verdicts["better"] + verdicts["worse"]
        right = verdicts["better"] if sign > 0 else verdicts["worse"] if sign < 0 else 0
        out["sizes"][name] = {"cells": float(np.mean(cells)), **{v: verdicts[v] / args.draws for v in ("better", "worse", "cannot tell")},
                              "decisive_right_sign": right / decisive if decisive else None}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--annotations", required=True, help="points CSV (image, x, y, label) of every annotated cell")
    p.add_argument("--pair", action="append", required=True, help="<name>=<reference predict dir>,<candidate predict dir>")
    p.add_argument("--cells", default="10,20,40", help="lab sizes: N cells drawn at random (comma list; '' = none)")
    p.add_argument("--per-class", default="3,5,10", help="lab sizes: K cells of each class (comma list; '' = none)")
    p.add_argument("--metric", default="macro_f1")
    p.add_argument("--draws", type=int, default=300, help="simulated labs per size")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write every figure here")
    args = p.parse_args(argv)
    sizes = [(f"{n} random", int(n), None) for n in filter(None, args.cells.split(","))]
    sizes += [(f"{k} per class", None, int(k)) for k in filter(None, args.per_class.split(","))]
    results = {}
    print(f"| pair | all cells: {args.metric} ref -> candidate, difference [{args.confidence:.0%}] | lab size (cells) | better | worse | "
          "cannot tell | decisive with the right sign |")
    print("|---|---|---|---|---|---|---|")
    for spec in args.pair:
        name, _, dirs = spec.partition("=")
        ref_dir, cand_dir = dirs.split(",")
        report = compare([ref_dir, cand_dir], args.annotations, args.metric, args.bootstrap, args.confidence, args.seed)
        truth = np.array([c["label"] for c in report["calls"]])
        ref, cand = (np.array([c[f"model{i}"] for c in report["calls"]]) for i in (0, 1))
        r = results[name] = simulate(truth, ref, cand, sizes, args)
        f = r["full"]
        head = (f"{report['models'][0][args.metric]:.3f} -> {report['models'][1][args.metric]:.3f}, "
                f"{f['difference']:+.3f} [{f['low']:+.3f}, {f['high']:+.3f}] ({f['verdict']}, {r['all_cells']} cells)")
        for size, s in r["sizes"].items():
            agree = "—" if s["decisive_right_sign"] is None else f"{s['decisive_right_sign']:.0%}"
            print(f"| {name} | {head} | {size} ({s['cells']:.0f}) | {s['better']:.0%} | {s['worse']:.0%} | {s['cannot tell']:.0%} | {agree} |")
            head = ""
        sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
