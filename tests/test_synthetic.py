"""Tests for the embedded synthetic blood-smear generator (wbc/data/synthetic.py)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.measure import regionprops

from wbc.data.synthetic import (
    CLASS_NAMES,
    DEFAULT_CLASS_RATIOS,
    MASK_VALUES,
    SyntheticSpec,
    class_counts,
    ensure_synthetic,
    generate,
    main,
    render_image,
)

SMALL = SyntheticSpec(n_images=24, image_size=128, seed=5, images_per_slide=4)
OPEN_5x5 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("syn") / "small", SMALL)


def _read_rows(root: Path) -> list[dict[str, str]]:
    with open(root / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def _read(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _touches_border(region: np.ndarray) -> bool:
    return bool(region[0].any() or region[-1].any() or region[:, 0].any() or region[:, -1].any())


def _instance_stats(mask: np.ndarray, inst: np.ndarray) -> list[tuple[float, float, float | None]]:
    """(area, solidity, nucleus fraction of its cell or None) per nucleus not cut by the border."""
    out = []
    n_cc, cc = cv2.connectedComponents((mask > 0).astype(np.uint8))
    for i in range(1, int(inst.max()) + 1):
        nuc = inst == i
        if not nuc.any() or _touches_border(nuc):
            continue
        solidity = regionprops(nuc.astype(np.uint8))[0].solidity
        region = cc == np.bincount(cc[nuc]).argmax()
        ids = np.unique(inst[region])
        alone = len(ids[ids > 0]) == 1 and not _touches_border(region)
        out.append((float(nuc.sum()), float(solidity), float(nuc.sum() / region.sum()) if alone else None))
    return out


def test_class_counts_follow_ratios() -> None:
    counts = class_counts(300)
    assert list(counts) == list(DEFAULT_CLASS_RATIOS) and sum(counts.values()) == 300
    total = sum(DEFAULT_CLASS_RATIOS.values())
    for c, n in counts.items():
        assert abs(n - 300 * DEFAULT_CLASS_RATIOS[c] / total) <= 1
    for n in (6, 7, 12, 25, 1000):
        small = class_counts(n)
        assert sum(small.values()) == n and min(small.values()) >= 2
    assert class_counts(10, {"lymphoblast": 1, "neutrophil": 1}) == {"lymphoblast": 5, "neutrophil": 5}


def test_render_is_deterministic_and_independent_of_n_images() -> None:
    spec = SyntheticSpec(n_images=12, image_size=96, seed=3)
    a = render_image(spec, 7, "neutrophil")
    b = render_image(spec, 7, "neutrophil")
    bigger = render_image(SyntheticSpec(n_images=20, image_size=96, seed=3), 7, "neutrophil")
    other = render_image(SyntheticSpec(n_images=12, image_size=96, seed=4), 7, "neutrophil")
    for x, y, z in zip(a, b, bigger):
        assert x.tobytes() == y.tobytes() == z.tobytes()
    assert not np.array_equal(a[0], other[0])
    rgb, mask, inst = a
    assert rgb.shape == (96, 96, 3) and rgb.dtype == np.uint8
    assert mask.shape == (96, 96) and mask.dtype == np.uint8 and inst.dtype == np.uint16


def test_masks_and_instances_are_consistent(small_dataset: Path) -> None:
    for row in _read_rows(small_dataset):
        mask, inst = _read(small_dataset / row["mask"]), _read(small_dataset / row["instances"])
        assert mask.dtype == np.uint8 and inst.dtype == np.uint16
        assert set(np.unique(mask)) <= set(MASK_VALUES.values())
        assert np.array_equal(inst > 0, mask == MASK_VALUES["nucleus"])
        n = int(inst.max())
        assert n >= 1 and set(np.unique(inst)) == set(range(n + 1))  # ids 1..n, no gaps
        assert (mask == MASK_VALUES["cytoplasm"]).any()


def test_generated_layout_and_counts(small_dataset: Path) -> None:
    rows = _read_rows(small_dataset)
    with open(small_dataset / "labels.csv", newline="") as f:
        assert next(csv.reader(f)) == ["image", "mask", "instances", "class_name", "group"]
    assert [r["image"] for r in rows] == [f"images/img_{i:04d}.png" for i in range(SMALL.n_images)]
    assert Counter(r["class_name"] for r in rows) == class_counts(SMALL.n_images)
    slides = Counter(r["group"] for r in rows)
    assert len(slides) == 6 and set(slides.values()) == {4}
    assert sum(len({r["class_name"] for r in rows if r["group"] == g}) > 1 for g in slides) >= 3
    meta = json.loads((small_dataset / "synthetic_meta.json").read_text())
    assert meta["generator_version"] == 1 and meta["spec"]["n_images"] == 24 and meta["counts"] == class_counts(24)
    row = rows[3]
    rgb, mask, inst = render_image(SMALL, 3, row["class_name"])
    assert np.array_equal(cv2.cvtColor(_read(small_dataset / row["image"]), cv2.COLOR_BGR2RGB), rgb)
    assert np.array_equal(_read(small_dataset / row["mask"]), mask)
    assert np.array_equal(_read(small_dataset / row["instances"]), inst)


def test_some_clumps_with_touching_nuclei_and_some_border_cells(small_dataset: Path) -> None:
    touching = border = 0
    for row in _read_rows(small_dataset):
        inst = _read(small_dataset / row["instances"])
        border += _touches_border(inst > 0)
        for i in range(1, int(inst.max()) + 1):
            grown = cv2.dilate((inst == i).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            if (grown & (inst > 0) & (inst != i)).any():
                touching += 1
                break
    assert touching >= 2 and border >= 2


def test_nucleus_morphology_differs_between_classes() -> None:
    spec = SyntheticSpec(seed=11, clump_prob=0.0, border_prob=0.0)
    stats = {c: [s for i in range(15) for s in _instance_stats(*render_image(spec, i, c)[1:])] for c in CLASS_NAMES}
    area = {c: np.mean([s[0] for s in v]) for c, v in stats.items()}
    solidity = {c: np.mean([s[1] for s in v]) for c, v in stats.items()}
    fraction = {c: np.mean([s[2] for s in v if s[2] is not None]) for c, v in stats.items()}
    assert fraction["lymphoblast"] >= 0.8
    assert fraction["neutrophil"] < 0.6 and fraction["promyelocyte"] < 0.65
    assert solidity["neutrophil"] < solidity["lymphoblast"] - 0.08
    assert area["promyelocyte"] > 1.1 * area["lymphoblast"] > 1.1 * area["neutrophil"]


def test_neutrophil_nucleus_survives_5x5_opening() -> None:
    spec = SyntheticSpec(seed=2)  # default clump/border probabilities, 256 px
    checked = 0
    for i in range(30):
        _, _, inst = render_image(spec, i, "neutrophil")
        for label in range(1, int(inst.max()) + 1):
            nuc = (inst == label).astype(np.uint8)
            if _touches_border(nuc):
                continue
            opened = cv2.morphologyEx(nuc, cv2.MORPH_OPEN, OPEN_5x5)
            assert cv2.connectedComponents(opened)[0] - 1 == 1, f"image {i} instance {label} split by opening"
            checked += 1
    assert checked >= 25


def test_ensure_synthetic_reuses_and_regenerates(tmp_path: Path) -> None:
    spec = SyntheticSpec(n_images=8, image_size=64, seed=1, images_per_slide=4)
    out = ensure_synthetic(tmp_path / "syn", spec)
    labels = out / "labels.csv"
    stamp = (labels.stat().st_mtime_ns, (out / "images/img_0000.png").stat().st_mtime_ns)
    assert ensure_synthetic(out, spec) == out
    assert (labels.stat().st_mtime_ns, (out / "images/img_0000.png").stat().st_mtime_ns) == stamp
    changed = SyntheticSpec(n_images=10, image_size=64, seed=1, images_per_slide=4)
    ensure_synthetic(out, changed)
    assert len(_read_rows(out)) == 10
    assert json.loads((out / "synthetic_meta.json").read_text())["spec"]["n_images"] == 10
    (out / "images/img_0003.png").unlink()  # incomplete dataset -> regenerated
    ensure_synthetic(out, changed)
    assert (out / "images/img_0003.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]  # no temporary folders left behind
    with pytest.raises(FileExistsError):
        generate(out, changed)  # existing synthetic dataset needs overwrite=True


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    foreign = tmp_path / "real_data"
    foreign.mkdir()
    (foreign / "precious.png").write_bytes(b"x")
    spec = SyntheticSpec(n_images=6, image_size=64)
    with pytest.raises(FileExistsError, match="real_data"):
        ensure_synthetic(foreign, spec)
    with pytest.raises(FileExistsError, match="real_data"):
        generate(foreign, spec, overwrite=True)
    assert [p.name for p in foreign.iterdir()] == ["precious.png"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (ensure_synthetic(empty, spec) / "labels.csv").is_file()


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--n-images", "6", "--image-size", "64", "--seed", "2"]) == 0
    text = capsys.readouterr().out
    assert str(out) in text and "lymphoblast=" in text
    assert len(_read_rows(out)) == 6
    assert main(["--out", str(out), "--n-images", "7", "--image-size", "64"]) == 1  # would replace without --overwrite
    assert main(["--out", str(out), "--n-images", "7", "--image-size", "64", "--overwrite"]) == 0
    assert len(_read_rows(out)) == 7
