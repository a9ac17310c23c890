"""`outline_closing` (fit_morphology.py) and `appearance_coverage` (train.py) each have one home for their
default: the code constant (wbc.morphology.OUTLINE_CLOSING, wbc.appearance.COVERAGE), which the configs
name (`default`) instead of copying the number. Without an override the command uses that constant (so
editing it changes the command's default: patched here to a value no config holds); an override from
the command line reaches the code; null still records no appearance profile."""

from __future__ import annotations

import pytest

import wbc.appearance
import wbc.morphology


class _Reached(Exception):
    """Raised by a stand-in once the setting reached the code: nothing after it needs to run."""


def _closing_used(monkeypatch, make_cfg, overrides: list[str]) -> float:
    """The outline closing fit_morphology.py measures the training cells with."""
    import wbc.cli.fit_morphology as cli

    def measure(dm, ids, closing: float):
        raise _Reached(closing)

    monkeypatch.setattr(cli, "measure_cells", measure)
    with pytest.raises(_Reached) as got:
        cli.fit_morphology(make_cfg(overrides, config_name="fit_morphology.yaml"))
    return got.value.args[0]


def test_outline_closing_defaults_to_the_code_constant_and_an_override_reaches_the_fit(monkeypatch, make_cfg) -> None:
    monkeypatch.setattr(wbc.morphology, "OUTLINE_CLOSING", 0.07)
    assert _closing_used(monkeypatch, make_cfg, []) == 0.07
    assert _closing_used(monkeypatch, make_cfg, ["outline_closing=0.12"]) == 0.12
    assert _closing_used(monkeypatch, make_cfg, ["outline_closing=0"]) == 0.0


def _coverage_used(monkeypatch, make_cfg, run_training, overrides: list[str]) -> float | None:
    """The coverage train.py fits the checkpoint's appearance profile with (None: no profile)."""
    import wbc.fit

    def profile(datamodule, coverage: float, seed: int = 0):
        raise _Reached(coverage)

    build = wbc.fit.instantiate

    def model(node, *args, **kwargs):  # the model is built after the profile: reached first only without one
        if "data_info" in kwargs:
            raise _Reached(None)
        return build(node, *args, **kwargs)

    monkeypatch.setattr(wbc.fit, "training_appearance", profile)
    monkeypatch.setattr(wbc.fit, "instantiate", model)
    with pytest.raises(_Reached) as got:
        run_training(make_cfg(overrides))
    return got.value.args[0]


def test_appearance_coverage_defaults_to_the_code_constant_and_an_override_reaches_training(monkeypatch, make_cfg, run_training) -> None:
    monkeypatch.setattr(wbc.appearance, "COVERAGE", 0.9)
    assert _coverage_used(monkeypatch, make_cfg, run_training, []) == 0.9
    assert _coverage_used(monkeypatch, make_cfg, run_training, ["appearance_coverage=0.8"]) == 0.8
    assert _coverage_used(monkeypatch, make_cfg, run_training, ["appearance_coverage=null"]) is None


@pytest.mark.parametrize(("module", "check", "key", "bad"), [(wbc.morphology, "check_outline_closing", "outline_closing", 0.7),
                                                              (wbc.appearance, "check_coverage", "appearance_coverage", 1.5)])
def test_a_bad_value_names_the_setting_and_its_default(module, check: str, key: str, bad: float) -> None:
    with pytest.raises(ValueError, match=rf"{key}={bad}: .*default \("):
        getattr(module, check)(bad)
