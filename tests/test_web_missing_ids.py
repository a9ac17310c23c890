"""The page's requests that name images the server no longer has (expired, pushed out or deleted):
"Download all as ZIP" still gives every image that is there and says which are not, and a delete of
several ids says which it did not know. Nothing is dropped silently. Nothing is trained: the
dark-nucleus stand-in segmenter and the untrained tiny classifier (tests.helpers_web)."""

from __future__ import annotations

import csv
import io
import zipfile

import pytest
from fastapi.testclient import TestClient

from tests.helpers_web import field, make_client, png, tiny_pair, upload

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clf():
    return tiny_pair()[1]


def segmented(c: TestClient, n: int) -> list[str]:
    """The ids of n uploaded and segmented fields (three cells each), named f0.png, f1.png, ..."""
    return [upload(c, png(field(seed=i)), f"f{i}.png", "/api/images?segment=true").json()["id"] for i in range(n)]


def expire(c: TestClient, image_id: str) -> None:
    """Make an image older than max_age_min, as if the page had been left open that long."""
    store = c.app.state.store
    rec = next(r for r in store.all() if r.id == image_id)
    rec.created -= store.max_age_s + 1


def test_all_zip_keeps_the_images_still_there_and_names_the_expired_ones(clf) -> None:
    c = make_client(clf)
    ids = segmented(c, 3)
    expire(c, ids[1])
    r = c.get("/api/files/all.zip", params={"ids": ",".join(ids)})
    assert r.status_code == 200, r.text
    z = zipfile.ZipFile(io.BytesIO(r.content))
    assert {n.split("/")[0] for n in z.namelist()} == {"f0", "f2", "manifest.csv", "missing.txt"}
    rows = list(csv.DictReader(io.StringIO(z.read("manifest.csv").decode())))
    assert [(m["folder"], m["image_id"], m["status"]) for m in rows] == [
        ("f0", ids[0], "segmented"), ("f2", ids[2], "segmented"), ("", ids[1], "not on the server (expired or deleted)")]
    missing = z.read("missing.txt").decode()
    assert ids[1] in missing and ids[0] not in missing and "upload them again" in missing.lower()


def test_all_zip_of_images_all_gone_is_a_404_naming_each(clf) -> None:
    c = make_client(clf)
    ids = segmented(c, 2)
    for i in ids:
        expire(c, i)
    r = c.get("/api/files/all.zip", params={"ids": ",".join(ids)})
    assert r.status_code == 404 and all(i in r.json()["detail"] for i in ids), r.text


def test_delete_of_several_ids_deletes_the_known_and_names_the_unknown(clf) -> None:
    c = make_client(clf, every_user=True)
    mine, gone, theirs = segmented(c, 3)
    c.delete(f"/api/images/{gone}")
    r = c.delete("/api/images", params={"ids": f"{mine},{gone},{mine},nope"})
    assert r.status_code == 200 and r.json() == {"deleted": 1, "unknown": [gone, "nope"]}
    assert c.get(f"/api/images/{mine}").status_code == 404 and c.get(f"/api/images/{theirs}").status_code == 200
    r = c.delete("/api/images", params={"ids": f"{mine},nope"})  # none known: 404 naming them, nothing else touched
    assert r.status_code == 404 and mine in r.json()["detail"] and "nope" in r.json()["detail"]
    assert c.get(f"/api/images/{theirs}").status_code == 200
    assert c.delete("/api/images", params={"ids": ""}).json() == {"deleted": 0, "unknown": []}  # no ids: nothing, not everything
    assert c.delete("/api/images").json() == {"deleted": 1, "unknown": []}  # without ids: every image on the server


def test_all_zip_names_an_asked_for_image_not_segmented_yet(clf) -> None:
    c = make_client(clf)
    ids = segmented(c, 1)
    raw = upload(c, png(field(seed=5)), "raw.png", "/api/images").json()["id"]
    r = c.get("/api/files/all.zip", params={"ids": f"{ids[0]},{raw}"})
    assert r.status_code == 200, r.text
    z = zipfile.ZipFile(io.BytesIO(r.content))
    rows = list(csv.DictReader(io.StringIO(z.read("manifest.csv").decode())))
    assert [(m["folder"], m["file"], m["image_id"]) for m in rows] == [("f0", "f0.png", ids[0]), ("", "raw.png", raw)]
    assert "not segmented" in rows[1]["status"] and not any(n.startswith("raw") for n in z.namelist())
    only_raw = c.get("/api/files/all.zip", params={"ids": raw})
    assert only_raw.status_code == 409 and "segment" in only_raw.json()["detail"]
