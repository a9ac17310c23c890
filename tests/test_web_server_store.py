"""The web store's size limit (store.max_mb) counts what a record holds once a step has published it: the
pixels, labels and crops, and the published cell state (rows, polygons as Python objects, ~4x their JSON),
which it left out (14 MB counted for 23 MB held on a 1149-cell field); measured once per step, not walked
on every request."""

from __future__ import annotations

import json

import pytest

from tests.helpers_web import field, make_client, png, tiny_pair, upload

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_segmented_record_counts_its_published_state_once() -> None:
    c = make_client(tiny_pair()[1])
    image_id = upload(c, png(field(seed=1)), "f.png", "/api/images?segment=true").json()["id"]
    rec = next(r for r in c.app.state.store.all() if r.id == image_id)
    pixels = rec.rgb.nbytes + rec.labels.nbytes + sum(x.nbytes for x in rec.crops)
    state = len(json.dumps(rec.view.state, default=str))
    assert rec.counted == pixels + 4 * state and rec.nbytes == rec.counted + rec.cache_bytes
    rec.crops.append(rec.crops[0].copy())  # not re-walked per request: the count changes when a step publishes
    assert rec.nbytes == pixels + 4 * state + rec.cache_bytes
