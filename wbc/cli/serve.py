"""`wbc-serve` / `python serve.py [run=<pipeline run dir> | ensemble=<sweep dir> | onnx=<export dir>]`:
the web app. Loads the models once (the same loader as predict.py), prints the URL and serves the
page and its API on this computer (host 127.0.0.1 by default; no login, nothing sent elsewhere).

With no model named it serves the newest finished pipeline run under outputs/ and says which; with
none there it exits with the command that trains one.
"""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from wbc.cli import CONFIG_DIR, prepare
from wbc.run import extras

log = logging.getLogger("wbc")
FIRST_PORT = 8765
TRAIN_HINT = "python train.py experiment=pipeline"


def model_source(cfg: DictConfig) -> tuple[str, str]:
    """(path, kind) of what to serve; the newest pipeline run when nothing is named. SystemExit with
    the training command when there is none."""
    from wbc.rundir import is_sweep_dir
    from wbc.web.model_info import newest_pipeline_run

    if cfg.get("onnx"):
        return str(cfg.onnx), "ONNX export"
    if cfg.get("ensemble"):
        return str(cfg.ensemble), "fold ensemble"
    if cfg.get("run"):
        return str(cfg.run), "fold ensemble" if is_sweep_dir(str(cfg.run)) else "pipeline run"
    if cfg.get("segmenter"):
        return str(cfg.segmenter), "checkpoints"
    outputs = Path(cfg.paths.log_dir)
    newest = newest_pipeline_run(outputs)
    if newest is None:
        raise SystemExit(
            f"serve.py: no trained pipeline under {outputs / 'pipeline' / 'runs'}; train one with `{TRAIN_HINT}`, "
            "then run `python serve.py` again (or pass run=<pipeline run dir>)"
        )
    with open_dict(cfg):
        cfg.run = str(newest)
    log.info("serving the newest pipeline run %s (pass run=<dir> to choose another)", newest)
    return str(newest), "pipeline run"


def free_port(host: str, port: int | None) -> int:
    """The given port (an error naming it when taken), or the first free one from FIRST_PORT."""
    candidates = [int(port)] if port is not None else list(range(FIRST_PORT, FIRST_PORT + 100))
    for p in candidates:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, p))
            except OSError:
                continue
            return p
    if port is not None:
        raise SystemExit(f"serve.py: port {port} on {host} is in use; pass port=<another>, or leave port unset to take a free one")
    raise SystemExit(f"serve.py: no free port in {FIRST_PORT}-{FIRST_PORT + 99} on {host}; pass port=<free port>")


def adaptation_inputs(cfg: DictConfig) -> tuple[tuple[str, ...], list[Path]]:
    """(models to adapt, image files to adapt them on) from adapt_bn / adapt_on; checked before the
    models load, so a bad value or an empty folder is one clear error, not a server that ignores it."""
    from wbc.adaptation import adapt_targets
    from wbc.predict_io import list_inputs

    targets = adapt_targets(cfg.get("adapt_bn"))
    folder = cfg.get("adapt_on")
    if targets and not folder:
        raise SystemExit(f"serve.py: adapt_bn={cfg.adapt_bn} needs adapt_on=<a folder of this lab's images> to adapt on")
    if folder and not targets:
        raise SystemExit(f"serve.py: adapt_on={folder} is set but adapt_bn=false; pass adapt_bn=classifier (or true) to adapt")
    return targets, (list_inputs(str(folder)) if targets else [])


def build_app(cfg: DictConfig):
    """Load the models named by cfg (predict.py's loader), adapt them to the lab's images when asked,
    and build the FastAPI app around them."""
    from wbc.cells import CropSpec
    from wbc.cli.predict import build_pipeline
    from wbc.predict_io import readable_images
    from wbc.web.app import Settings, create_app
    from wbc.web.model_info import describe

    targets, adapt_files = adaptation_inputs(cfg)
    source, kind = model_source(cfg)
    if cfg.get("threads"):
        import torch

        torch.set_num_threads(int(cfg.threads))
    pipe = build_pipeline(cfg)
    if cfg.get("crops"):
        pipe.crop_spec = CropSpec.from_config({**pipe.crop_spec.to_dict(), **OmegaConf.to_container(cfg.crops, resolve=True)})
    if targets:  # once, before the first request: every user then gets the adapted models
        pipe.adapt_batchnorm(lambda: readable_images(adapt_files, cfg.max_file_mb, cfg.get("max_pixels"), pipe.bit_depth), models=targets)
    store = cfg.get("store") or {}
    settings = Settings(
        max_file_mb=float(cfg.max_file_mb), max_pixels=cfg.get("max_pixels"), max_images=int(store.get("max_images", 100)),
        max_age_min=float(store.get("max_age_min", 240)), max_store_mb=float(store.get("max_mb", 2048)), jobs=int(cfg.jobs), queue=int(cfg.queue),
        every_user=bool(cfg.get("every_user", False)), upload_timeout_s=float(cfg.get("upload_timeout_s", 120)),
    )
    info = describe(pipe, source, kind, adapted_folder=str(cfg.adapt_on) if targets else None)
    return create_app(pipe, info, settings), source


def serve(cfg: DictConfig) -> None:
    import uvicorn

    host = str(cfg.host)
    port = free_port(host, cfg.get("port"))  # before loading the models: a taken port fails fast
    app, source = build_app(cfg)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("host=%s: the page is reachable from other machines, and it has no login", host)
    print(f"WBC lab: serving {source} at {url}  (API docs: {url}/docs; Ctrl+C stops it)", flush=True)
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=bool(cfg.get("access_log", False)))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="serve.yaml")
def run(cfg: DictConfig) -> None:
    extras(cfg)
    serve(cfg)


def main() -> None:
    """Console script `wbc-serve` (and `python serve.py`)."""
    prepare()
    try:
        run()
    except KeyboardInterrupt:
        sys.exit(0)
