"""The page in a real browser (issue 15): Python Playwright driving Debian's Chromium
(/usr/bin/chromium, headless; `playwright install` is never used). One image and one non-image are
uploaded; Classify stays hidden until Segment has finished; the table fills; a cell picked in the
table or on the image shows its crop and probability bars; every download arrives and parses; the
theme toggle changes the page's computed background, survives a reload, and the first visit follows
the system's preference; a reload lists the tab's images again with the labels on them (sessionStorage). No console error (a CSP violation would be one). Screenshots of both themes
go to $WBC_SCREENSHOT_DIR (else the test's tmp dir).

Nothing is trained: the dark-nucleus stand-in segmenter and the untrained tiny classifier."""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers_web import CENTRES, field, field_profile, png, tiny_pair, web_pipeline

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def server():
    from wbc.web.app import create_app
    from wbc.web.background import serve_in_background
    from wbc.web.model_info import describe

    clf = copy.deepcopy(tiny_pair()[1])  # adapted below: the shared cached module stays as built
    pipe = web_pipeline(clf, delay_s=0.3)
    pipe.adapt_batchnorm([field(seed=i) for i in range(2)], models=("classifier",))  # serve.py adapt_bn=classifier
    pipe.appearance, pipe.appearance_model = field_profile(), "classifier"  # as if the classifier had been trained on such fields
    card = describe(pipe, None, "in-process model", adapted_folder="lab_images")
    card["software"] = {"python": "3.11.7", "code": {"commit": "0123456789abcdef", "modified": True},
                        "packages": {"torch": "2.14.1", "timm": None}}  # as a run's job.json would give it
    with serve_in_background(create_app(pipe, card)) as url:
        yield url, list(clf.hparams.data_info["classes"])


