"""What the server says when something fails: a 500 carries the same security headers as every other
answer and a generic message with an error id (the exception, which can quote server paths, goes to the log
under that id); a client that hangs up mid-upload is logged in one info line; an upload whose segment step
fails or is refused (busy) is deleted, since nobody got its id and it would evict other people's images."""

from __future__ import annotations

import asyncio
import logging

import pytest
from starlette.requests import ClientDisconnect

from tests.helpers_web import field, make_client, png, tiny_pair, upload
from wbc.web.guard import CSP, GuardedResponses
from wbc.web.jobs import Busy

pytestmark = pytest.mark.usefixtures("one_thread")
SECRET = "/home/labuser/secret/outputs/run1/model.ckpt"
HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff", "x-frame-options": "DENY",
           "referrer-policy": "no-referrer", "cache-control": "no-store"}


@pytest.fixture(scope="module")
def clf():
    return tiny_pair()[1]


def test_a_500_has_the_security_headers_and_an_error_id_not_the_exception(clf, monkeypatch, caplog) -> None:
    c = make_client(clf)
    iid = upload(c, png(field())).json()["id"]

    def boom(*_args, **_kwargs):
        raise OSError(2, "No such file", SECRET)

    monkeypatch.setattr(c.app.state.engine.pipe, "segment", boom)
    with caplog.at_level(logging.INFO, logger="wbc"):
        r = c.post(f"/api/images/{iid}/segment")
    assert r.status_code == 500
    assert {k: r.headers.get(k) for k in HEADERS} == HEADERS
    body = r.json()
    assert "secret" not in r.text and "OSError" not in r.text and body["error_id"] in body["detail"]
    logged = [rec for rec in caplog.records if rec.levelno == logging.ERROR and body["error_id"] in rec.getMessage()]
    assert len(logged) == 1 and SECRET in str(logged[0].exc_info[1])  # the details are in the log, under the id
    assert c.get(f"/api/images/{iid}").headers["content-security-policy"] == CSP  # and the image is still usable
    assert c.get("/no/such/page").headers["x-frame-options"] == "DENY"


def test_a_client_gone_mid_upload_is_one_info_line(caplog) -> None:
    async def hangs_up(scope, receive, send):
        raise ClientDisconnect()

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/api/images", "headers": []}
    with caplog.at_level(logging.INFO, logger="wbc"):
        asyncio.run(GuardedResponses(hangs_up)(scope, receive, send))
    assert sent == []  # nobody to answer
    assert [(r.levelno, r.exc_info) for r in caplog.records] == [(logging.INFO, None)]
    assert "went away" in caplog.records[0].getMessage()


@pytest.mark.parametrize("url", ["/api/predict", "/api/images?segment=true"])
@pytest.mark.parametrize("failure", ["busy", "error"])
def test_an_upload_whose_segment_step_fails_is_not_kept(clf, monkeypatch, url: str, failure: str) -> None:
    c = make_client(clf)
    mine = upload(c, png(field())).json()["id"]
    engine, runner = c.app.state.engine, c.app.state.runner
    run = runner.run

    async def refuse_steps(fn, *args):
        if fn is not engine.decode:
            raise Busy("the server is busy")
        return await run(fn, *args)

    def fails(*_args, **_kwargs):
        raise RuntimeError("the segmenter failed")

    if failure == "busy":
        monkeypatch.setattr(runner, "run", refuse_steps)
    else:
        monkeypatch.setattr(engine.pipe, "segment", fails)
    r = upload(c, png(field(seed=1)), "other.png", url)
    assert r.status_code == (503 if failure == "busy" else 500), r.text
    assert [rec.id for rec in c.app.state.store.all()] == [mine]  # no orphan counting toward max_images
