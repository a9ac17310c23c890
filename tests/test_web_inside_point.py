"""Each cell the API answers carries `inside_x, inside_y`: a point inside the cell, where the page puts a lab's
label (labels.js). On a curved nucleus (a band neutrophil's arc, a horseshoe) the centroid lies
outside the cell, so a label put there never attached to its cell and a second one made two conflicting rows."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers_web import curved_field, make_client, png, tiny_pair, upload
from wbc.postprocess import instances_from_labels
from wbc.web.engine import interior_points

pytestmark = pytest.mark.usefixtures("one_thread")


def inside(polygon: list, x: float, y: float) -> bool:
    """Even-odd point in the cell's rings (what the page's inRing does)."""
    from matplotlib.path import Path as MPath

    return sum(MPath(np.array(ring)).contains_point((x, y)) for ring in polygon) % 2 == 1


@pytest.mark.parametrize("kind", ["arc", "U"])
def test_every_cell_has_a_point_inside_it_even_where_its_centroid_is_not(kind: str) -> None:
    c = make_client(tiny_pair()[1])
    image_id = upload(c, png(curved_field(kind)), "curved.png").json()["id"]
    cells = c.post(f"/api/images/{image_id}/segment").json()["cells"]
    assert len(cells) == 2
    assert not inside(cells[1]["polygon"], cells[1]["centroid_x"], cells[1]["centroid_y"])  # why the point is needed
    for cell in cells:
        assert inside(cell["polygon"], cell["inside_x"], cell["inside_y"]), cell["cell"]
        assert cell["bbox_x0"] <= cell["inside_x"] < cell["bbox_x1"] and cell["bbox_y0"] <= cell["inside_y"] < cell["bbox_y1"]  # compare.py's match
    assert c.get(f"/api/images/{image_id}").json()["cells"] == cells  # the snapshot a reload reads has them too


def test_the_point_is_a_pixel_centre_of_the_cell_deepest_inside_it() -> None:
    labels = np.zeros((20, 30), np.int32)
    labels[2:9, 3:10] = 1  # a 7x7 square: its middle pixel (6, 5)
    labels[12:14, 5:25] = 2  # a 2 px band: of the equally deep pixels, the one nearest its centroid
    labels[17, 28] = 3  # one pixel
    _, instances = instances_from_labels(labels)
    assert interior_points(labels, instances) == [(6.5, 5.5), (14.5, 12.5), (28.5, 17.5)]
