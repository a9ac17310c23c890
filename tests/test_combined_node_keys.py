"""A combined data config (data.parts) refuses what only a part reads when it is set on the combined node
(data.classes, data.filters, data.max_pixels, data.allow_outside_root: they were ignored, so max_pixels=100 let
through images that the same key refuses on one dataset), and refuses parts that list one image file twice (a
dataset beside its own subset put the same images in test and in training)."""

from __future__ import annotations

import pytest

from datamodules.segmentation import SegmentationDataModule
from tests.helpers_data import make_csv_dataset
from tests.helpers_models import compose_cfg


@pytest.fixture(scope="module")
def labs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("labs")
    return tmp, {name: make_csv_dataset(tmp / name, {"a": 10, "b": 10}, size=16) for name in ("lab1", "lab2")}


def part(root, name: str, tmp, **extra) -> dict:
    return {"root": str(root), "name": name, "classes": ["a", "b"], "splits": {"dir": str(tmp / "splits"), "k": 3}, **extra}


@pytest.mark.parametrize(("key", "value"), [("classes", ["b", "a"]), ("filters", {"subset": ["x"]}), ("max_pixels", 100),
                                            ("allow_outside_root", True)])
def test_a_key_only_parts_read_is_refused_on_the_combined_node(labs, key, value) -> None:
    tmp, roots = labs
    parts = {n: part(r, n, tmp) for n, r in roots.items()}
    with pytest.raises(ValueError, match=rf"data\.{key}=.* on a combined data config \(data\.parts\) would be ignored: .*data\.parts\.lab1, "
                                         rf"data\.parts\.lab2\), e\.g\. data\.parts\.<name>\.{key}"):
        SegmentationDataModule(root="unused", name="combined", image_size=16, parts=parts, splits={"k": 3}, **{key: value})
    assert SegmentationDataModule(root="unused", name="combined", image_size=16, parts=parts, splits={"k": 3}).parts is not None


def test_the_shipped_combined_config_sets_none_of_them(tmp_path) -> None:
    """conf/data/combined.yaml must leave them unset (it inherits synthetic's class list otherwise)."""
    data = compose_cfg("train.yaml", ["data=lodo_seg_d1"], tmp_path).data
    assert (data.classes, dict(data.filters), data.max_pixels, data.allow_outside_root) == (None, {}, None, False)


def test_parts_sharing_image_files_are_refused(labs) -> None:
    tmp, roots = labs
    parts = {"whole": part(roots["lab1"], "whole", tmp), "again": part(roots["lab1"], "again", tmp)}
    dm = SegmentationDataModule(root="unused", name="combined", image_size=16, parts=parts, splits={"k": 3})
    with pytest.raises(ValueError, match=r"data\.parts list the same image file twice \(20 in all\), e\.g\. \[\('whole/images/a_000', "
                                         r"'again/images/a_000'\)"):
        dm.split_ids()
