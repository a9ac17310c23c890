"""The page in a real browser (as tests/test_web_e2e.py: Python Playwright driving Debian's Chromium, never
`playwright install`), on the defects a review of the page found: a label on a curved nucleus, "Segment all"
and an image stepped by hand meanwhile, removing images still uploading, an image expiring while the tab is
open, a file name over 120 characters, the review flag in blind mode, "busy" answers in a batch, a double click
on "Classify all", and the keyboard and dark theme.

Nothing is trained: the dark-nucleus stand-in segmenter (slowed a little, so that batches overlap the clicks)
and the untrained tiny classifier."""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.helpers_web import curved_field, field, png, tiny_pair, web_pipeline

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("one_thread")]
LOADED = "document.getElementById('model-line').textContent.includes('neutrophil')"
YOURS = "[...document.querySelectorAll('#cell-table td.yours')].map((t) => t.textContent)"


@pytest.fixture(scope="module")
def server():
    """(url, classes, decode delay): a server whose every classified cell is flagged for review, whose
    segmenter takes 0.4 s, and whose decoding of an upload waits decode["s"] seconds."""
    from wbc.review import ReviewOptions
    from wbc.web.app import create_app
    from wbc.web.background import serve_in_background
    from wbc.web.model_info import describe

    clf = copy.deepcopy(tiny_pair()[1])
    pipe = web_pipeline(clf, delay_s=0.4)
    pipe.review_options = ReviewOptions(min_probability=0.99)  # the untrained classifier is never that sure
    app = create_app(pipe, describe(pipe, None, "in-process model"))
    engine, decode, real = app.state.engine, {"s": 0.0}, app.state.engine.decode

    def slow_decode(data: bytes, name: str):
        time.sleep(decode["s"])
        return real(data, name)

    engine.decode = slow_decode
    with serve_in_background(app) as url:
        yield url, list(clf.hparams.data_info["classes"]), decode


