"""A combined data config (data.parts) splits each part with the part's own data.parts.<name>.splits:
a data.splits value on the combined node that a part would ignore is refused, never run silently."""

from __future__ import annotations

import pytest

from datamodules.segmentation import SegmentationDataModule
from tests.helpers_data import make_csv_dataset
from tests.helpers_models import compose_cfg
from wbc.data.splits import SplitError


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("combined")
    return tmp, {
        name: {"root": str(make_csv_dataset(tmp / name, {"a": 12, "b": 12}, size=16)), "name": name, "classes": ["a", "b"],
               "splits": {"dir": str(tmp / "splits"), "k": 5, "seed": 0}}
        for name in ("lab1", "lab2")
    }


def _dm(parts, **splits) -> SegmentationDataModule:
    return SegmentationDataModule(root="unused", name="combined", image_size=16, parts=parts, splits=splits)


@pytest.mark.parametrize(("key", "value"), [("k", 3), ("seed", 1), ("test_fraction", 0.2), ("file", "mine.json"), ("dir", "/elsewhere"),
                                            ("use_groups", False), ("group_duplicates", True)])
def test_a_combined_node_split_setting_the_parts_would_ignore_is_refused(parts, key, value):
    with pytest.raises(SplitError) as info:
        _dm(parts[1], **{key: value}).split_ids()
    msg = str(info.value)
    assert f"data.splits.{key}={value!r}" in msg and f"data.parts.lab1.splits.{key}" in msg and f"data.parts.lab2.splits.{key}" in msg


def test_the_same_values_on_the_combined_node_and_the_parts_are_fine(parts):
    tmp, p = parts
    ids = _dm(p, k=5, seed=0, test_fraction=0.3, file=None, dir=None, use_groups=True, group_duplicates=False).split_ids()
    assert ids["test"] and ids["train"] and ids["val"]
    assert _dm(p, dir=str(tmp / "splits")).split_ids() == ids
    three = {n: {**c, "splits": {**c["splits"], "k": 3}} for n, c in p.items()}  # k set per part, and the node to match
    assert len(_dm(three, k=3).load_splits()["folds"]) == 3


SLOW = pytest.mark.slow  # ~2.5 s each: two in CI's default selection, every one with -m slow


@pytest.mark.parametrize("name", [pytest.param("combined_seg_all", marks=SLOW), "lodo_seg_d1", pytest.param("lodo_seg_d2", marks=SLOW),
                                  pytest.param("lodo_seg_all_idb2", marks=SLOW), "cross_cls_d1_to_d2", pytest.param("cross_cls_d2_to_d1", marks=SLOW)])
def test_the_shipped_combined_configs_are_accepted_and_a_combined_k_is_refused(tmp_path, name):
    from hydra.utils import instantiate

    from datamodules.parts import check_split_settings

    dm = instantiate(compose_cfg("train.yaml", [f"data={name}"], tmp_path).data, _convert_="partial")
    assert dm.parts is not None and len(dm.parts.children) >= 2
    check_split_settings(dm.splits_cfg, dm.parts.children)  # what load_splits checks first
    k3 = instantiate(compose_cfg("train.yaml", [f"data={name}", "data.splits.k=3"], tmp_path).data, _convert_="partial")
    with pytest.raises(SplitError, match=r"data\.splits\.k=3 but data\.parts\.segmentation_wbc_d1\.splits\.k=5"):
        k3.load_splits()
    parts = list(dm.parts.children)
    ok = compose_cfg("train.yaml", [f"data={name}", "data.splits.k=3", *(f"data.parts.{p}.splits.k=3" for p in parts)], tmp_path)
    dm3 = instantiate(ok.data, _convert_="partial")
    check_split_settings(dm3.splits_cfg, dm3.parts.children)
    assert all(c.splits_cfg["k"] == 3 for c in dm3.parts.children.values())
