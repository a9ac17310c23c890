"""held_out_split (the pseudo_dataset / annotated_dataset split): a field held out for one class
never takes the cell another class's validation or test draw needs, and a class left without one
is named in the notes, never silently."""

from __future__ import annotations

from collections import Counter

import numpy as np

from wbc.data.cell_dataset import held_out_split


def _sides(rows, split) -> dict[str, Counter]:
    cls = {r["image"].removesuffix(".png"): r["class_name"] for r in rows}
    fold = split["folds"][0]
    return {side: Counter(cls[i] for i in ids) for side, ids in (("train", fold["train"]), ("val", fold["val"]), ("test", split["test"]))}


def test_a_field_held_out_for_one_class_leaves_the_other_its_test_cell() -> None:
    # a's first cell sits in f1 with two b cells: holding f1 out for a's validation took b's test cell
    cells = [("a", "f1"), ("b", "f1"), ("a", "f0"), ("a", "f2"), ("b", "f2"), ("b", "f1")]
    rows = [{"image": f"x{i}.png", "class_name": c, "group": g} for i, (c, g) in enumerate(cells)]
    split = held_out_split(rows, ["a", "b"], lambda r, c: r["image"], "note")
    sides = _sides(rows, split)
    for c in "ab":
        assert sides["val"][c] and sides["test"][c] and sides["train"][c], (c, sides)


def test_random_grouped_sets_give_every_class_of_three_cells_a_draw_or_a_note() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        classes = ["a", "b", "c", "d"][: rng.integers(2, 5)]
        n, nf = int(rng.integers(6, 30)), int(rng.integers(2, 8))
        rows = [{"image": f"x{i}.png", "class_name": str(rng.choice(classes)), "group": f"f{rng.integers(nf)}"} for i in range(n)]
        split = held_out_split(rows, classes, lambda r, c: r["image"], "note")
        sides, count = _sides(rows, split), Counter(r["class_name"] for r in rows)
        notes = " ".join(split["meta"].get("notes", []))
        for c in classes:
            assert sides["train"][c] or not count[c], (c, sides)  # every class keeps a training cell
            if count[c] >= 3 and not (sides["val"][c] and sides["test"][c]):
                assert f"{c}: no " in notes, (c, sides, notes)


def test_cells_held_out_alone_name_their_field() -> None:
    # three b cells, all in the field of a's only cell: the field cannot go, so single b cells do
    cells = [("a", "f0"), ("b", "f0"), ("b", "f0"), ("b", "f0")]
    rows = [{"image": f"x{i}.png", "class_name": c, "group": g} for i, (c, g) in enumerate(cells)]
    split = held_out_split(rows, ["a", "b"], lambda r, c: r["image"], "note")
    sides = _sides(rows, split)
    assert sides["train"] == Counter({"a": 1, "b": 1}) and sides["val"]["b"] == 1 and sides["test"]["b"] == 1
    notes = split["meta"]["notes"]
    assert len(notes) == 2 and all("'f0' is on two sides" in n for n in notes)
