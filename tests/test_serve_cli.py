"""`python serve.py`: which trained run it serves (the newest finished one, or a message saying how to
train one), its port, and adapting the classifier to a lab's folder once at start-up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from tests.helpers_models import save_checkpoint
from tests.helpers_web import field, png, tiny_pair, upload

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def modules():
    return tiny_pair()


def fake_pipeline_run(run: Path, seg, clf, metrics: dict | None) -> Path:
    for stage, module in (("segmentation", seg), ("classification", clf)):
        save_checkpoint(module, run / stage / "checkpoints" / "last.ckpt")
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_serve_takes_the_newest_finished_run_or_says_how_to_train_one(modules, tmp_path: Path) -> None:
    import socket

    from tests.helpers_models import compose_cfg
    from wbc.cli.serve import build_app, free_port, model_source

    outputs = tmp_path / "outputs"
    cfg = compose_cfg("serve.yaml", [], outputs)
    with pytest.raises(SystemExit, match=r"no trained pipeline under .*; train one with `python train\.py experiment=pipeline`"):
        model_source(cfg)
    runs = outputs / "pipeline" / "runs"
    fake_pipeline_run(runs / "2026-01-01_10-00-00_000000", *modules, {"test/dice_post": 0.5})
    newest = fake_pipeline_run(runs / "2026-02-01_10-00-00_000000", *modules, {"test/dice_post": 0.93, "pipeline/macro_f1": 0.81})
    fake_pipeline_run(runs / "2026-03-01_10-00-00_000000", *modules, None)  # still training: no metrics.json
    app, source = build_app(cfg)
    assert source == str(newest)
    with TestClient(app) as c:
        m = c.get("/api/model").json()
        # shown from below outputs/ (no server paths on the page)
        assert (m["source"], m["kind"]) == ("pipeline/runs/2026-02-01_10-00-00_000000", "pipeline run") and m["trained"]
        assert {f["key"]: f["value"] for f in m["test_figures"]} == {"test/dice_post": 0.93, "pipeline/macro_f1": 0.81}
        assert upload(c, png(field()), url="/api/predict").json()["status"] == "classified"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit, match=f"port {port} on 127.0.0.1 is in use"):
            free_port("127.0.0.1", port)
    assert free_port("127.0.0.1", None) >= 8765


def test_serve_adapts_to_the_labs_images_once_and_says_so(modules, tmp_path: Path) -> None:
    from tests.helpers_models import compose_cfg
    from wbc.adaptation import batchnorm_layers
    from wbc.cli.serve import build_app

    run = fake_pipeline_run(tmp_path / "run", *modules, {"test/dice_post": 0.9})
    lab = tmp_path / "lab"
    lab.mkdir()
    for i in range(3):
        (lab / f"field_{i}.png").write_bytes(png(field(seed=i)))
    (lab / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")  # skipped, as predict.py skips it
    for overrides, message in ((["adapt_bn=classifier"], r"adapt_bn=classifier needs adapt_on=<a folder"),
                               ([f"adapt_on={lab}"], r"adapt_on=.* is set but adapt_bn=false")):
        with pytest.raises(SystemExit, match=message):
            build_app(compose_cfg("serve.yaml", [f"run={run}", *overrides], tmp_path / "o"))
    saved = torch.load(run / "classification" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    app, _ = build_app(compose_cfg("serve.yaml", [f"run={run}", "adapt_bn=classifier", f"adapt_on={lab}"], tmp_path / "o"))
    with TestClient(app) as c:
        m = c.get("/api/model").json()
        assert m["adapted"] == {"models": ["classifier"], "images": 3, "folder": lab.name}  # its name, not the server's path
        assert upload(c, png(field()), url="/api/predict").json()["status"] == "classified"
        # the served classifier normalises with the lab's statistics, not the checkpoint's
        served = c.app.state.engine.pipe.classifier
        layer = batchnorm_layers(served)[0]
        name = next(k for k, v in served.named_buffers() if v is layer.running_mean)
        assert not torch.allclose(saved[name], layer.running_mean)
    app_plain, _ = build_app(compose_cfg("serve.yaml", [f"run={run}"], tmp_path / "o"))
    with TestClient(app_plain) as c:
        assert c.get("/api/model").json()["adapted"] is None
        served = c.app.state.engine.pipe.classifier
        assert torch.equal(saved[name], batchnorm_layers(served)[0].running_mean)


def test_serve_every_user_key_reaches_the_app(modules, tmp_path: Path) -> None:
    """conf/serve.yaml's every_user (false: the list of every user's images is refused) is what the app reads."""
    from tests.helpers_models import compose_cfg
    from wbc.cli.serve import build_app

    run = fake_pipeline_run(tmp_path / "run", *modules, {"test/dice_post": 0.9})
    for overrides, status in (([], 403), (["every_user=true"], 200)):
        app, _ = build_app(compose_cfg("serve.yaml", [f"run={run}", *overrides], tmp_path / "o"))
        with TestClient(app) as c:
            assert c.get("/api/images").status_code == status
