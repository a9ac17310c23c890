"""resume=true into a run made before a data setting existed (data.bit_depth): absent there means the
value those runs used (`auto`), so the run is reused; an explicit other value still differs."""

from __future__ import annotations

import copy

import pytest

from wbc import resume, rundir


def _settings() -> dict:
    stage = {"data": {"root": "x", "bit_depth": "auto", "image_size": 64}, "model": {"lr": 0.1}}
    return {"seed": 0, "data": copy.deepcopy(stage["data"]), "model": {"lr": 0.1},
            "segmentation": copy.deepcopy(stage), "classification": copy.deepcopy(stage)}


def test_a_run_made_before_data_bit_depth_is_the_same_job(tmp_path) -> None:
    old = _settings()
    for node in (old, old["segmentation"], old["classification"]):
        del node["data"]["bit_depth"]
    rundir.start_job(tmp_path, resume.job_record(0, "pipeline", [], cfg=old))
    resume.check_same_job(tmp_path, resume.job_record(0, "pipeline", [], cfg=_settings()))  # no error
    new = _settings()
    new["classification"]["data"]["bit_depth"] = 12
    with pytest.raises(ValueError, match=r"classification\.data\.bit_depth: absent -> present"):
        resume.check_same_job(tmp_path, resume.job_record(0, "pipeline", [], cfg=new))


def test_a_bit_depth_key_outside_a_data_node_is_compared_as_is() -> None:
    assert resume._differing({"model": {}}, {"model": {"bit_depth": "auto"}})


@pytest.mark.parametrize(("text", "message"), [('{"fold": 0, "sta', r"job\.json is not readable JSON"), ("[1, 2]", r"job\.json holds a list")])
def test_a_damaged_job_record_is_named(tmp_path, text: str, message: str) -> None:
    """A truncated or hand-edited job.json had raised a bare JSONDecodeError / AttributeError naming no file."""
    (tmp_path / resume.JOB_FILE).write_text(text)
    with pytest.raises(ValueError, match=rf"resume=true: .*{message}"):
        resume.check_same_job(tmp_path, resume.job_record(0, "pipeline", [], cfg=_settings()))
