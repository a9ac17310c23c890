"""A labels.csv row or header that would lose information is refused, naming the line or column: values past
the header's last column (csv.DictReader kept them under None: a patient column without a header name was
dropped and the split ignored the patients), a header spelled `Group` or ` group`, a class of only spaces."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers_data import make_csv_dataset
from wbc.data.manifest import ManifestError, read_manifest


def rewrite(root: Path, edit) -> None:
    lines = (root / "labels.csv").read_text().splitlines()
    (root / "labels.csv").write_text("\n".join(edit(lines)) + "\n")


def test_values_past_the_header_are_refused_naming_the_line(tmp_path: Path) -> None:
    root = make_csv_dataset(tmp_path / "d", {"a": 2, "b": 2}, columns=("image", "mask", "class_name"))
    rewrite(root, lambda lines: [lines[0]] + [f"{line},P{i // 2}" for i, line in enumerate(lines[1:])])
    with pytest.raises(ManifestError, match=r"labels\.csv: line 2: 4 values for the header's 3 columns \(extra: \['P0'\]\); quote"):
        read_manifest(root, classes=["a", "b"])


@pytest.mark.parametrize("header", ["Group", " group", "Class_Name"])
def test_a_known_column_spelt_otherwise_is_refused(tmp_path: Path, header: str) -> None:
    root = make_csv_dataset(tmp_path / "d", {"a": 2, "b": 2}, groups=["P1", "P1", "P2", "P2"])
    right = header.strip().lower()
    rewrite(root, lambda lines: [",".join(header if c == right else c for c in lines[0].split(","))] + lines[1:])
    with pytest.raises(ManifestError, match=rf"column\(s\) \['{header}'\] would be ignored: did you mean \['{right}'\]"):
        read_manifest(root, classes=["a", "b"])


def test_a_class_of_spaces_is_an_empty_class(tmp_path: Path) -> None:
    root = make_csv_dataset(tmp_path / "d", {"a": 2, "b": 2})
    rewrite(root, lambda lines: [lines[0], lines[1].replace(",a", ",   ", 1), *lines[2:]])
    with pytest.raises(ManifestError, match=r"line 2: empty 'image' or 'class_name'"):
        read_manifest(root)  # no class list: a class '' had been made of it


def test_a_well_formed_csv_still_reads(tmp_path: Path) -> None:
    root = make_csv_dataset(tmp_path / "d", {"a": 2, "b": 2}, groups=["P1", "P1", "P2", "P2"])
    m = read_manifest(root, classes=["a", "b"])
    assert [s.group for s in m.samples] == ["P1", "P1", "P2", "P2"]


def test_one_mask_file_for_two_images_of_two_classes_is_refused_of_one_class_said(tmp_path: Path, caplog) -> None:
    """A copy-paste slip (b_000's row naming a_000's mask) had trained one image on another's outline, without a word.
    One outline under two classes is refused; under one class (copies of a field, or a slip) it is a warning."""
    root = make_csv_dataset(tmp_path / "d", {"a": 2, "b": 2})
    rewrite(root, lambda lines: [*lines[:3], lines[3].replace("masks/b_000.png", "masks/a_000.png"), *lines[4:]])
    with pytest.raises(ManifestError, match=r"line 2 and line 4 list one mask file 'masks/a_000\.png' with classes \['a', 'b'\]; "
                                            r"each image has its own"):
        read_manifest(root, classes=["a", "b"])
    rewrite(root, lambda lines: [*lines[:3], lines[3].replace(",b,", ",a,"), *lines[4:]])
    with caplog.at_level("WARNING", logger="wbc"):
        assert len(read_manifest(root, classes=["a", "b"]).samples) == 4
    assert "line 2 and line 4 list one mask file 'masks/a_000.png': they train on one outline" in caplog.text


def test_folders_layout_masks_any_case_and_never_two(tmp_path: Path) -> None:
    """masks/<class>/<stem>.PNG is the mask of images/<class>/<stem>.png (it was 'not found' under .png), and two
    masks of one stem (.png and .tif) are refused instead of the .png being taken without a word."""
    import shutil

    from tests.helpers_data import make_folder_dataset

    root = make_folder_dataset(tmp_path / "d", {"a": 2, "b": 2})
    mask = next((root / "masks" / "a").iterdir())
    mask.rename(mask.with_suffix(".PNG"))
    m = read_manifest(root, layout="folders")
    assert {s.mask.name for s in m.samples if s.class_name == "a"} == {mask.with_suffix(".PNG").name, *(
        p.name for p in (root / "masks" / "a").iterdir() if p.suffix == ".png")}
    shutil.copy(mask.with_suffix(".PNG"), mask.with_suffix(".tif"))
    with pytest.raises(ManifestError, match=r"\['masks/a/[^']+\.PNG', 'masks/a/[^']+\.tif'\] are 2 masks for images/a/"):
        read_manifest(root, layout="folders")


@pytest.mark.parametrize(("encoding", "message"), [
    ({"mode": "grey", "cytoplasm": [[100, 210]], "nucleus": [[200, 255]]}, r"cytoplasm \[100, 210\] and nucleus \[200, 255\] claim"),
    ({"mode": "rgb", "background": [[0, 0, 255]], "nucleus": [[0, 0, 255]]}, r"background \[0, 0, 255\] and nucleus \[0, 0, 255\] claim"),
])
def test_mask_classes_claiming_the_same_values_are_refused(encoding, message) -> None:
    """Overlapping ranges had been settled by a fixed precedence (nucleus over cytoplasm over background), silently."""
    from wbc.data.manifest import MaskEncoding

    with pytest.raises(ManifestError, match=rf"data\.mask_encoding: {message} the same mask values"):
        MaskEncoding.from_config(encoding)
    MaskEncoding.from_config({"mode": "grey", "background": [[0, 50]], "cytoplasm": [[128, 128]], "nucleus": [[255, 255]]})
