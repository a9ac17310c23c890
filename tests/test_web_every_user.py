"""The calls that act on every user's images (list, delete without ids, ZIP without ids) are refused unless
the server was started with every_user=true: the page is shared by a lab and has no login, so an upload must
not be visible to whoever else reaches it. Each image stays reachable by its own unguessable id."""

from __future__ import annotations

import io
import zipfile

import pytest

from tests.helpers_web import field, make_client, png, tiny_pair, upload

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clf():
    return tiny_pair()[1]


def test_every_user_calls_are_refused_by_default_and_nothing_is_touched(clf) -> None:
    c = make_client(clf)
    mine = upload(c, png(field()), "mine.png", "/api/images?segment=true").json()["id"]
    theirs = upload(c, png(field(seed=3)), "theirs.png", "/api/images?segment=true").json()["id"]
    assert len(mine) == 32 and mine != theirs  # 128 random bits: the id is what keeps an upload to its uploader
    for r, call in ((c.get("/api/images"), "GET /api/images"), (c.delete("/api/images"), "DELETE /api/images without ids"),
                    (c.get("/api/files/all.zip"), "GET /api/files/all.zip without ids")):
        assert r.status_code == 403, (call, r.text)
        detail = r.json()["detail"]
        assert detail.startswith(call) and "every_user=true" in detail and "ids=" in detail and "theirs" not in detail
    assert c.get(f"/api/images/{theirs}").status_code == 200  # the refused delete deleted nothing
    z = zipfile.ZipFile(io.BytesIO(c.get("/api/files/all.zip", params={"ids": mine}).content))  # the page's own still work
    assert {n.split("/")[0] for n in z.namelist()} == {"mine", "manifest.csv"}
    assert c.delete("/api/images", params={"ids": mine}).json() == {"deleted": 1, "unknown": []}
    assert c.get("/api/model").json()["limits"]["every_user"] is False


def test_every_user_true_serves_them(clf) -> None:
    c = make_client(clf, every_user=True)
    ids = [upload(c, png(field(seed=i)), f"f{i}.png", "/api/images?segment=true").json()["id"] for i in range(2)]
    assert [i["id"] for i in c.get("/api/images").json()] == ids
    z = zipfile.ZipFile(io.BytesIO(c.get("/api/files/all.zip").content))
    assert {n.split("/")[0] for n in z.namelist()} == {"f0", "f1", "manifest.csv"}
    assert c.delete("/api/images").json() == {"deleted": 2, "unknown": []} and c.get("/api/images").json() == []
    assert c.get("/api/model").json()["limits"]["every_user"] is True