def wait_until(page, expression: str, timeout_s: float = 60.0) -> None:
    """Poll a JS expression with page.evaluate (the page's CSP forbids the eval that
    wait_for_function's predicates need, which is the point of the CSP)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {expression}")
        time.sleep(0.05)


def background(page) -> str:
    return page.evaluate("getComputedStyle(document.body).backgroundColor")


def parse_download(name: str, data: bytes) -> int:
    """The number of cells a download holds (each format parsed)."""
    if name.endswith(".png"):
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert arr is not None, name
        return len(np.unique(arr)) - 1 if "labels" in name else (3 if arr.size else 0)
    if name.endswith(".csv"):
        return len(list(csv.DictReader(io.StringIO(data.decode("utf-8")))))
    if name.endswith(".geojson"):
        return len(json.loads(data)["features"])
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.testzip() is None, name
        return len([n for n in z.namelist() if "_cell0" in n])


def test_upload_segment_classify_inspect_download_and_theme(browser, server, tmp_path: Path) -> None:
    url, classes = server
    shots = Path(os.environ.get("WBC_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(accept_downloads=True, color_scheme="light", viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    wait_until(page, "document.getElementById('model-line').textContent.includes('neutrophil')")
    assert page.get_attribute("html", "data-theme") == "light"
    # the model card says the classifier was adapted, on how many images of which folder
    assert "classifier: batch-norm statistics from 2 image(s) of lab_images" in page.text_content("#model-info")
    assert "wbc-lab 0123456789 with uncommitted changes, torch 2.14.1, Python 3.11.7" in page.text_content("#model-info")

    # one good image and one bad file: the bad one says why, the good one goes on
    page.set_input_files("#file-input", [
        {"name": "smear.png", "mimeType": "image/png", "buffer": png(field())},
        {"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image at all"},
    ])
    page.wait_for_selector("#image-list .status.error")
    assert "notes.png: not an image file" in page.inner_text("#image-list")
    wait_until(page, "[...document.querySelectorAll('#image-list .status')].some(s => s.textContent === 'uploaded')")
    assert page.is_hidden("#classify-btn") and page.is_enabled("#segment-btn")

    page.click("#segment-btn")
    page.wait_for_selector("#image-list .status.busy")
    assert page.is_hidden("#classify-btn")  # not while segmenting
    page.wait_for_selector("#classify-btn", state="visible")
    assert page.inner_text("#summary") == "3 cells (not classified yet)"
    assert not page.is_hidden("#downloads") and page.is_hidden("#appearance-line")  # a field like the training ones

    page.click("#classify-btn")
    wait_until(page, "document.getElementById('summary').textContent.startsWith('3 cells: ')")
    rows = page.locator("#cell-table tbody tr")
    assert rows.count() == 3 and all(rows.nth(i).locator("td").nth(1).inner_text().strip() in classes for i in range(3))

    rows.nth(1).click()  # a row -> the cell's crop and bars
    wait_until(page, "document.getElementById('cell-crop').complete && document.getElementById('cell-crop').naturalWidth > 0")
    assert page.locator("#cell-probs .bar-row").count() == len(classes)
    assert page.inner_text("#cell-title").startswith("Cell 2: ")
    box = page.locator("#canvas").bounding_box()  # a click on the image -> that cell's row
    cy, cx = CENTRES[0]
    page.mouse.click(box["x"] + (cx + 0.5) / 160 * box["width"], box["y"] + (cy + 0.5) / 100 * box["height"])
    selected = page.locator("#cell-table tbody tr.selected")
    assert selected.count() == 1 and page.inner_text("#cell-title").startswith(f"Cell {selected.get_attribute('data-cell')}: ")
    for mode in ("fill", "off", "outline"):
        page.check(f"input[name=overlay][value={mode}]")
    page.uncheck("#show-labels")
    page.check("#show-labels")

    kinds = page.locator("#downloads a")
    for i in range(kinds.count()):
        with page.expect_download() as info:
            kinds.nth(i).click()
        d = info.value
        assert parse_download(d.suggested_filename, Path(d.path()).read_bytes()) == 3, d.suggested_filename
    with page.expect_download() as info:
        page.click("#download-all")
    assert parse_download("all.zip", Path(info.value.path()).read_bytes()) == 3

    page.screenshot(path=str(shots / "web_day.png"), full_page=True)
    day = background(page)
    page.click("#theme-toggle")
    dark = background(page)
    assert page.get_attribute("html", "data-theme") == "dark" and dark != day
    page.screenshot(path=str(shots / "web_dark.png"), full_page=True)
    page.reload()
    page.wait_for_selector("#theme-toggle")
    assert page.get_attribute("html", "data-theme") == "dark" and background(page) == dark
    page.click("#theme-toggle")
    assert background(page) == day
    # the one expected error: the browser logs the refused upload (400); nothing else, no CSP violation
    assert [e for e in errors if "status of 400" not in e] == [] and len(errors) == 1, errors
    context.close()

    fresh = browser.new_context(color_scheme="dark")  # a first visit follows the system's preference
    p2 = fresh.new_page()
    p2.goto(url)
    assert p2.get_attribute("html", "data-theme") == "dark" and background(p2) == dark
    fresh.close()


def test_batch_of_images_and_the_api_docs(browser, server) -> None:
    """Segment all / Classify all over three images with batch progress; "Download all as ZIP" and "Remove all"
    take this page's images only, not another user's on the same server; /docs renders offline under the CSP."""
    import httpx

    url, _ = server
    other = httpx.post(f"{url}/api/predict", files={"file": ("other_user.png", png(field(seed=9)), "image/png")}, timeout=60).json()["id"]
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    held, posts = [], []

    def hold_third_upload(route) -> None:  # the third image is still on its way when the first two have arrived
        posts.append(route)
        if len(posts) == 3:
            held.append(route)
        else:
            route.continue_()

    page.route("**/api/images", lambda route: hold_third_upload(route) if route.request.method == "POST" else route.continue_())
    page.set_input_files("#file-input", [
        {"name": f"b{i}.png", "mimeType": "image/png", "buffer": png(field(seed=i, centres=CENTRES[: i + 1]))} for i in range(3)
    ])
    wait_until(page, "[...document.querySelectorAll('#image-list .status')].filter(s => s.textContent === 'uploaded').length === 2")
    assert held and page.is_disabled("#segment-all")  # "Segment all" waits for every image, not only those that arrived
    held[0].continue_()
    wait_until(page, "!document.getElementById('segment-all').disabled")
    assert page.is_hidden("#classify-all")
    page.click("#segment-all")
    page.wait_for_selector("#batch-progress", state="visible")
    wait_until(page, "document.getElementById('batch-text').textContent === 'Segmented 3 of 3'")
    assert page.is_visible("#classify-all")
    page.click("#classify-all")
    wait_until(page, "[...document.querySelectorAll('#image-list .status')].filter(s => s.textContent.startsWith('classified')).length === 3")
    statuses = page.locator("#image-list .status").all_inner_texts()
    assert statuses == ["classified · 1 cell", "classified · 2 cells", "classified · 3 cells"], statuses

    ids = page.evaluate("st.items.map((it) => it.id)")
    assert page.get_attribute("#download-all", "href") == "/api/files/all.zip?ids=" + ",".join(ids)
    with page.expect_download() as info:
        page.click("#download-all")
    with zipfile.ZipFile(info.value.path()) as z:
        manifest = list(csv.DictReader(io.StringIO(z.read("manifest.csv").decode())))
    assert [r["image_id"] for r in manifest] == ids and [r["file"] for r in manifest] == ["b0.png", "b1.png", "b2.png"]
    page.click("#clear-all")  # no labels: nothing to ask
    wait_until(page, "document.querySelectorAll('#image-list li').length === 0")
    assert [httpx.get(f"{url}/api/images/{i}").status_code for i in ids] == [404] * 3
    assert httpx.post(f"{url}/api/images/{other}/classify", timeout=60).status_code == 200  # the other user's image stays
    page.goto(url + "/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=20_000)
    assert page.locator(".swagger-ui .opblock").count() >= 10
    assert not errors, errors
    page.close()


def test_a_lab_labels_cells_blind_and_downloads_them_for_compare(browser, server, tmp_path: Path) -> None:
    """Blind labelling: the model's calls leave the table, the cell panel, the summary and the overlay; labels
    are points that survive a new segmentation; the CSV download is what compare.py reads, and its points
    fall on the labelled cells; removing a labelled image asks first."""
    from wbc.annotations import match_cell, read_points

    url, classes = server
    page = browser.new_page(accept_downloads=True)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    wait_until(page, "document.getElementById('model-line').textContent.includes('neutrophil')")
    name = "=lab, field 1.png"  # a spreadsheet would run a field starting with '=': the CSV must not
    page.set_input_files("#file-input", [{"name": name, "mimeType": "image/png", "buffer": png(field())}])
    wait_until(page, "!document.getElementById('segment-btn').disabled")
    page.click("#segment-btn")
    page.wait_for_selector("#classify-btn", state="visible")
    page.click("#classify-btn")
    wait_until(page, "document.getElementById('summary').textContent.startsWith('3 cells: ')")
    assert page.is_hidden("#download-labels")

    page.check("#blind")
    rows = page.locator("#cell-table tbody tr")
    assert [rows.nth(i).locator("td").nth(1).inner_text() for i in range(3)] == ["hidden"] * 3
    assert page.inner_text("#summary") == "3 cells (the model's calls hidden)"
    rows.nth(0).click()
    assert page.inner_text("#cell-title") == "Cell 1" and "hidden while you label" in page.inner_text("#cell-probs")
    page.select_option("#cell-label", classes[1])
    rows.nth(2).click()
    page.select_option("#cell-label", classes[0])
    assert [rows.nth(i).locator("td.yours").inner_text() for i in range(3)] == [classes[1], "", classes[0]]
    assert page.inner_text("#download-labels") == "Download my labels (CSV, 2 cells)"

    leaving = "(() => { const e = new Event('beforeunload', { cancelable: true }); window.dispatchEvent(e); return e.defaultPrevented; })()"
    assert page.evaluate(leaving)  # labels not downloaded yet: leaving the page asks first
    page.click("#segment-btn")  # segmented again: the labels are points, they stay with their cells
    wait_until(page, "document.getElementById('summary').textContent === '3 cells (not classified yet)'")
    assert [rows.nth(i).locator("td.yours").inner_text() for i in range(3)] == [classes[1], "", classes[0]]
    with page.expect_download() as info:
        page.click("#download-labels")
    path = Path(info.value.path())
    assert not page.evaluate(leaving)  # downloaded: nothing to lose
    assert f'"\'{name}"' in path.read_text()  # quoted (the comma) and guarded (the '=')
    points, unlabelled = read_points(path, classes)
    assert (len(points), unlabelled) == (2, 0) and {p.image for p in points} == {name}  # read back exactly
    cells = page.evaluate("st.items[0].data.cells")
    found = [match_cell([{**c, "class": str(c["cell"])} for c in cells], p.x, p.y, 0.0)["cell"] for p in points]
    assert found == [1, 3] and [p.label for p in points] == [classes[1], classes[0]]

    page.uncheck("#blind")
    rows.nth(0).click()
    assert page.inner_text("#cell-title").startswith("Cell 1") and page.input_value("#cell-label") == classes[1]
    page.click("#image-list .remove")  # a confirm() the test leaves unanswered: dismissed, nothing removed
    assert page.locator("#image-list li").count() == 1 and not page.is_hidden("#download-labels")
    assert not errors, errors
    page.close()


def test_an_image_unlike_the_training_images_shows_a_warning_above_it(browser, server) -> None:
    """A yellowed field (another lab's light): the page says so above the image, and every cell is flagged."""
    url, _ = server
    page = browser.new_page()
    page.goto(url)
    yellow = (field(seed=60).astype(np.float32) * np.array([1.0, 0.94, 0.72])).astype(np.uint8)
    page.set_input_files("#file-input", [{"name": "other_lab.png", "mimeType": "image/png", "buffer": png(yellow)}])
    wait_until(page, "[...document.querySelectorAll('#image-list .status')].some(s => s.textContent === 'uploaded')")
    page.click("#segment-btn")
    page.wait_for_selector("#appearance-line", state="visible")
    assert "unlike the classifier's training images" in page.inner_text("#appearance-line")
    page.wait_for_selector("#classify-btn", state="visible")
    page.click("#classify-btn")
    wait_until(page, "document.getElementById('summary').textContent.startsWith('3 cells: ')")
    assert page.locator("#cell-table tbody .flag").count() == 3
    page.close()


def test_a_reload_restores_this_tabs_images_that_the_server_still_has(browser, server) -> None:
    """The page keeps its images' ids in sessionStorage: a reload lists again those the server still has, at
    their last step, and forgets one it answers 404 for (expired or deleted meanwhile); another tab (its
    own sessionStorage) lists none of them."""
    import httpx

    url, _ = server
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.set_input_files("#file-input", [{"name": f"r{i}.png", "mimeType": "image/png", "buffer": png(field(seed=i))} for i in range(2)])
    wait_until(page, "[...document.querySelectorAll('#image-list .status')].filter(s => s.textContent === 'uploaded').length === 2")
    page.click("#segment-all")
    wait_until(page, "[...document.querySelectorAll('#image-list .status')].filter(s => s.textContent.startsWith('segmented')).length === 2")
    ids = page.evaluate("st.items.map((it) => it.id)")
    assert httpx.delete(f"{url}/api/images/{ids[1]}").status_code == 204  # as if it had expired

    page.reload()
    wait_until(page, "st.items.length === 1 && st.items[0].img !== null && document.getElementById('summary').textContent !== ''")
    assert page.locator("#image-list li").count() == 1 and page.inner_text("#image-list .name") == "r0.png"
    assert page.inner_text("#image-list .status") == "segmented · 3 cells" and page.evaluate("st.items[0].id") == ids[0]
    assert page.inner_text("#summary") == "3 cells (not classified yet)" and page.is_visible("#canvas") and page.is_visible("#downloads")
    assert page.get_attribute("#download-all", "href") == f"/api/files/all.zip?ids={ids[0]}"
    assert json.loads(page.evaluate("sessionStorage.getItem('wbc-images')")) == [{"id": ids[0], "name": "r0.png"}]

    other = context.new_page()  # another tab of the same browser: its own list
    other.goto(url)
    wait_until(other, "document.getElementById('model-line').textContent.includes('neutrophil')")
    assert other.locator("#image-list li").count() == 0
    page.click("#clear-all")
    wait_until(page, "document.querySelectorAll('#image-list li').length === 0")
    assert page.evaluate("sessionStorage.getItem('wbc-images')") == "[]"
    # the one expected error: the browser logs the 404 for the image deleted meanwhile
    assert [e for e in errors if "status of 404" not in e] == [] and len(errors) == 1, errors
    context.close()


def test_a_reload_keeps_the_labels_and_an_expired_images_labels(browser, server, tmp_path: Path) -> None:
    """Labels survive a reload of the tab: on an image the server still has they are back in the table, on one
    it no longer has the image stays listed, saying so, and its labels stay in the CSV; a reload before the
    download still asks before leaving, one after it does not."""
    import httpx

    from wbc.annotations import read_points

    url, classes = server
    page = browser.new_page(accept_downloads=True)
    page.goto(url)
    wait_until(page, "document.getElementById('model-line').textContent.includes('neutrophil')")
    page.set_input_files("#file-input", [{"name": f"k{i}.png", "mimeType": "image/png", "buffer": png(field(seed=i))} for i in range(2)])
    wait_until(page, "[...document.querySelectorAll('#image-list .status')].filter(s => s.textContent === 'uploaded').length === 2")
    page.click("#segment-all")
    wait_until(page, "[...document.querySelectorAll('#image-list .status')].filter(s => s.textContent.startsWith('segmented')).length === 2")
    rows = page.locator("#cell-table tbody tr")
    for i, label in enumerate([classes[1], classes[2]]):
        page.locator("#image-list li .name").nth(i).click()
        rows.nth(i).click()
        page.select_option("#cell-label", label)
    assert page.inner_text("#download-labels") == "Download my labels (CSV, 2 cells)"
    ids = page.evaluate("st.items.map((it) => it.id)")
    assert httpx.delete(f"{url}/api/images/{ids[1]}").status_code == 204  # as if it had expired

    page.reload()
    wait_until(page, "st.items.length === 2 && st.items[0].img !== null && st.items[1].status === 'error'")
    page.locator("#image-list li .name").nth(0).click()
    assert [rows.nth(i).locator("td.yours").inner_text() for i in range(3)] == [classes[1], "", ""]
    assert "no longer on the server" in page.inner_text("#image-list") and "1 label(s) on it" in page.inner_text("#image-list")
    assert page.inner_text("#download-labels") == "Download my labels (CSV, 2 cells)"
    leaving = "(() => { const e = new Event('beforeunload', { cancelable: true }); window.dispatchEvent(e); return e.defaultPrevented; })()"
    assert page.evaluate(leaving)  # not downloaded before the reload: still asks
    with page.expect_download() as info:
        page.click("#download-labels")
    points, _ = read_points(Path(info.value.path()), classes)
    assert sorted((p.image, p.label) for p in points) == [("k0.png", classes[1]), ("k1.png", classes[2])]

    page.reload()
    wait_until(page, "st.items.length === 2 && st.items[1].status === 'error'")
    assert not page.evaluate(leaving)  # downloaded before this reload: nothing to lose
    page.locator("#image-list li .name").nth(1).click()
    assert page.is_disabled("#segment-btn")  # nothing to segment: its image is gone
    # the same file uploaded again takes over its labels (else the CSV would hold that cell twice, which
    # compare.py refuses); another file of that name would not
    page.set_input_files("#file-input", [{"name": "k1.png", "mimeType": "image/png", "buffer": png(field(seed=1))}])
    wait_until(page, "st.items.length === 2 && st.items[1].status === 'uploaded'")
    assert page.evaluate("st.items.map((it) => it.marks.length)") == [1, 1] and "no longer on the server" not in page.inner_text("#image-list")
    assert page.inner_text("#download-labels") == "Download my labels (CSV, 2 cells)"
    page.click("#segment-btn")
    wait_until(page, "document.getElementById('summary').textContent === '3 cells (not classified yet)'")
    assert [rows.nth(i).locator("td.yours").inner_text() for i in range(3)] == ["", classes[2], ""]
    page.close()
