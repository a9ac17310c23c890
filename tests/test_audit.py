"""The dataset audit (wbc.audit, `python audit.py`): a tiny dataset with planted faults, all found; a
clean one, nothing found; label issues from a fake CV sweep; the entry point through Hydra's compose."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers_data import add_uncalibrated_columns, grey_mask, truncate, write_image, write_labels
from wbc.audit.core import audit_samples
from wbc.audit.duplicates import clusters, leakage
from wbc.audit.labels import label_issues
from wbc.audit.report import to_markdown
from wbc.audit.scan import mask_checks
from wbc.data.manifest import MaskEncoding, read_manifest

COLUMNS = ("image", "mask", "class_name", "group")
CLEAN = [f"c{i}" for i in range(8)]


def varied(seed: int, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """A cell at a random place on a random smooth texture: every seed looks different to pHash."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3)).astype(np.uint8), (0, 0), 3).astype(np.float32)
    img = (img - img.mean()) * 3 + 180
    cy, cx = (int(v) for v in rng.integers(14, size - 14, 2))
    yy, xx = np.mgrid[:size, :size]
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    labels = np.zeros((size, size), np.uint8)
    labels[d2 <= 11**2] = 1
    labels[d2 <= 5**2] = 2
    img[labels == 2] *= 0.45
    return img.clip(0, 255).astype(np.uint8), labels


def add(root: Path, rows: list, sid: str, img: np.ndarray, labels: np.ndarray, cls: str, ext: str = ".png") -> None:
    write_image(root / "images" / f"{sid}{ext}", img)
    write_image(root / "masks" / f"{sid}.png", grey_mask(labels))
    rows.append({"image": f"images/{sid}{ext}", "mask": f"masks/{sid}.png", "class_name": cls, "group": ""})


