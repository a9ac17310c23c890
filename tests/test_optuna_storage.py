"""A persistent Optuna study (`hydra.sweeper.storage=sqlite:///...`, as conf/hparams_search suggests to
resume a search): optuna 2.10, the newest hydra-optuna-sweeper 1.3 allows, fails on its first query
under SQLAlchemy 2, so the sweep extra pins SQLAlchemy 1.x. This opens, fills and reopens one."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_a_sqlite_study_is_written_and_read_back(tmp_path: Path) -> None:
    optuna = pytest.importorskip("optuna")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=storage, study_name="search", direction="maximize")
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-2, log=True), n_trials=2)
    again = optuna.load_study(storage=storage, study_name="search")
    assert len(again.trials) == 2 and again.best_value == study.best_value
