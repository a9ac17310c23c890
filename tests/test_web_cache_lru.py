"""The result store near its `max_store_mb`: a newly cached download pushes out the least recently used
cached downloads, only as many as it takes to fit, never all of them each time (cache thrash, where
every download is encoded again). Nothing is trained (tests.helpers_web)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers_web import field, make_client, png, tiny_pair, upload
from wbc.web.store import ResultStore

pytestmark = pytest.mark.usefixtures("one_thread")


def test_store_over_its_limit_drops_the_least_recently_used_downloads_only_until_it_fits() -> None:
    store = ResultStore(max_mb=5000 / 2**20)  # 5000 bytes: the image (1000) and four 1000-byte downloads
    rec = store.add("a.png", np.zeros((10, 100), np.uint8))
    for kind in ("k1", "k2", "k3", "k4"):
        rec.cached(kind, lambda: bytes(1000))
        store.trim()
    assert set(rec.cache) == {"k1", "k2", "k3", "k4"}
    assert rec.cached("k1", lambda: b"encoded again") == bytes(1000)  # a hit: k1 is now the most recently used
    rec.cached("k5", lambda: bytes(1000))
    store.trim()
    assert set(rec.cache) == {"k1", "k3", "k4", "k5"} and rec.nbytes <= store.max_bytes  # k2 only
    rec.cached("big", lambda: bytes(2500))
    store.trim()
    assert set(rec.cache) == {"k5", "big"} and store.get(rec.id) is rec  # k3, k4, k1: just enough to fit


def test_server_near_its_limit_keeps_the_recent_downloads_cached() -> None:
    c = make_client(tiny_pair()[1])
    iid = upload(c, png(field()), url="/api/images?segment=true").json()["id"]
    store = c.app.state.store
    rec = store.get(iid)
    base = rec.nbytes
    kinds = ("mask.png", "cells.csv", "cells.geojson")
    sizes = {k: len(c.get(f"/api/images/{iid}/files/{k}").content) for k in kinds}
    rec.drop_cache()
    store.max_bytes = base + sizes["cells.csv"] + sizes["cells.geojson"] + 16  # the last two fit, not all three
    for k in kinds:
        assert c.get(f"/api/images/{iid}/files/{k}").status_code == 200
    assert c.get(f"/api/images/{iid}").status_code == 200  # any request applies the limits
    assert set(rec.cache) == {"cells.csv", "cells.geojson"}  # the oldest one went, the two most recent stay
    assert c.get(f"/api/images/{iid}/files/mask.png").status_code == 200 and c.get(f"/api/images/{iid}").status_code == 200
    assert set(rec.cache) == {"cells.geojson", "mask.png"}
