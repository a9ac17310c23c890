"""The web app's API (issue 15) through FastAPI's TestClient: segment -> classify -> every download
decoded and checked against the cells, bad inputs and limits each with one plain message, the
bounded result store, the bounded job pool under concurrent requests, security headers, and the
writers predict.py shares. Nothing is trained: a dark-nucleus stand-in segmenter finds the three
drawn cells of each field; the classifier is the untrained tiny one."""

from __future__ import annotations

import csv
import io
import json
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.helpers_data import png_header_only
from tests.helpers_web import (
    CENTRES,
    check_geojson,
    check_outline,
    decode,
    field,
    field_profile,
    held,
    jpeg,
    make_client,
    png,
    ragged_cells,
    tiff16,
    tiny_pair,
    upload,
    web_pipeline,
)
from wbc.web.app import create_app

pytestmark = pytest.mark.usefixtures("one_thread")
KINDS = ("mask.png", "labels.png", "overlay.png", "cells.csv", "cells.geojson", "crops.zip", "all.zip")


@pytest.fixture(scope="module")
def clf():
    return tiny_pair()[1]


@pytest.fixture(scope="module")
def client(clf):
    with TestClient(create_app(web_pipeline(clf))) as c:
        yield c


# --------------------------------------------------------------------------- the flow and every download
def test_segment_then_classify_then_every_download(client, clf) -> None:
    r = upload(client, png(field()), "smear 1.png")
    assert r.status_code == 200, r.text
    image = r.json()
    assert (image["status"], image["width"], image["height"], image["count"]) == ("uploaded", 160, 100, None)
    iid = image["id"]
    assert client.post(f"/api/images/{iid}/classify").status_code == 409  # Classify needs Segment first

    seg = client.post(f"/api/images/{iid}/segment")
    assert seg.status_code == 200 and "segment;dur=" in seg.headers["Server-Timing"]
    s = seg.json()
    assert s["status"] == "segmented" and s["count"] == 3 and s["summary"] == "3 cells (not classified yet)"
    assert {"decode_ms", "segment_ms", "cells_ms", "outlines_ms"} <= set(s["timings"]) and s["scale_text"]
    for cell, (cy, cx) in zip(sorted(s["cells"], key=lambda c: c["centroid_x"]), sorted(CENTRES, key=lambda c: c[1])):
        assert abs(cell["centroid_x"] - (cx + 0.5)) < 2 and abs(cell["centroid_y"] - (cy + 0.5)) < 2
        assert cell["class"] is None and len(cell["polygon"][0]) >= 4

    cls = client.post(f"/api/images/{iid}/classify").json()
    classes = clf.hparams.data_info["classes"]
    assert cls["status"] == "classified" and sum(cls["counts"].values()) == 3
    assert cls["summary"].startswith("3 cells: ") and all(c["class"] in classes for c in cls["cells"])
    for c in cls["cells"]:
        assert sum(c[f"p_{k}"] for k in classes) == pytest.approx(1, abs=1e-4) and c["probability"] == max(c[f"p_{k}"] for k in classes)

    files = {k: client.get(f"/api/images/{iid}/files/{k}") for k in KINDS}
    assert all(r.status_code == 200 for r in files.values())
    assert files["cells.csv"].headers["content-disposition"] == 'attachment; filename="smear_1_cells.csv"'
    labels = decode(files["labels.png"].content)
    assert labels.dtype == np.uint16 and labels.shape == (100, 160) and set(np.unique(labels)) == {0, 1, 2, 3}
    mask = decode(files["mask.png"].content)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255} and np.array_equal(mask > 0, labels > 0)
    assert decode(files["overlay.png"].content, cv2.IMREAD_COLOR).shape == (100, 160, 3)

    rows = list(csv.DictReader(io.StringIO(files["cells.csv"].text)))
    assert [int(r["cell"]) for r in rows] == [1, 2, 3] and all(r["class"] in classes for r in rows)
    assert {f"p_{k}" for k in classes} <= set(rows[0]) and [int(r["area"]) for r in rows] == [int((labels == i).sum()) for i in (1, 2, 3)]

    check_geojson(files["cells.geojson"].json(), labels, classes, rows)

    with zipfile.ZipFile(io.BytesIO(files["all.zip"].content)) as z:
        names = set(z.namelist())
        assert {f"smear_1_{k.replace('.', '.', 1)}" for k in ("mask.png", "labels.png", "overlay.png", "cells.csv", "cells.geojson")} <= names
        assert {f"crops/smear_1_cell0{i}.png" for i in (1, 2, 3)} <= names
        assert z.read("smear_1_cells.csv") == files["cells.csv"].content
    with zipfile.ZipFile(io.BytesIO(files["crops.zip"].content)) as z:
        crops = [decode(z.read(n)) for n in sorted(z.namelist())]
    assert len(crops) == 3 and all(c.shape[:2] == crops[0].shape[:2] for c in crops)
    crop = decode(client.get(f"/api/images/{iid}/crops/2.png").content)
    assert crop.shape[:2] == crops[0].shape[:2]
    assert decode(client.get(f"/api/images/{iid}/image.png").content).shape == (100, 160, 3)


