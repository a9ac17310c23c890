"""Uploads in progress are bounded: at most `uploads` bodies are read at once (each is held in memory),
one more is told "busy" (503, Retry-After) at once, and a client that stalls mid-body is refused after
upload_timeout_s (408) instead of holding its memory forever. A real uvicorn server: the TestClient sends
a body in one piece. The model card names no server path."""

from __future__ import annotations

import http.client
import json
import socket
import time
from types import SimpleNamespace

import pytest

from tests.helpers_web import field, png, tiny_pair, web_pipeline
from wbc.web.app import Settings, create_app
from wbc.web.background import serve_in_background
from wbc.web.model_info import describe

pytestmark = pytest.mark.usefixtures("one_thread")
BOUNDARY = "bnd"


def multipart(data: bytes, name: str = "field.png") -> bytes:
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n\r\n'.encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def post(port: int, body: bytes) -> tuple[int, dict, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("POST", "/api/images", body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    r = conn.getresponse()
    answer = (r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(r.read()))
    conn.close()
    return answer


def stalled(port: int, body: bytes) -> socket.socket:
    """A client that sends the headers and half its body, then nothing."""
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    s.sendall(f"POST /api/images HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
              f"Content-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2])
    return s


def test_uploads_at_once_are_bounded_and_a_stalled_one_times_out() -> None:
    app = create_app(web_pipeline(tiny_pair()[1]), settings=Settings(uploads=1, upload_timeout_s=1.5))
    body = multipart(png(field()))
    with serve_in_background(app) as url:
        port = int(url.rsplit(":", 1)[1])
        slow = stalled(port, body)
        time.sleep(0.3)  # its body is being read: the one slot is taken
        t0 = time.monotonic()
        status, headers, answer = post(port, body)
        assert (status, headers.get("retry-after")) == (503, "1") and "uploads" in answer["detail"], answer
        assert time.monotonic() - t0 < 1.0  # at once, not after the stalled one
        reply = slow.recv(4096)
        slow.close()
        assert reply.startswith(b"HTTP/1.1 408") and b"content-security-policy" in reply.lower(), reply[:300]
        assert time.monotonic() - t0 < 5
        status, _, answer = post(port, body)  # the slot was given back
        assert status == 200 and answer["name"] == "field.png"


def test_the_model_card_shows_no_server_path(tmp_path) -> None:
    run = tmp_path / "outputs" / "pipeline" / "runs" / "2024-05-01_10-00-00"
    run.mkdir(parents=True)
    software = {"python": "3.11", "platform": "Linux-6.1-x86_64-with-glibc2.36 labpc-07", "packages": {"torch": "2.3"},
                "code": {"commit": "a" * 40, "modified": True, "modified_files": ["conf/local/secret_paths.yaml"]}}
    (run / "job.json").write_text(json.dumps({"software": software}))
    pipe = SimpleNamespace(adapted_on=5, adapted_models=["classifier"])
    card = describe(pipe, str(run), "pipeline run", adapted_folder=str(tmp_path / "lab" / "smears"))
    assert card["source"] == "pipeline/runs/2024-05-01_10-00-00"
    assert card["adapted"]["folder"] == "smears"
    assert card["software"] == {"python": "3.11", "packages": {"torch": "2.3"}, "code": {"commit": "a" * 40, "modified": True}}
    shown = json.dumps(card)
    assert str(tmp_path) not in shown and "labpc" not in shown and "secret_paths" not in shown
    assert describe(pipe, "/srv/models/onnx_export", "ONNX export")["source"] == "onnx_export"
