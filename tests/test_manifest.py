"""Manifest reading and validation: bad inputs fail once, clearly, naming the file or config key."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from datamodules.segmentation import SegmentationDataModule
from tests.helpers_data import (
    RGB_ENCODING,
    cell,
    grey_mask,
    make_csv_dataset,
    make_folder_dataset,
    rgb_mask,
    truncate,
    write_image,
    write_labels,
)
from wbc.data.imageio import ImageReadError, read_mask
from wbc.data.manifest import (
    CYTOPLASM,
    NUCLEUS,
    ManifestError,
    MaskEncoding,
    Sample,
    load_sample,
    read_manifest,
)

GREY = MaskEncoding()  # background 0, cytoplasm 128, nucleus 255


def _rows(root: Path) -> list[dict[str, str]]:
    with (root / "labels.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def _sample(root: Path, stem: str = "a_000", class_name: str = "a") -> Sample:
    return Sample(
        id=stem, image=root / "images" / f"{stem}.png", mask=root / "masks" / f"{stem}.png", class_name=class_name
    )


# --------------------------------------------------------------------------- masks


def test_missing_mask_named_in_manifest_error(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", {"a": 3})
    (root / "masks" / "a_001.png").unlink()
    with pytest.raises(ManifestError) as info:
        read_manifest(root)
    msg = str(info.value)
    assert "a_001.png" in msg and "mask file not found" in msg
    assert "a_000" not in msg  # only the offending file is named


def test_missing_mask_allowed_when_masks_not_required(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", {"a": 2})
    rows = _rows(root)
    rows[1]["mask"] = ""
    write_labels(root, rows, ["image", "mask", "class_name"])
    m = read_manifest(root, require_masks=False)
    sample = m.by_id()["images/a_001"]
    assert sample.mask is None
    image, labels = load_sample(sample, GREY)
    assert image.shape == (32, 32, 3) and labels is None


def test_mask_size_differs_from_image(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", {"a": 1})
    sample = _sample(root)
    write_image(sample.mask, grey_mask(cell((32, 30))[1]))
    with pytest.raises(ManifestError) as info:
        load_sample(sample, GREY)
    msg = str(info.value)
    assert str(sample.mask) in msg
    assert "30x32" in msg and "32x32" in msg and "must be equal" in msg


def test_grey_mask_value_outside_encoding(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", {"a": 1})
    sample = _sample(root)
    mask = grey_mask(cell(32)[1])
    mask[:2, :3] = 77
    write_image(sample.mask, mask)
    with pytest.raises(ManifestError) as info:
        load_sample(sample, GREY)
    msg = str(info.value)
    assert str(sample.mask) in msg
    assert "6 pixels" in msg and "[77]" in msg
    assert "data.mask_encoding" in msg and "nucleus=[[255, 255]]" in msg  # says what was expected


def test_rgb_mask_colour_outside_encoding(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", {"a": 1}, mask_mode="rgb")
    sample = _sample(root)
    mask = rgb_mask(cell(32)[1])
    mask[5, 5] = (10, 20, 30)
    write_image(sample.mask, mask)
    with pytest.raises(ManifestError) as info:
        load_sample(sample, MaskEncoding.from_config(RGB_ENCODING))
    msg = str(info.value)
    assert str(sample.mask) in msg and "[10, 20, 30]" in msg and "nucleus=[[0, 255, 255]]" in msg


def test_colour_mask_with_grey_encoding_is_rejected(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", {"a": 1}, mask_mode="rgb")
    sample = _sample(root)
    with pytest.raises(ManifestError, match=r"a_000\.png: expected a grey mask \(mask_encoding\.mode=grey\)"):
        load_sample(sample, GREY)


def test_rgb_mask_decodes(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", {"a": 1}, mask_mode="rgb")
    _, labels = load_sample(_sample(root), MaskEncoding.from_config(RGB_ENCODING))
    np.testing.assert_array_equal(labels, cell(32, seed=0)[1])


def test_rgb_encoding_with_grey_colours_decodes(tmp_path):
    """A black/white colour code in rgb mode (read_mask stores it as HxW) must still decode."""
    labels = cell(32)[1]
    path = write_image(tmp_path / "bw.png", np.where(labels[..., None] == NUCLEUS, 255, 0).repeat(3, 2).astype(np.uint8))
    enc = MaskEncoding.from_config({"mode": "rgb", "background": [[0, 0, 0]], "nucleus": [[255, 255, 255]]})
    decoded = enc.decode(read_mask(path), where=str(path))
    np.testing.assert_array_equal(decoded == NUCLEUS, labels == NUCLEUS)


def test_grey_ranges_and_binary_encoding():
    enc = MaskEncoding.from_config({"background": [[0, 50]], "cytoplasm": [], "nucleus": [[200, 255]]})
    raw = np.array([[0, 50, 200], [255, 7, 230]], np.uint8)
    np.testing.assert_array_equal(enc.decode(raw), [[0, 0, NUCLEUS], [NUCLEUS, 0, NUCLEUS]])
    with pytest.raises(ManifestError, match=r"values outside data\.mask_encoding \(e\.g\. \[128\]\)"):
        enc.decode(np.array([[0, 128]], np.uint8))


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        ({"mode": "hsv"}, "data.mask_encoding.mode"),
        ({"colour": [[1, 2]]}, "data.mask_encoding: unknown keys ['colour']"),
        ({"nucleus": [[255]]}, "data.mask_encoding.nucleus"),
        ({"mode": "rgb", "nucleus": [[0, 255]]}, "data.mask_encoding.nucleus"),
        ({"nucleus": []}, "data.mask_encoding.nucleus is empty"),
    ],
)
def test_mask_encoding_config_errors_name_the_key(cfg, key):
    with pytest.raises(ManifestError) as info:
        MaskEncoding.from_config(cfg)
    assert key in str(info.value)


def test_default_grey_encoding_decodes_three_labels():
    labels = cell(20)[1]
    np.testing.assert_array_equal(GREY.decode(grey_mask(labels)), labels)
    assert {CYTOPLASM, NUCLEUS} <= set(np.unique(labels).tolist())


# --------------------------------------------------------------------------- listing problems


def test_unknown_class_named(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", {"a": 2, "zz_unknown": 1})
    with pytest.raises(ManifestError) as info:
        read_manifest(root, classes=["a"])
    msg = str(info.value)
    assert "unknown class(es) ['zz_unknown']" in msg and "data.classes" in msg and "data.drop_classes" in msg


def test_configured_class_without_images_named(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", {"a": 2})
    with pytest.raises(ManifestError, match=r"class\(es\) \['basophil'\] in data\.classes have no images"):
        read_manifest(root, classes=["a", "basophil"])


def test_duplicate_rows_named(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", {"a": 3})
    rows = _rows(root)
    write_labels(root, [*rows, rows[1]], ["image", "mask", "class_name", "group"])
    with pytest.raises(ManifestError) as info:
        read_manifest(root)
    msg = str(info.value)
    assert "labels.csv" in msg and "duplicate rows" in msg and "images/a_001.png" in msg
    assert "images/a_000.png" not in msg


def test_csv_missing_columns_named(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", {"a": 2}, columns=("image", "label"))
    with pytest.raises(ManifestError) as info:
        read_manifest(root)
    msg = str(info.value)
    assert str(root / "labels.csv") in msg
    assert "missing columns ['mask', 'class_name']" in msg and "expected at least" in msg


def test_labels_csv_not_found(tmp_path):
    (tmp_path / "ds").mkdir()
    with pytest.raises(ManifestError, match=r"labels\.csv: labels file not found"):
        read_manifest(tmp_path / "ds")


def test_data_root_missing_names_key(tmp_path):
    with pytest.raises(ManifestError) as info:
        read_manifest(tmp_path / "nowhere")
    assert f"data.root={tmp_path / 'nowhere'}" in str(info.value) and "folder not found" in str(info.value)


def test_unknown_layout_names_key(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", {"a": 1})
    with pytest.raises(ManifestError, match=r"data\.layout must be 'csv' or 'folders', got 'coco'"):
        read_manifest(root, layout="coco")


def test_missing_image_named(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", {"a": 2})
    (root / "images" / "a_001.png").unlink()
    with pytest.raises(ManifestError, match=r"a_001\.png: image file not found"):
        read_manifest(root)


def test_all_errors_are_value_errors():
    assert issubclass(ManifestError, ValueError) and issubclass(ImageReadError, ValueError)


# --------------------------------------------------------------------------- layouts and manifest content


def test_csv_manifest_contents(tmp_path):
    groups = ["p1", "p1", "p2", "p3", "p3"]
    root = make_csv_dataset(tmp_path / "ds", {"b": 2, "a": 3}, groups=groups)
    m = read_manifest(root, classes=["b", "a"])
    assert [s.id for s in m.samples] == ["images/b_000", "images/b_001", "images/a_000", "images/a_001", "images/a_002"]
    assert m.classes == ["b", "a"]
    assert m.labels.tolist() == [0, 0, 1, 1, 1]
    assert m.groups == groups
    assert m.samples[2].image == root / "images" / "a_000.png" and m.samples[2].mask == root / "masks" / "a_000.png"
    image, labels = load_sample(m.samples[0], GREY)
    assert image.shape == (32, 32, 3) and labels.shape == (32, 32) and (labels == NUCLEUS).any()


def test_groups_none_when_column_empty(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", {"a": 2})
    assert read_manifest(root).groups is None


def test_folders_layout(tmp_path):
    root = make_folder_dataset(tmp_path / "ds", {"lymphocyte": 2, "neutrophil": 3})
    m = read_manifest(root, layout="folders")
    assert m.classes == ["lymphocyte", "neutrophil"]
    assert sorted(s.id for s in m.samples) == [
        "lymphocyte/lymphocyte_000",
        "lymphocyte/lymphocyte_001",
        "neutrophil/neutrophil_000",
        "neutrophil/neutrophil_001",
        "neutrophil/neutrophil_002",
    ]
    for s in m.samples:
        image, labels = load_sample(s, GREY)
        assert image.shape == (32, 32, 3) and (labels == NUCLEUS).any()


def test_folders_layout_finds_mask_with_other_extension(tmp_path):
    root = make_folder_dataset(tmp_path / "ds", {"a": 2}, mask_ext=".tif")
    m = read_manifest(root, layout="folders")
    assert all(s.mask.suffix == ".tif" for s in m.samples)
    assert all((load_sample(s, GREY)[1] == NUCLEUS).any() for s in m.samples)


def test_folders_layout_missing_mask_named(tmp_path):
    root = make_folder_dataset(tmp_path / "ds", {"a": 2})
    (root / "masks" / "a" / "a_001.png").unlink()
    with pytest.raises(ManifestError, match=r"a_001\.png: mask file not found"):
        read_manifest(root, layout="folders")


def test_folders_layout_without_images_folder(tmp_path):
    (tmp_path / "ds").mkdir()
    with pytest.raises(ManifestError, match=r"images: not found; layout=folders expects images/<class>"):
        read_manifest(tmp_path / "ds", layout="folders")


def test_drop_classes_removes_class_and_counts_it(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", {"a": 3, "basophil": 2, "b": 2})
    m = read_manifest(root, classes=["a", "b"], drop_classes=["basophil"])
    assert m.dropped == {"basophil": 2}
    assert m.classes == ["a", "b"]
    assert all(s.class_name != "basophil" for s in m.samples) and len(m.samples) == 5


def test_drop_classes_in_folders_layout(tmp_path):
    root = make_folder_dataset(tmp_path / "ds", {"a": 2, "rare": 1})
    m = read_manifest(root, layout="folders", drop_classes=["rare"])
    assert m.classes == ["a"] and m.dropped == {"rare": 1}


# --------------------------------------------------------------------------- through the DataModule


def _dm(root: Path, **kw) -> SegmentationDataModule:
    kw.setdefault("classes", ["a", "b"])
    return SegmentationDataModule(
        root=str(root), name="tiny", image_size=32, splits={"k": 2, "seed": 0}, preprocess={"clahe": False}, **kw
    )


def test_datamodule_reports_all_bad_files_in_one_error(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", {"a": 5, "b": 5})
    truncate(root / "images" / "a_002.png")
    mask = grey_mask(cell(32)[1])
    mask[0, 0] = 90
    write_image(root / "masks" / "b_003.png", mask)
    dm = _dm(root)
    with pytest.raises(ManifestError) as info:
        dm.setup("fit")
    msg = str(info.value)
    assert "2 bad file(s) in dataset tiny" in msg
    assert "a_002.png" in msg and "truncated" in msg
    assert "b_003.png" in msg and "[90]" in msg


def test_datamodule_surfaces_manifest_errors(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", {"a": 5, "b": 5})
    with pytest.raises(ManifestError, match=r"\['c'\] in data\.classes have no images"):
        _dm(root, classes=["a", "b", "c"]).setup("fit")


def test_datamodule_drop_classes(tmp_path):
    root = make_csv_dataset(tmp_path / "ds", {"a": 5, "b": 5, "rare": 1})
    dm = _dm(root, drop_classes=["rare"])
    dm.setup("fit")
    assert dm.manifest.dropped == {"rare": 1}
    assert sum(len(ds) for ds in dm.datasets.values()) == 10


def test_filters_accept_a_yaml_list_as_composed_by_hydra(tmp_path: Path) -> None:
    """data.filters.class_name=[a] arrives as an OmegaConf ListConfig when a data node is built
    without _convert_: it used to be read as one value "['a']" and match no row."""
    from omegaconf import OmegaConf

    root = make_csv_dataset(tmp_path / "d", {"a": 3, "b": 2})
    filters = OmegaConf.create({"class_name": ["a"]})
    m = read_manifest(root, filters=filters)
    assert [s.class_name for s in m.samples] == ["a"] * 3
    assert len(read_manifest(root, filters={"class_name": "b"}).samples) == 2