def clean_set(root: Path) -> list:
    rows: list = []
    for i, sid in enumerate(CLEAN):
        add(root, rows, sid, *varied(i), "a" if i % 2 else "b")
    return rows


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """Eight distinct cells plus: an exact copy of c0 (re-saved as BMP, labelled differently), c1 blurred and re-encoded as
    JPEG, a truncated image, an empty mask, a mask of the wrong size; a split that puts both copies of
    c0 and c1 on two sides of the test split."""
    root = tmp_path / "planted"
    rows = clean_set(root)
    add(root, rows, "dup", varied(0)[0], varied(0)[1], "a", ext=".bmp")  # c0 is b: a label conflict too
    img, labels = varied(1)
    ok, buf = cv2.imencode(".jpg", cv2.GaussianBlur(img, (0, 0), 0.7)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    (root / "images" / "near.jpg").write_bytes(buf.tobytes())
    write_image(root / "masks" / "near.png", grey_mask(labels))
    rows.append({"image": "images/near.jpg", "mask": "masks/near.png", "class_name": "a", "group": ""})
    add(root, rows, "bad", *varied(20), "a")
    truncate(root / "images" / "bad.png")
    add(root, rows, "empty", varied(21)[0], np.zeros((48, 48), np.uint8), "b")
    add(root, rows, "small", *varied(22), "a")
    write_image(root / "masks" / "small.png", grey_mask(varied(22, size=40)[1]))
    write_labels(root, rows, COLUMNS)
    ids = [Path(r["image"]).with_suffix("").as_posix() for r in rows]
    test = ["images/c0", "images/c1", "images/c2"]
    rest = [i for i in ids if i not in test]
    folds = [{"train": rest[::2], "val": rest[1::2]}, {"train": rest[1::2], "val": rest[::2]}]
    (root / "split.json").write_text(json.dumps({"test": test, "folds": folds}))
    return root


def run_audit(root: Path, split: dict | None = None, **kw) -> dict:
    m = read_manifest(root, "csv")
    return audit_samples(m.samples, m.classes, MaskEncoding(), splits=split, fold=0, **kw)


def test_planted_faults_are_all_found(planted: Path) -> None:
    report = run_audit(planted, json.loads((planted / "split.json").read_text()))
    kinds = {p["id"]: p["kind"] for p in report["problems"]}
    assert kinds == {"images/bad": "truncated", "images/small": "size_mismatch"}, report["problems"]
    assert report["masks"]["empty_nucleus"] == ["images/empty"]
    d = report["duplicates"]
    assert [g["ids"] for g in d["exact_groups"]] == [["images/c0", "images/dup"]]
    near = {(p["a"], p["b"]): p for p in d["near_pairs"]}
    assert set(near) == {("images/c1", "images/near")}, d["near_pairs"]
    pair = near["images/c1", "images/near"]
    assert pair["distance"] <= 6 and pair["confirmed"] and pair["match"] >= 0.98
    leaks = {(p["a"], p["b"]): p for p in report["leakage"]["pairs"]}
    assert set(leaks) == {("images/c0", "images/dup"), ("images/c1", "images/near")}
    assert all("test vs train/val" in p["where"] for p in leaks.values())
    assert leaks["images/c0", "images/dup"]["sides"][0] == "test" and not leaks["images/c0", "images/dup"]["same_class"]
    f = report["findings"]
    assert (f["bad_files"], f["exact_duplicate_groups"], f["near_duplicate_pairs"], f["leaking_pairs_test"], f["empty_nucleus"]) == (2, 1, 1, 2, 1)
    assert f["duplicate_label_conflicts"] == 1
    assert report["images"]["modes"] == {"PNG RGB 8-bit": 11, "BMP RGB 8-bit": 1, "JPEG RGB 8-bit": 1}
    md = to_markdown(report)
    assert "images/dup" in md and "truncated" in md and "test vs train/val" in md
    json.dumps(report)  # JSON-ready


def test_a_clean_set_reports_nothing(tmp_path: Path) -> None:
    root = tmp_path / "clean"
    write_labels(root, clean_set(root), COLUMNS)
    test, rest = ["images/c0", "images/c1"], [f"images/{c}" for c in CLEAN[2:]]
    report = run_audit(root, {"test": test, "folds": [{"train": rest[:3], "val": rest[3:]}, {"train": rest[3:], "val": rest[:3]}]})
    f = report["findings"]
    assert report["problems"] == [] and report["duplicates"]["near_pairs"] == [] and report["duplicates"]["exact_groups"] == []
    assert {k: v for k, v in f.items() if v} == {}, f
    assert report["counts"]["per_class"] == {"a": 4, "b": 4} and report["counts"]["imbalance_ratio"] == 1.0
    assert set(report["masks"]["values"]) == {"0", "128", "255"}
    assert 0 < report["masks"]["share_per_class"]["a"]["nucleus_mean"] < report["masks"]["share_per_class"]["a"]["cytoplasm_mean"]


def test_unreadable_and_missing_files_are_listed_not_raised(tmp_path: Path) -> None:
    root = tmp_path / "broken"
    rows = clean_set(root)
    (root / "images" / "c3.png").write_text("not an image")
    (root / "masks" / "c4.png").write_bytes(b"")
    write_labels(root, rows, COLUMNS)
    kinds = {(p["id"], p["kind"]) for p in run_audit(root)["problems"]}
    assert kinds == {("images/c3", "unreadable"), ("images/c4", "empty")}


def test_modes_come_from_the_file_header(tmp_path: Path) -> None:
    """8/16-bit, grey/RGB/RGBA/palette as stored, not as decoded (read_rgb makes them all 8-bit RGB)."""
    from PIL import Image

    from wbc.audit.scan import describe, header_info

    write_image(tmp_path / "g16.png", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 10)
    write_image(tmp_path / "rgba.png", np.zeros((8, 8, 4), np.uint8))
    write_image(tmp_path / "rgb16.tif", np.zeros((8, 8, 3), np.uint16))
    Image.fromarray(np.zeros((8, 8), np.uint8)).convert("P").save(tmp_path / "p.png")
    got = {f.name: describe(header_info(f)) for f in tmp_path.iterdir()}
    assert got == {"g16.png": "PNG grey 16-bit", "rgba.png": "PNG RGBA 8-bit", "rgb16.tif": "TIFF RGB 16-bit", "p.png": "PNG palette 8-bit"}


def test_mask_checks_and_group_leakage() -> None:
    labels = np.zeros((20, 20), np.uint8)
    labels[5:12, 5:12], labels[7:10, 7:10] = 1, 2
    assert mask_checks(labels, has_cytoplasm=True) == {}
    labels[0:3, 15:18] = 2  # a stray nucleus in the background, at the border
    flags = mask_checks(labels, has_cytoplasm=True)
    assert flags["nucleus_outside_cytoplasm"] == {"components": 1, "pixels": 9, "of_components": 2}
    assert flags["nucleus_touches_border"] == 3
    assert "nucleus_outside_cytoplasm" not in mask_checks(labels, has_cytoplasm=False)
    out = leakage([], ["a"], [{"train": ["b"], "val": ["c"]}], 0, {"a": "p1", "b": "p1", "c": "p2"})
    assert out["groups"] == [{"group": "p1", "n": 2, "sides": ["test", "train"], "where": ["test vs train/val"]}]
    assert clusters([{"a": "x", "b": "y"}, {"a": "y", "b": "z"}, {"a": "u", "b": "v", "confirmed": False}]) == [["x", "y", "z"]]


def fake_sweep(root: Path) -> Path:
    """Two fold runs' val_predictions.csv; s3 is labelled a but both folds are sure it is b."""
    probs = {"s0": ("a", 0.9), "s1": ("a", 0.8), "s2": ("a", 0.85), "s3": ("a", 0.05), "s4": ("b", 0.1), "s5": ("b", 0.2), "s6": ("b", 0.15), "s7": ("b", 0.3)}
    for fold, ids in enumerate((["s0", "s1", "s4", "s5"], ["s2", "s3", "s6", "s7"])):
        run = root / str(fold)
        (run / ".hydra").mkdir(parents=True)
        with (run / "val_predictions.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["sample_id", "cell", "true", "pred", "p_a", "p_b"])
            for sid in ids:
                true, pa = probs[sid]
                w.writerow([sid, 0, true, "a" if pa > 0.5 else "b", pa, 1 - pa])
    return root


@pytest.mark.parametrize("method", ["self_confidence", "cleanlab"])
def test_label_issues_from_out_of_fold_predictions(tmp_path: Path, method: str) -> None:
    if method == "cleanlab":
        pytest.importorskip("cleanlab")
    given = {f"s{i}": "a" if i < 4 else "b" for i in range(8)} | {"t0": "a"}
    result = label_issues(fake_sweep(tmp_path / "sweep"), given, method)
    assert [i["id"] for i in result["issues"]] == ["s3"], result
    assert result["issues"][0]["suggested"] == "b" and result["n_images"] == 8 and result["without_predictions"] == 1


def test_label_issues_read_the_probabilities_before_the_temperatures(tmp_path: Path) -> None:
    """Each fold's temperature was fitted on the labels under audit: with the uncalibrated_p_ columns in every
    file those are what is judged. Here they show s1 (labelled a) as surely b, which the calibrated columns,
    softened by the fold's temperature, hid; a file without them leaves every fold calibrated, said so."""
    sweep = fake_sweep(tmp_path / "sweep")
    raw = {"s0": 0.95, "s1": 0.02, "s4": 0.05, "s5": 0.1, "s2": 0.9, "s3": 0.02, "s6": 0.1, "s7": 0.2}
    for fold in ("0", "1"):
        add_uncalibrated_columns(sweep / fold / "val_predictions.csv", raw)
    (sweep / "2" / ".hydra").mkdir(parents=True)  # a fold with no validation crops lacks nothing
    (sweep / "2" / "val_predictions.csv").write_text("sample_id,cell,true,pred,p_a,p_b\n")
    result = label_issues(sweep, None, "self_confidence")
    assert sorted(i["id"] for i in result["issues"]) == ["s1", "s3"] and result["probabilities"].startswith("before")
    fake_sweep(tmp_path / "old")  # written before the columns
    old = label_issues(tmp_path / "old", None, "self_confidence")
    assert [i["id"] for i in old["issues"]] == ["s3"] and old["probabilities"].startswith("calibrated")


def audit_cfg(overrides: list[str], out: Path, data_dir: Path):
    """audit.yaml composed as the entry point does (tests/conftest.py's compose helper)."""
    from tests.conftest import compose_config

    return compose_config("audit.yaml", ["extras.print_config=false", *overrides], out, data_dir)


def test_the_entry_point_on_synthetic_tiny(tmp_path: Path, data_dir: Path) -> None:
    """audit.yaml composed as `python audit.py data=synthetic_tiny` does: audit.json + audit.md, a
    clean synthetic set, the persisted split found."""
    from wbc.cli import audit

    cfg = audit_cfg(["data=synthetic_tiny"], tmp_path / "run", data_dir)
    findings, objects = audit.audit(cfg)
    out = Path(cfg.paths.output_dir)
    saved = json.loads((out / "audit.json").read_text())
    assert saved["findings"] == findings and (out / "audit.md").read_text().startswith("# Dataset audit: synthetic_tiny")
    assert findings["bad_files"] == 0 and findings["exact_duplicate_groups"] == 0 and findings["leaking_pairs_test"] == 0
    assert saved["dataset"]["k"] == 2 and saved["dataset"]["split_file"].endswith(".json") and saved["counts"]["n_groups"] > 1


def test_the_entry_point_reads_a_user_split_file(planted: Path, tmp_path: Path, data_dir: Path) -> None:
    """data.splits.file is the split the audit checks (as training would use it)."""
    from wbc.cli import audit

    overrides = ["data=synthetic", "data.generator=null", f"data.root={planted}", "data.classes=[a,b]",
                 f"data.splits.file={planted / 'split.json'}", "show=3"]
    findings, _ = audit.audit(audit_cfg(overrides, tmp_path / "run", data_dir))
    assert findings["leaking_pairs_test"] == 2 and findings["bad_files"] == 2
    # a missing file stops training at the listing; the audit lists it with the others
    (planted / "images" / "c5.png").unlink()
    findings, objects = audit.audit(audit_cfg(overrides, tmp_path / "run2", data_dir))
    report = objects["report"]
    assert findings["bad_files"] == 3 and ("images/c5", "missing") in {(p["id"], p["kind"]) for p in report["problems"]}
    assert "c5.png: image file not found" in report["dataset"]["listing_error"] and report["leakage"] is None
