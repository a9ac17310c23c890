"""The small split of a cut cell set (predict.py's pseudo_dataset / annotated_dataset, `held_out_split`):
the cells of one source field stay on one side where the cells allow it, and say so where they do not."""

from __future__ import annotations

import numpy as np

from wbc.data.cell_dataset import held_out_split


def _rows(fields: int, per_field: int, group: bool = True) -> list[dict]:
    return [{"image": f"images/field{f}_{c:02d}.png", "class_name": "ab"[c % 2], **({"group": f"field{f}"} if group else {})}
            for f in range(fields) for c in range(per_field)]


def _fields(rows, ids) -> set[str]:
    field = {r["image"].removesuffix(".png"): r.get("group") for r in rows}
    return {field[i] for i in ids}


def test_held_out_cells_take_their_whole_field():
    rows = _rows(6, 4)
    draw = dict(zip((r["image"] for r in rows), np.random.default_rng(0).random(len(rows))))
    s = held_out_split(rows, ["a", "b"], lambda r, c: draw[r["image"]], "")
    train, val, test = s["folds"][0]["train"], s["folds"][0]["val"], s["test"]
    assert not _fields(rows, train) & _fields(rows, val) and not _fields(rows, train) & _fields(rows, test)
    assert not _fields(rows, val) & _fields(rows, test)
    classes = {r["image"].removesuffix(".png"): r["class_name"] for r in rows}
    assert {classes[i] for i in val} == {classes[i] for i in test} == {classes[i] for i in train} == {"a", "b"}
    assert "notes" not in s["meta"] and len(train) + len(val) + len(test) == len(rows)


def test_too_few_fields_fall_back_to_single_cells_and_say_so():
    """Two fields, both classes in each: no field can be held out for test without emptying training."""
    rows = _rows(2, 6)
    draw = dict(zip((r["image"] for r in rows), np.random.default_rng(0).random(len(rows))))
    s = held_out_split(rows, ["a", "b"], lambda r, c: draw[r["image"]], "")
    assert s["test"] and s["folds"][0]["val"] and s["folds"][0]["train"]
    assert any("on two sides" in n for n in s["meta"]["notes"])


def test_without_fields_each_class_holds_out_its_first_two_cells():
    rows = _rows(2, 6, group=False)
    order = {r["image"]: i for i, r in enumerate(rows)}
    s = held_out_split(rows, ["a", "b"], lambda r, c: order[r["image"]], "note")
    assert s == {"test": ["images/field0_02", "images/field0_03"],
                 "folds": [{"train": [r["image"].removesuffix(".png") for r in rows if r["image"] not in
                                      {f"images/field0_0{i}.png" for i in range(4)}], "val": ["images/field0_00", "images/field0_01"]}],
                 "meta": {"note": "note"}}
