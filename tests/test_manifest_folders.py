"""The class-folder layout reads images/<class>/<image> only: anything else there (sub-folders, other
formats, loose files) and class folders without images are one error, never skipped silently; the
files file managers leave behind are ignored."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers_data import cell, grey_mask, make_folder_dataset, write_image
from wbc.data.manifest import ManifestError, read_manifest


def _put(root, rel: str, seed: int = 0) -> None:
    img, labels = cell(16, seed=seed)
    write_image(root / "images" / rel, img)
    write_image(root / "masks" / rel, grey_mask(labels))


def test_images_in_sub_folders_and_other_formats_are_refused_by_name(tmp_path):
    root = make_folder_dataset(tmp_path / "ds", {"neutrophil": 3, "lymphocyte": 1}, size=16)
    for i in range(3):
        _put(root, f"monocyte/patient1/m{i}.png", seed=i)  # per-patient sub-folders: the whole class would vanish
    (root / "images" / "neutrophil" / "n9.webp").write_bytes(b"RIFF....WEBP")
    with pytest.raises(ManifestError) as info:
        read_manifest(root, layout="folders")
    msg = str(info.value)
    assert "images/monocyte/patient1/" in msg and "images/neutrophil/n9.webp" in msg and "2 entries would be left out" in msg
    assert "directly in images/<class>/" in msg and ".png" in msg and "layout=csv" in msg
    assert "class folder(s) ['images/monocyte/'] hold no images" in msg


def test_loose_files_and_empty_class_folders_are_named(tmp_path):
    root = make_folder_dataset(tmp_path / "ds", {"a": 2}, size=16)
    write_image(root / "images" / "stray.png", np.zeros((16, 16, 3), np.uint8))
    (root / "images" / "b").mkdir()
    with pytest.raises(ManifestError, match=r"\['images/stray\.png'\].*class folder\(s\) \['images/b/'\] hold no images"):
        read_manifest(root, layout="folders")


def test_hidden_files_are_ignored_and_a_dropped_class_is_not_checked(tmp_path):
    root = make_folder_dataset(tmp_path / "ds", {"a": 2, "b": 2}, size=16)
    for name in (".DS_Store", "Thumbs.db", "desktop.ini", "._a_000.png"):
        (root / "images" / "a" / name).write_bytes(b"x")
    (root / "images" / ".DS_Store").write_bytes(b"x")
    (root / "images" / ".ipynb_checkpoints").mkdir()
    assert sorted(s.id for s in read_manifest(root, layout="folders").samples) == ["a/a_000", "a/a_001", "b/b_000", "b/b_001"]
    (root / "images" / "b" / "notes.txt").write_text("scanned 2024")
    (root / "images" / "basophil").mkdir()
    m = read_manifest(root, layout="folders", drop_classes=["b", "basophil"])
    assert m.classes == ["a"] and m.dropped == {"b": 2}