def wait_until(page, expression: str, timeout_s: float = 60.0) -> None:
    """Poll a JS expression (the page's CSP forbids the eval wait_for_function needs)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {expression}")
        time.sleep(0.05)


def open_page(browser, url: str, **kw):
    page = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 900}, **kw).new_page()
    page.goto(url)
    wait_until(page, LOADED)
    return page


def add(page, files: dict[str, bytes]) -> None:
    page.set_input_files("#file-input", [{"name": n, "mimeType": "image/png", "buffer": b} for n, b in files.items()])


def labels_csv(page) -> list[list[str]]:
    import csv

    with page.expect_download() as info:
        page.click("#download-labels")
    return list(csv.reader(Path(info.value.path()).read_text().splitlines()))[1:]


def segment_current(page) -> None:
    page.click("#segment-btn")
    wait_until(page, "st.current.status === 'segmented'")


def images_on_server(url: str) -> int:
    return httpx.get(f"{url}/api/health").json()["store"]["images"]


def posts(page) -> list[str]:
    """The POSTs the page sends, as 'segment:<image id>' ('upload' for an upload)."""
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url.split("/")[-1] + ":" + r.url.split("/")[-2] if r.url.split("/")[-1] in ("segment", "classify") else "upload") if r.method == "POST" else None)
    return sent


def test_a_label_on_a_curved_nucleus_attaches_to_its_cell(browser, server) -> None:
    """A band neutrophil's arc: its centroid lies outside it. The label is put inside the cell, the table
    shows it, a second label replaces it, and compare.py's match finds the cell under the CSV's point."""
    from wbc.annotations import match_cell

    url, classes, _ = server
    page = open_page(browser, url)
    add(page, {"band.png": png(curved_field("arc"))})
    wait_until(page, "!document.getElementById('segment-btn').disabled")
    segment_current(page)
    page.locator("#cell-table tbody tr[data-cell='2']").click()
    page.select_option("#cell-label", classes[0])
    assert page.evaluate(YOURS) == ["", classes[0]]
    page.locator("#cell-table tbody tr[data-cell='1']").click()
    page.locator("#cell-table tbody tr[data-cell='2']").click()
    assert page.input_value("#cell-label") == classes[0]
    page.select_option("#cell-label", classes[1])  # replaces it: one row per cell
    rows = labels_csv(page)
    assert [(r[0], r[3]) for r in rows] == [("band.png", classes[1])]
    cells = page.evaluate("st.current.data.cells")
    assert match_cell([{**c, "class": c["cell"]} for c in cells], float(rows[0][1]), float(rows[0][2]), 0.0)["cell"] == 2
    # a label a tab kept from before (at the cell's centroid, outside it) still belongs to the cell
    centre = page.evaluate("[st.current.data.cells[1].centroid_x, st.current.data.cells[1].centroid_y]")
    page.evaluate(f"st.current.marks = [{{ x: {centre[0]}, y: {centre[1]}, label: '{classes[2]}' }}]; renderTable(st.current.data.cells)")
    assert page.evaluate(YOURS) == ["", classes[2]]
    page.locator("#cell-table tbody tr[data-cell='2']").click()
    page.select_option("#cell-label", classes[0])
    assert [r[3] for r in labels_csv(page)] == [classes[0]]
    page.context.close()


def segment_all(browser, url: str, prefix: str, n: int):
    """A page with n synthetic fields added (<prefix>0.png, ...) and Segment all clicked; (page, its POSTs)."""
    page = open_page(browser, url)
    sent = posts(page)
    add(page, {f"{prefix}{i}.png": png(field(seed=i)) for i in range(n)})
    wait_until(page, "!document.getElementById('segment-all').disabled")
    page.click("#segment-all")
    return page, sent


def test_segment_all_skips_an_image_the_lab_segmented_and_classified_by_hand_meanwhile(browser, server) -> None:
    url, _, _ = server
    page, sent = segment_all(browser, url, "b", 6)
    page.locator("#image-list li .name").nth(5).click()  # still waiting its turn in the batch
    segment_current(page)
    page.click("#classify-btn")
    wait_until(page, "st.current.status === 'classified'")
    wait_until(page, "!st.batching && st.busy === 0")
    last = page.evaluate("st.items[5].id")
    assert page.evaluate("st.items.map((it) => it.status)") == ["segmented"] * 5 + ["classified"]
    assert Counter(sent)[f"segment:{last}"] == 1
    assert "done meanwhile" in page.inner_text("#batch-text")
    page.context.close()


def test_remove_all_and_the_cross_leave_no_upload_on_the_server(browser, server) -> None:
    """Images removed while waiting to upload are never sent; those on their way are deleted when they arrive."""
    url, _, decode = server
    page = open_page(browser, url)
    sent = posts(page)
    before = images_on_server(url)
    decode["s"] = 0.6
    try:
        add(page, {f"r{i}.png": png(field(seed=i)) for i in range(5)})
        wait_until(page, "st.items.filter((it) => it.status === 'uploading').length === 2")
        page.click("#clear-all")
        assert page.locator("#image-list li").count() == 0
        add(page, {"x.png": png(field(seed=9))})
        wait_until(page, "st.items.length === 1 && st.items[0].status === 'uploading'")
        page.click("#image-list .remove")
        assert page.locator("#image-list li").count() == 0
        time.sleep(2.5)  # the uploads on their way arrive, and are deleted
    finally:
        decode["s"] = 0.0
    deadline = time.monotonic() + 10
    while images_on_server(url) != before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert images_on_server(url) == before
    assert sent.count("upload") == 3  # two of the five were on their way, and the one removed with ×
    assert page.evaluate("sessionStorage.getItem('wbc-images')") == "[]"
    page.context.close()


def test_an_image_expiring_while_the_tab_is_open_hands_its_labels_to_the_same_file_uploaded_again(browser, server) -> None:
    url, classes, _ = server
    page = open_page(browser, url)
    data = png(field(seed=3))
    add(page, {"s.png": data})
    wait_until(page, "st.items.every((it) => it.status === 'uploaded')")
    segment_current(page)
    page.locator("#cell-table tbody tr").nth(0).click()
    page.select_option("#cell-label", classes[0])
    assert httpx.delete(f"{url}/api/images/{page.evaluate('st.items[0].id')}").status_code == 204  # as expiry would
    page.click("#segment-btn")
    wait_until(page, "st.busy === 0")
    assert page.evaluate("st.items[0].expired") and "no longer on the server" in page.inner_text("#image-list")
    assert page.is_disabled("#segment-btn")
    add(page, {"s.png": data})
    wait_until(page, "st.items.length === 1 && st.items[0].status === 'uploaded'")
    assert page.evaluate("st.items[0].marks.length") == 1
    segment_current(page)
    assert page.evaluate(YOURS) == [classes[0], "", ""]
    page.locator("#cell-table tbody tr").nth(0).click()
    page.select_option("#cell-label", classes[1])
    assert [r[3] for r in labels_csv(page)] == [classes[1]]  # one row for the cell, not two
    page.context.close()


def test_a_long_file_name_stays_whole_in_the_labels_csv_after_a_reload(browser, server) -> None:
    url, classes, _ = server
    name = "2024-05-01_Haematology-Lab_Patient-Study-Omega_Slide-0042_Objective-100x-Oil_Camera-DFC450_Exposure-12ms_Stitched_Region-07_Field_0001.png"
    assert len(name) > 120  # the server shows 120 characters (wbc.web.store.display_name)
    page = open_page(browser, url)
    add(page, {name: png(field())})
    wait_until(page, "st.items.every((it) => it.status === 'uploaded')")
    segment_current(page)
    page.locator("#cell-table tbody tr").nth(0).click()
    page.select_option("#cell-label", classes[0])
    assert [r[0] for r in labels_csv(page)] == [name]
    page.reload()
    wait_until(page, "st.items.length === 1 && st.items[0].status === 'segmented'")
    page.locator("#cell-table tbody tr").nth(1).click()
    page.select_option("#cell-label", classes[1])
    assert [r[0] for r in labels_csv(page)] == [name, name]
    page.context.close()


def test_blind_mode_hides_the_review_flags_and_their_reasons(browser, server) -> None:
    url, _, _ = server
    page = open_page(browser, url)
    add(page, {"f.png": png(field())})
    wait_until(page, "st.items.every((it) => it.status === 'uploaded')")
    segment_current(page)
    page.click("#classify-btn")
    wait_until(page, "st.current.status === 'classified'")
    flags = "[...document.querySelectorAll('#cell-table tbody tr')].map((tr) => [...tr.children].map((td) => td.textContent + td.title).join('|'))"
    assert all("review" in row for row in page.evaluate(flags))  # every cell flagged on this server
    page.check("#blind")
    rows = page.evaluate(flags)
    assert len(rows) == 3 and not any("review" in row or "probability" in row for row in rows), rows
    page.uncheck("#blind")
    assert all("review" in row for row in page.evaluate(flags))
    page.context.close()


def test_a_batch_asks_again_after_busy_and_counts_its_failures(browser, server) -> None:
    url, _, _ = server
    page = open_page(browser, url)
    sent = posts(page)
    answered: Counter = Counter()

    def busy_once_then_fail_one(route) -> None:
        image = route.request.url.split("/")[-2]
        answered[image] += 1
        if image == failing and answered[image] == 1:
            route.fulfill(status=500, content_type="application/json", body=json.dumps({"detail": "broken"}))
        elif answered[image] == 1:
            route.fulfill(status=503, headers={"Retry-After": "1"}, content_type="application/json", body=json.dumps({"detail": "busy"}))
        else:
            route.continue_()

    add(page, {f"e{i}.png": png(field(seed=i)) for i in range(3)})
    wait_until(page, "!document.getElementById('segment-all').disabled")
    failing = page.evaluate("st.items[2].id")
    page.route("**/segment", busy_once_then_fail_one)
    page.click("#segment-all")
    wait_until(page, "!st.batching && st.busy === 0", 30)
    assert page.evaluate("st.items.map((it) => it.status)") == ["segmented", "segmented", "uploaded"]
    assert page.inner_text("#batch-text") == "Segmented 2 of 3, 1 failed (see the list)"
    assert page.is_visible("#batch-progress")  # stays up when something failed
    assert sorted(Counter(s for s in sent if s.startswith("segment")).values()) == [1, 2, 2]
    page.context.close()


def test_a_double_click_on_classify_all_classifies_each_image_once(browser, server) -> None:
    url, _, _ = server
    page, sent = segment_all(browser, url, "c", 4)
    wait_until(page, "!st.batching && st.busy === 0 && st.items.every((it) => it.status === 'segmented')")
    page.dblclick("#classify-all")
    wait_until(page, "!st.batching && st.busy === 0 && st.items.every((it) => it.status === 'classified')")
    assert Counter(s.split(":")[0] for s in sent) == Counter(upload=4, segment=4, classify=4)
    page.context.close()


def test_the_image_list_works_from_the_keyboard_and_the_dark_theme_darkens_the_controls(browser, server) -> None:
    url, _, _ = server
    page = open_page(browser, url, color_scheme="light")
    add(page, {"k0.png": png(field(seed=0)), "k1.png": png(field(seed=1))})
    wait_until(page, "st.items.every((it) => it.status === 'uploaded')")
    assert page.evaluate("st.current.name") == "k0.png"
    page.locator("#image-list li .name").nth(0).focus()
    page.keyboard.press("Tab")  # the first row's ×, then the second row's name
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    assert page.evaluate("st.current.name") == "k1.png"
    assert page.evaluate("document.activeElement.textContent") == "k1.png"  # the focus stays on the row picked
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    page.keyboard.press(" ")
    assert page.evaluate("st.current.name") == "k0.png"
    scheme = "getComputedStyle(document.documentElement).colorScheme"
    assert page.evaluate(scheme) == "light"
    page.click("#theme-toggle")
    assert page.get_attribute("html", "data-theme") == "dark" and page.evaluate(scheme) == "dark"
    page.context.close()
