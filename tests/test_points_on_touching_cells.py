"""A labelled point on a nucleus that touches a neighbour is the cell whose pixel it is on: boxes overlap
where nuclei touch, and the nearest centre there was the neighbour's (21 of a large nucleus's 609 pixels
went to its small neighbour), so a label trained (or a compare.py call scored) the wrong crop. The run's
label map (labels/<stem>.png) decides; without one, the box rule as before."""

from __future__ import annotations

import numpy as np
from skimage.measure import regionprops

from wbc.annotations import match_cell


def touching() -> tuple[np.ndarray, list[dict]]:
    yy, xx = np.mgrid[:64, :64]
    lab = np.zeros((64, 64), np.uint16)
    lab[(yy - 30) ** 2 + (xx - 30) ** 2 < 14**2] = 1  # a large nucleus
    lab[((yy - 43) ** 2 + (xx - 43) ** 2 < 7**2) & (lab == 0)] = 2  # a small one touching it on the diagonal
    cells = []
    for r in regionprops(lab):  # predict's rows: boxes exclusive, centroids at pixel centres
        y0, x0, y1, x1 = r.bbox
        cells.append({"cell": r.label, "bbox_x0": x0, "bbox_y0": y0, "bbox_x1": x1, "bbox_y1": y1,
                      "centroid_x": r.centroid[1] + 0.5, "centroid_y": r.centroid[0] + 0.5})
    return lab, cells


def test_every_pixel_of_a_nucleus_is_its_own_cell_with_the_label_map() -> None:
    lab, cells = touching()
    ys, xs = np.nonzero(lab)
    by_box = [match_cell(cells, x + 0.5, y + 0.5, 0.5)["cell"] for y, x in zip(ys, xs)]
    assert sum(got != want for got, want in zip(by_box, lab[ys, xs])) > 0  # the box rule alone gets some wrong
    by_map = [match_cell(cells, x + 0.5, y + 0.5, 0.5, lab)["cell"] for y, x in zip(ys, xs)]
    assert by_map == [int(v) for v in lab[ys, xs]]
    assert match_cell(cells, 2.5, 2.5, 0.5, lab) is None  # background far from both: not found
    assert match_cell(cells, 30.5, 15.0, 0.5, lab)["cell"] == 1  # background beside a nucleus: the box rule
