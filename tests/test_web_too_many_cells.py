"""An image with more cells than a 16-bit label PNG holds (65535) in the web app: "Download all as ZIP"
still gives the other images and names that one in manifest.csv with the reason, as predict.py skips
and reports such an image; its own labels.png download is one clear error, not a server error."""

from __future__ import annotations

import csv
import io
import zipfile

import numpy as np
import pytest

from tests.helpers_web import field, make_client, png, tiny_pair, upload

pytestmark = pytest.mark.usefixtures("one_thread")


def test_all_zip_names_an_image_with_too_many_cells_and_keeps_the_others() -> None:
    c = make_client(tiny_pair()[1])
    ids = [upload(c, png(field(seed=i)), f"f{i}.png", "/api/images?segment=true").json()["id"] for i in range(2)]
    rec = next(r for r in c.app.state.store.all() if r.id == ids[0])
    labels = rec.labels.astype(np.int32)
    labels[labels == labels.max()] = 70_000  # as if the field held 70 000 cells
    rec.labels = labels
    r = c.get("/api/files/all.zip", params={"ids": ",".join(ids)})
    assert r.status_code == 200, r.text
    z = zipfile.ZipFile(io.BytesIO(r.content))
    assert {n.split("/")[0] for n in z.namelist()} == {"f1", "manifest.csv"}
    rows = list(csv.DictReader(io.StringIO(z.read("manifest.csv").decode())))
    assert [(m["folder"], m["file"], m["image_id"]) for m in rows] == [("f1", "f1.png", ids[1]), ("", "f0.png", ids[0])]
    assert "no files" in rows[1]["status"] and "65535" in rows[1]["status"]
    one = c.get(f"/api/images/{ids[0]}/files/labels.png")
    assert 400 <= one.status_code < 500 and "65535" in one.text, (one.status_code, one.text)