def test_image_formats_and_no_cells(client) -> None:
    """16-bit TIFF, RGBA PNG and grey JPEG give the same three cells; an empty field gives none, with
    downloads that still parse."""
    img = field()
    rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
    for name, data in (("a.tif", tiff16(img)), ("b.png", png(rgba)), ("c.jpg", jpeg(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)))):
        r = upload(client, data, name, "/api/predict")
        assert r.status_code == 200, (name, r.text)
        assert (r.json()["status"], r.json()["count"]) == ("classified", 3), name
    empty = upload(client, png(field(centres=())), "blank.png", "/api/predict").json()
    assert empty["count"] == 0 and empty["summary"] == "no cells found" and empty["cells"] == []
    iid = empty["id"]
    assert list(csv.reader(io.StringIO(client.get(f"/api/images/{iid}/files/cells.csv").text)))[1:] == []
    assert client.get(f"/api/images/{iid}/files/cells.geojson").json()["features"] == []
    assert not decode(client.get(f"/api/images/{iid}/files/labels.png").content).any()


# --------------------------------------------------------------------------- bad input and limits
@pytest.mark.parametrize(
    ("name", "data", "status", "message"),
    [
        ("empty.png", b"", 400, r"empty\.png: file is empty \(0 bytes\)"),
        ("notes.png", b"hello, this is text\n" * 10, 400, r"notes\.png: not an image file"),
        ("cut.png", png(field())[:300], 400, r"cut\.png: cannot decode as an image"),
        ("../../etc/passwd", b"#!/bin/sh\necho hi\n", 400, r"^passwd: not an image file"),
    ],
)
def test_bad_uploads_get_one_plain_message(client, name, data, status, message) -> None:
    import re

    r = upload(client, data, name)
    assert r.status_code == status and re.search(message, r.json()["detail"]), r.text
    assert "Traceback" not in r.text


