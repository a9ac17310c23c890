"""The appearance check across sources: does it flag another lab's images and leave the training lab's alone?

    python benchmarks/appearance.py                       # segmentation_wbc dataset1 / dataset2 and all_idb2
    python benchmarks/appearance.py --sources synthetic   # any data configs (the embedded set runs offline)

For each source, the profile a training run would record (wbc.appearance.training_appearance on the
data config's training split, thresholded on its validation split, `--coverage`), then the share of
images flagged "unlike the training images", each measured with its ground-truth nucleus mask: the
source's own test split (false alarms), the same test images darker / brighter (an exposure change
x0.8 / x1.2: should not be flagged), each test cell cut out as predict's annotated_dataset cuts it (4
nucleus diameters: a lab's fine-tuning set), the central half of each test image and 4 x 4 mosaics of
them (a camera field of many cells: other framings of the same slides), the test images against a profile
fitted on the training images' cells cut out (a model fine-tuned on a lab's annotated_dataset, used on
the lab's whole images), and every image of each other source (another lab: should be flagged). No model is
trained; the real sets need ../shared/data (or WBC_SHARED_DATA).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SOURCES = ("segmentation_wbc_d1", "segmentation_wbc_d2", "all_idb2")


Pair = tuple[np.ndarray, np.ndarray]


def images(dm, split: str) -> list[Pair]:
    """(RGB, nucleus mask) of a split's images that have a mask."""
    from wbc.appearance import masked_images

    return list(masked_images(dm, dm.split_ids()[split]))


def exposed(pair: Pair, k: float) -> Pair:
    return np.clip(pair[0].astype(np.float32) * k, 0, 255).astype(np.uint8), pair[1]


def centre(pair: Pair) -> Pair:
    h, w = pair[1].shape
    box = (slice(h // 4, h // 4 + h // 2), slice(w // 4, w // 4 + w // 2))
    return pair[0][box], pair[1][box]


def mosaics(pairs: list[Pair], side: int = 4, size: int = 192) -> list[Pair]:
    """Fields of side x side images (each resized to size px), as a camera field shows many cells at once."""
    import cv2

    out = []
    for k in range(0, len(pairs) - side * side + 1, side * side):
        group = [(cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA),
                  cv2.resize(m.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0) for im, m in pairs[k : k + side * side]]
        rows = [(np.hstack([g[0] for g in group[r * side : (r + 1) * side]]), np.hstack([g[1] for g in group[r * side : (r + 1) * side]]))
                for r in range(side)]
        out.append((np.vstack([r[0] for r in rows]), np.vstack([r[1] for r in rows])))
    return out


def cell_cut(pair: Pair, context: float = 4.0) -> Pair:
    """The square of `context` nucleus diameters around the mask's centre (predict's annotated_dataset)."""
    ys, xs = np.nonzero(pair[1])
    if not len(ys):
        return pair
    r = max(4, int(context * np.sqrt(4 * len(ys) / np.pi) / 2))
    cy, cx = int(ys.mean()), int(xs.mean())
    box = (slice(max(0, cy - r), cy + r), slice(max(0, cx - r), cx + r))
    return pair[0][box], pair[1][box]


def main(argv: list[str] | None = None) -> int:
    from wbc.appearance import COVERAGE

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources", nargs="+", default=list(SOURCES), help="data configs (conf/data/<name>.yaml)")
    ap.add_argument("--coverage", type=float, default=COVERAGE, help="train.yaml appearance_coverage (default: wbc.appearance.COVERAGE)")
    args = ap.parse_args(argv)
    from _common import compose_train

    from wbc.appearance import AppearanceProfile, fit_profile, training_appearance
    from wbc.fit import build_datamodule, postprocess_of

    dms, every = {}, {}
    for name in args.sources:
        cfg = compose_train([f"data={name}"])
        dms[name] = build_datamodule(cfg.data, postprocess_of(cfg))
        every[name] = [im for split in ("train", "val", "test") for im in images(dms[name], split)]
    others = [f"{o} ({len(every[o])})" for o in args.sources]
    print(f"| profile of (train images) | threshold | own test | test x0.8 | test x1.2 | test cells cut out | test, central half | test, 4x4 mosaics | "
          "own test by a profile of cut-out cells | "
          f"{' | '.join(others)} | s |")
    print("|---|---|---|---|---|---|---|---|---|" + "---|" * len(others) + "---|")
    for name, dm in dms.items():
        t0 = time.time()
        profile = AppearanceProfile.from_dict(training_appearance(dm, args.coverage))
        seconds = time.time() - t0
        test = images(dm, "test")

        def share(pairs: list[Pair], p: AppearanceProfile = profile) -> str:
            flags = [x for x in (p.unlike(*pair) for pair in pairs) if x is not None]
            return f"{np.mean(flags):.2f}" if flags else "-"

        cells = [share(test), share([exposed(im, 0.8) for im in test]), share([exposed(im, 1.2) for im in test]),
                 share([cell_cut(im) for im in test]), share([centre(im) for im in test])]
        fields = mosaics(test)
        cells.append(f"{share(fields)} ({len(fields)})")
        # a model fine-tuned on the lab's cut-out cells (annotated_dataset): its profile is of cells, its use on whole images
        cut = AppearanceProfile.from_dict(fit_profile({"cells": ([cell_cut(p) for p in images(dm, "train")], [cell_cut(p) for p in images(dm, "val")])},
                                                      args.coverage))
        cells.append(share(test, cut))
        cells += ["(own)" if o == name else share(every[o]) for o in args.sources]
        limits = ", ".join(f"{c.threshold:.2f}" for c in profile.components)
        print(f"| {name} ({profile.images}; {len(profile.components)} source(s)) | {limits} | {' | '.join(cells)} | {seconds:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
