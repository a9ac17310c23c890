"""Shared fixtures: Hydra configs composed like the entry points do, shrunk to the tiny synthetic set.

`make_cfg(overrides, config_name="train.yaml")` composes `conf/<config_name>` through Hydra's
compose API, registers it as the current HydraConfig (so `${hydra:...}` interpolations resolve),
points the run's output/log dirs at the test's tmp_path and the data dir at one session-wide tmp
dir (the tiny synthetic set is generated once per session), and drops the `hydra` node as a real
Hydra run does. `run_train(cfg)` runs `train.train(cfg)` from inside the run dir.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

from omegaconf import DictConfig, OmegaConf  # noqa: E402

from wbc.cli import prepare  # noqa: E402

prepare()  # offline defaults, resolvers, structured configs: as the entry points do
from tests.helpers_models import compose_cfg as compose_config  # noqa: E402  (one compose helper for all tests)

# train.yaml, shrunk: tiny data, one epoch, CSV logger only, no progress bar or config printing
TINY_TRAIN = (
    "data=synthetic_tiny",
    "trainer.max_epochs=1",
    "logger=csv",
    "callbacks.rich_progress_bar=null",
    "extras.print_config=false",
    "num_overlays=2",
)
# with a debug=... config (which sets callbacks and logger to null)
TINY_DEBUG = ("data=synthetic_tiny", "extras.print_config=false", "num_overlays=2")
TINY_EVALUATE = ("extras.print_config=false", "num_overlays=2")


def tiny_overrides(config_name: str, overrides: Sequence[str]) -> list[str]:
    if config_name == "evaluate.yaml":
        base = TINY_EVALUATE
    elif config_name == "fit_morphology.yaml":  # no trainer: the data and the printout only
        base = ("data=synthetic_tiny", "extras.print_config=false")
    elif any(o.startswith("debug=") for o in overrides):
        base = TINY_DEBUG
    else:
        base = TINY_TRAIN
    return [*base, *overrides]


def run_train(cfg: DictConfig) -> tuple[dict, dict]:
    """train.train(cfg) from inside the run dir, which gets a .hydra/config.yaml as Hydra writes it
    (evaluate.py reads the training run's data config from there)."""
    from wbc.cli import train

    out = Path(cfg.paths.output_dir)
    (out / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    with contextlib.chdir(out):
        return train.train(cfg)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data dir per session: the tiny synthetic set and its splits are generated once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def make_cfg(tmp_path: Path, data_dir: Path) -> Callable[..., DictConfig]:
    """make_cfg(overrides=(), config_name="train.yaml", output_dir=tmp_path/"run") -> composed tiny config."""

    def _make(overrides: Sequence[str] = (), config_name: str = "train.yaml", output_dir: Path | None = None) -> DictConfig:
        out = output_dir if output_dir is not None else tmp_path / "run"
        return compose_config(config_name, tiny_overrides(config_name, overrides), out, data_dir)

    return _make


@pytest.fixture
def cfg_train(make_cfg) -> DictConfig:
    return make_cfg()


@pytest.fixture
def make_eval_cfg(make_cfg, tmp_path: Path) -> Callable[..., DictConfig]:
    """make_eval_cfg(ckpt_path, *overrides) -> composed evaluate.yaml writing to tmp_path/"eval"."""

    def _make(ckpt_path: str | Path, *overrides: str) -> DictConfig:
        return make_cfg([f"ckpt_path={ckpt_path}", *overrides], config_name="evaluate.yaml", output_dir=tmp_path / "eval")

    return _make


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Path, dict, dict]:
    """One short (1 epoch) tiny training run shared by the train/evaluate/resume tests:
    (run dir, metrics, objects)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    cfg = compose_config("train.yaml", tiny_overrides("train.yaml", ()), out, data_dir)
    metrics, objects = run_train(cfg)
    return out, metrics, objects


@pytest.fixture
def run_training() -> Callable[[DictConfig], tuple[dict, dict]]:
    """The run_train helper: train.train(cfg) from inside cfg.paths.output_dir (a tmp dir)."""
    return run_train


@pytest.fixture
def one_thread():
    """One intra-op thread in-process too (as OMP_NUM_THREADS=1 for the CLI runs): on a shared
    2-core box two contending OpenMP threads make these tiny models many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium through Playwright (never `playwright install`), for the e2e tests; skips, saying
    why, without playwright or a Chromium (WBC_CHROMIUM names another binary)."""
    import shutil

    chromium = os.environ.get("WBC_CHROMIUM", "/usr/bin/chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    if not (Path(chromium).is_file() or shutil.which(chromium)):
        pytest.skip(f"no Chromium at {chromium}: apt-get install -y chromium (or set WBC_CHROMIUM)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield b
        b.close()