def test_limits_checked_before_decoding(clf, tmp_path: Path, monkeypatch) -> None:
    from PIL import Image

    small = make_client(clf, max_file_mb=0.01, max_pixels=1000)
    r = upload(small, png(field()), "big.png")  # over the limit but inside the multipart slack: 413 all the same
    assert r.status_code == 413 and "big.png: " in r.text and "exceeds the limit max_file_mb=0.01" in r.text
    r = upload(small, png(field())[:16] + b"x" * (2**20 + 20_000), "bigger.png")  # refused while it arrives
    assert r.status_code == 413 and "bigger.png: the upload is larger than the limit max_file_mb=0.01" in r.text
    r = upload(small, png(field(20, 20, centres=())), "many.png")  # 400 px: under the pixel limit
    assert r.status_code == 200
    r = upload(small, png(field(40, 40, centres=())), "wide.png")  # 1600 px
    assert r.status_code == 400 and "wide.png: 40x40 = 1600 pixels exceeds the limit max_pixels=1000" in r.text
    r = small.post("/api/images", content=b"x" * (2**20 + 20_000), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and "larger than the limit max_file_mb=0.01" in r.text  # refused from the length

    def never(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(Image.Image, "load", never)  # the pixels are never decoded
    header = png_header_only(tmp_path / "huge.png", 15_000, 12_000).read_bytes()
    r = upload(make_client(clf), header, "huge.png")
    assert r.status_code == 400 and "huge.png: 15000x12000 = 180000000 pixels exceeds the limit" in r.text


def test_wrong_requests(client) -> None:
    assert client.post("/api/images", data={"x": "1"}).status_code == 400
    r = client.get("/api/images/nope")
    assert r.status_code == 404 and "upload it again" in r.json()["detail"]
    iid = upload(client, png(field()), "w.png").json()["id"]
    for url in ("files/cells.csv", "crops/1.png"):  # nothing segmented yet: a step out of order
        assert client.get(f"/api/images/{iid}/{url}").status_code == 409
    client.post(f"/api/images/{iid}/segment")
    r = client.get(f"/api/images/{iid}/files/evil.sh")  # what does not exist: 404 naming what does
    assert r.status_code == 404 and "no download 'evil.sh'" in r.json()["detail"] and "cells.csv" in r.json()["detail"]
    r = client.get(f"/api/images/{iid}/crops/99.png")
    assert r.status_code == 404 and r.json()["detail"] == "w.png: no cell 99; its cells are 1 to 3"


def test_store_is_bounded_and_deletable(clf) -> None:
    c = make_client(clf, max_images=2, every_user=True)
    ids = [upload(c, png(field(30, 30, centres=())), f"{i}.png").json()["id"] for i in range(3)]
    assert c.get(f"/api/images/{ids[0]}").status_code == 404  # the oldest went
    assert [i["id"] for i in c.get("/api/images").json()] == ids[1:]
    assert c.delete(f"/api/images/{ids[1]}").status_code == 204 and c.get(f"/api/images/{ids[1]}").status_code == 404
    assert c.delete("/api/images").json() == {"deleted": 1, "unknown": []} and c.get("/api/images").json() == []
    mine, theirs = [upload(c, png(field(30, 30, centres=())), f"{i}.png", "/api/images?segment=true").json()["id"] for i in "ab"]
    assert c.delete("/api/images", params={"ids": ""}).json() == {"deleted": 0, "unknown": []}  # ids given, none: nothing, not everything
    z = zipfile.ZipFile(io.BytesIO(c.get("/api/files/all.zip", params={"ids": mine}).content))  # the page's own, as "Remove all"
    assert {n.split("/")[0] for n in z.namelist()} == {"a", "manifest.csv"}
    assert c.delete("/api/images", params={"ids": f"{mine},{mine},gone"}).json() == {"deleted": 1, "unknown": ["gone"]}
    assert c.get(f"/api/images/{mine}").status_code == 404 and c.get(f"/api/images/{theirs}/files/cells.csv").status_code == 200
    with make_client(clf, max_age_min=1e-4) as c2:  # 6 ms
        iid = upload(c2, png(field(30, 30, centres=()))).json()["id"]
        time.sleep(0.05)
        assert c2.get(f"/api/images/{iid}").status_code == 404
    # over max_mb cached downloads go first (re-created when asked for): one image's ZIP does not evict another in use
    c = make_client(clf)
    [upload(c, png(field(seed=i)), url="/api/images?segment=true") for i in range(2)]
    c = make_client(clf, max_store_mb=(sum(r.nbytes for r in c.app.state.store.all()) + 4096) / 2**20)
    a, b = [upload(c, png(field(seed=i)), url="/api/images?segment=true").json()["id"] for i in range(2)]
    assert len(c.get(f"/api/images/{b}/files/all.zip").content) > 4096  # cached: over the limit now
    assert c.post(f"/api/images/{a}/classify").status_code == 200 and c.get("/api/health").json()["store"]["images"] == 2
    assert not any(r.cache for r in c.app.state.store.all())
    upload(c, png(field(seed=2)))  # an image more than fits: the oldest goes
    assert c.get(f"/api/images/{a}").status_code == 404 and c.get(f"/api/images/{b}").status_code == 200


# --------------------------------------------------------------------------- concurrency
def test_concurrent_requests_all_answered_with_their_own_cells(client) -> None:
    images = {f"f{i}.png": field(seed=i, centres=CENTRES[: 1 + i % 3]) for i in range(8)}

    def one(name: str) -> tuple[str, dict]:
        r = upload(client, png(images[name]), name, "/api/predict")
        assert r.status_code == 200, r.text
        return name, r.json()

    with ThreadPoolExecutor(8) as pool:
        results = dict(pool.map(one, images))
    assert len({r["id"] for r in results.values()}) == 8
    for i, (name, r) in enumerate(sorted(results.items(), key=lambda kv: int(kv[0][1:-4]))):
        assert r["name"] == name and r["count"] == 1 + i % 3


def test_jobs_are_bounded_and_off_the_event_loop(clf) -> None:
    with make_client(clf, jobs=1, queue=1, delay_s=0.6) as c:
        seg = c.app.state.engine.pipe.segmenter
        ids = [upload(c, png(field(seed=i))).json()["id"] for i in range(4)]
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(c.post, f"/api/images/{i}/segment") for i in ids]
            time.sleep(0.15)
            health = c.get("/api/health")  # answered while the model runs (a blocked loop would answer after it)
            codes = sorted(f.result().status_code for f in futures)
        assert health.status_code == 200 and health.json()["jobs_pending"] >= 1
        assert codes == [200, 200, 503, 503] and seg.most_at_once == 1
        busy = next(f.result() for f in futures if f.result().status_code == 503)
        assert "busy" in busy.json()["detail"] and busy.headers["retry-after"] == "1"


def test_during_a_step_an_image_answers_its_last_finished_step_and_holds_up_no_one(clf, monkeypatch) -> None:
    """During a step (Segment again, no cells this time) state, list and crops are the last step's, whole, at once."""
    from wbc import cell_outputs as co

    with make_client(clf, every_user=True) as c, ThreadPoolExecutor(2) as pool:
        before = upload(c, png(field()), url="/api/predict").json()
        iid, c.app.state.engine.pipe.segmenter.blank = before["id"], True
        with held(monkeypatch, co, "cell_rows") as inside:  # Segment stops in there, holding the image's lock
            again = pool.submit(c.post, f"/api/images/{iid}/segment")
            assert inside.wait(10)
            during, listed = pool.submit(lambda: [c.get(u).json() for u in (f"/api/images/{iid}", "/api/images")]).result(timeout=5)
            assert during == before and listed == [{k: v for k, v in before.items() if k != "cells"}]
            crop = pool.submit(c.get, f"/api/images/{iid}/crops/2.png")  # on the event loop, it would wait for the lock
            assert crop.result(timeout=5).status_code == 200 and c.get("/api/health").status_code == 200
        after = again.result().json()
    assert (after["status"], after["count"], after["cells"]) == ("segmented", 0, [])


# --------------------------------------------------------------------------- page, docs, headers
def test_security_headers_and_a_page_without_inline_or_remote_code(client) -> None:
    import re

    from wbc.web.app import STATIC

    r = client.get("/")
    assert r.status_code == 200 and "<canvas" in r.text
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe" not in csp and r.headers["x-content-type-options"] == "nosniff"
    assert client.get("/api/model").headers["x-content-type-options"] == "nosniff"
    scripts = re.findall(r"<script([^>]*)>", r.text)
    assert scripts and all('src="/static/' in s for s in scripts)  # no inline script
    for f in STATIC.iterdir():
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", f.read_text()), f"{f.name} loads something from elsewhere"
    docs = client.get("/docs")
    assert docs.status_code == 200 and "script-src 'self';" in docs.headers["content-security-policy"]
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/images", "/api/images/{image_id}/segment", "/api/images/{image_id}/classify", "/api/images/{image_id}/files/{kind}"} <= set(paths)


def test_model_card(client, clf) -> None:
    m = client.get("/api/model").json()
    assert m["classes"] == clf.hparams.data_info["classes"] and m["has_classifier"] and m["segmenter_input"] == 128
    assert set(m["colours"]) == set(m["classes"]) and m["limits"]["max_file_mb"] == 50
    assert m["appearance_check"] is None  # the tiny modules carry no colour profile
    assert m["software"] is None  # an in-process model: no run dir, no job.json


def test_model_card_names_the_software_a_run_was_trained_with(tmp_path) -> None:
    """A run dir's job.json (or its first fold's, for a sweep dir) says which code and library versions
    trained it; a run without one says nothing."""
    from types import SimpleNamespace

    from wbc import provenance
    from wbc.web.model_info import describe

    software = provenance.software_record()
    (tmp_path / "sweep" / "0").mkdir(parents=True)
    (tmp_path / "sweep" / "0" / "job.json").write_text(json.dumps({"fold": 0, "software": software}))
    shown = {**{k: v for k, v in software.items() if k != "platform"}, "code": software["code"] and {k: v for k, v in software["code"].items() if k != "modified_files"}}
    assert describe(SimpleNamespace(), str(tmp_path / "sweep"), "fold ensemble")["software"] == shown  # no server paths (platform, file names)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "job.json").write_text(json.dumps({"fold": 0}))
    assert describe(SimpleNamespace(), str(tmp_path / "old"), "pipeline run")["software"] is None


def test_review_reasons_reach_table_csv_and_geojson(clf) -> None:
    pipe = web_pipeline(clf)
    pipe.review = lambda shape, instances, probs, views=None, appearance=None: [["low confidence"] if i == 1 else [] for i in range(len(instances))]
    with TestClient(create_app(pipe)) as c:
        s = upload(c, png(field()), url="/api/predict").json()
        assert [x["review"] for x in s["cells"]] == ["", "yes", ""] and s["review_count"] == 1
        rows = list(csv.DictReader(io.StringIO(c.get(f"/api/images/{s['id']}/files/cells.csv").text)))
        assert [r["review_reasons"] for r in rows] == ["", "low confidence", ""]
        feats = c.get(f"/api/images/{s['id']}/files/cells.geojson").json()["features"]
        assert [f["properties"]["measurements"]["review"] for f in feats] == [0, 1, 0]


def test_an_image_unlike_the_training_images_is_flagged_above_it_and_on_every_cell(clf) -> None:
    """With a profile of the drawn fields (wbc.appearance), a yellowed field gets the page's warning and
    the reason on each cell after classify; a field like them gets neither."""
    pipe = web_pipeline(clf)
    pipe.appearance = field_profile()
    pipe.appearance_model = "classifier"  # as if its data_info carried the profile
    yellow = (field(seed=50).astype(np.float32) * np.array([1.0, 0.94, 0.72])).astype(np.uint8)
    with TestClient(create_app(pipe)) as c:
        assert c.get("/api/model").json()["appearance_check"] == {
            "model": "classifier", "training_images": 20, "sources": [{"name": "fields", "images": 20, "threshold": pipe.appearance.components[0].threshold}]}
        same = upload(c, png(field(seed=50)), url="/api/predict").json()
        assert same["appearance"]["unlike_training"] is False and same["appearance_text"] == ""
        assert not any("unlike" in x["review_reasons"] for x in same["cells"])
        seg = upload(c, png(yellow), "yellow.png").json()
        s = c.post(f"/api/images/{seg['id']}/segment").json()
        assert s["appearance"]["unlike_training"] is True and "unlike the classifier's training images" in s["appearance_text"]
        s = c.post(f"/api/images/{seg['id']}/classify").json()
        assert len(s["cells"]) == 3 and all("unlike the classifier's training images" in x["review_reasons"] for x in s["cells"])


def test_all_images_zip_keeps_images_apart_and_says_which_folder_is_which_file(client) -> None:
    """A repeated name gets _2, a long one keeps its end; manifest.csv: folder, file, id, status, cells (guarded)."""
    from wbc.spreadsheet import unguard_row

    long = "Experiment_2024-11-03_Patient-ABC123_Slide04_Giemsa_100x_oil_Field_000{}.tif"
    names = ["same.png", "same.png", long.format(3), long.format(1), long.format(2), "=HYPERLINK(1).png"]
    ids = [upload(client, png(field(seed=i)), n, "/api/images?segment=true").json()["id"] for i, n in enumerate(names)]
    stem = "Experiment_2024-11-03_Patient-_04_Giemsa_100x_oil_Field_000"
    assert client.get(f"/api/images/{ids[3]}/files/cells.csv").headers["content-disposition"] == f'attachment; filename="{stem}1_cells.csv"'
    client.post(f"/api/images/{ids[0]}/classify")
    z = zipfile.ZipFile(io.BytesIO(client.get("/api/files/all.zip", params={"ids": ",".join(ids)}).content))
    rows = [unguard_row(r) for r in csv.DictReader(io.StringIO(z.read("manifest.csv").decode()))]
    assert [r["folder"] for r in rows] == ["same", "same_2", f"{stem}3", f"{stem}1", f"{stem}2", "HYPERLINK_1"]  # by name
    assert [(r["file"], r["image_id"], r["status"], r["cells"]) for r in rows] == [
        (n, i, "classified" if k == 0 else "segmented", "3") for k, (n, i) in enumerate(zip(names, ids))]
    assert "'=HYPERLINK(1).png" in z.read("manifest.csv").decode()  # a spreadsheet shows it as text, does not run it
    assert all(len(list(csv.reader(io.StringIO(z.read(f"{top}/same_cells.csv").decode())))) == 4 for top in ("same", "same_2"))


# --------------------------------------------------------------------------- one writer for predict.py too
def test_predict_writes_the_same_geojson_and_16bit_labels(clf, tmp_path: Path) -> None:
    from wbc.predict_io import predict_images

    path = tmp_path / "in" / "f.png"
    path.parent.mkdir()
    path.write_bytes(png(field()))
    rows, failures = predict_images(web_pipeline(clf), [path], tmp_path / "out")
    assert not failures and len(rows) == 3
    labels = decode((tmp_path / "out" / "labels" / "f.png").read_bytes())
    assert labels.dtype == np.uint16 and set(np.unique(labels)) == {0, 1, 2, 3}
    geo = json.loads((tmp_path / "out" / "geojson" / "f.geojson").read_text())
    table = list(csv.DictReader(io.StringIO((tmp_path / "out" / "predictions.csv").read_text(encoding="utf-8"))))
    check_geojson(geo, labels, clf.hparams.data_info["classes"], table)


# --------------------------------------------------------------------------- cell outlines
def test_every_cell_outline_is_a_valid_polygon_even_for_ragged_cells() -> None:
    """Random ragged 8-connected blobs (one-pixel necks, diagonal touches, single pixels): every
    outline the GeoJSON gets is valid and covers exactly its cell's pixels (holes filled)."""
    cells = list(ragged_cells(20))
    for labels, inst in cells:
        check_outline(labels, inst)
    assert len(cells) > 250


def test_morphology_model_is_averaged_in_and_named_on_the_model_card(clf) -> None:
    """serve.py morphology=: the page's class probabilities are the pipeline's own (predict.py's),
    morphology included, and the model card names the model file."""
    from tests.helpers_models import fixed_morphology_model

    pipe = web_pipeline(clf)
    pipe.use_morphology(fixed_morphology_model(pipe.classes), "lab/morphology.json")
    rgb = field()
    expected = pipe(rgb).class_probs
    with TestClient(create_app(pipe)) as c:
        assert c.get("/api/model").json()["morphology"] == "lab/morphology.json"
        s = upload(c, png(rgb), url="/api/predict").json()
        got = np.array([[cell[f"p_{k}"] for k in pipe.classes] for cell in s["cells"]], dtype=float)
    assert got.shape == expected.shape == (3, len(pipe.classes))
    np.testing.assert_allclose(got, expected, atol=1e-3)
