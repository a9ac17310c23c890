"""Appearance check (wbc.appearance): an image unlike the model's training images is flagged, with every
cell in it, in predict's outputs and the web app; exposure changes of the same slide are not; the profile
travels in the checkpoint and a malformed one is named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wbc.appearance import FEATURES, AppearanceProfile, fit_profile, image_features, profile_of
from wbc.data.synthetic import CLASS_NAMES, SyntheticSpec, render_image

SPEC = SyntheticSpec(image_size=96, seed=3)


def smears(first: int, n: int) -> list[np.ndarray]:
    return [render_image(SPEC, i, CLASS_NAMES[i % len(CLASS_NAMES)])[0] for i in range(first, first + n)]


def yellowed(rgb: np.ndarray) -> np.ndarray:
    """Another lab's light: a yellowish background and a paler blue channel (segmentation_wbc dataset1's look)."""
    return np.clip(rgb.astype(np.float32) * np.array([1.0, 0.94, 0.72]), 0, 255).astype(np.uint8)


def exposed(rgb: np.ndarray, k: float) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) * k, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def profile() -> AppearanceProfile:
    return AppearanceProfile.from_dict(fit_profile(smears(0, 40), smears(40, 15)))


def test_another_stain_is_unlike_the_training_images_another_exposure_is_not(profile):
    new = smears(100, 10)
    assert image_features(new[0]).shape == (len(FEATURES),)
    same = [profile.distance(im) for im in new]
    darker = [profile.distance(exposed(im, 0.85)) for im in new]
    other = [profile.distance(yellowed(im)) for im in new]
    assert sum(d > profile.threshold for d in same) <= 2  # the threshold keeps 99 % of 15 validation images
    assert np.allclose(darker, same, atol=0.3)  # chromaticity and brightness ratios: exposure does not move them
    assert all(d > profile.threshold for d in other), (profile.threshold, other)
    assert min(other) > 1.5 * max(same)


def test_the_profile_round_trips_and_a_malformed_one_is_named(profile):
    back = AppearanceProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    img = smears(200, 1)[0]
    assert back.distance(img) == pytest.approx(profile.distance(img)) and back.threshold == profile.threshold
    assert profile_of({}, "x") is None and profile_of({"appearance": None}, "x") is None
    bad = profile.to_dict()
    for key, value, expected in (("features", ["r_p0_5"], "not this version's"), ("precision", [[1.0]], "precision"),
                                 ("threshold", -1, "positive distance"), ("mean", None, "mean")):
        with pytest.raises(ValueError, match=f"classifier data_info.appearance: not an appearance profile.*{expected}"):
            profile_of({"appearance": {**bad, key: value}}, "classifier data_info.appearance")
    with pytest.raises(ValueError, match="appearance_coverage=1.5"):
        AppearanceProfile.fit(np.zeros((4, len(FEATURES))), coverage=1.5)
    assert fit_profile(smears(0, 1), []) is None  # one image: no profile, no check


def test_training_records_the_profile_and_predict_flags_every_cell_of_an_unlike_image(trained_run, tmp_path):
    """The tiny training run's checkpoint carries data_info.appearance; a yellowed image is flagged in
    predictions.json (images[].appearance, unlike_training_images) and each of its cells' review
    reasons; review.unlike_training=false turns the check off."""
    import cv2

    from lightning_modules.common import load_checkpoint
    from wbc.data.imageio import read_rgb
    from wbc.inference import CellPipeline
    from wbc.predict_io import predict_images
    from wbc.review import ReviewOptions

    run, _, objects = trained_run
    ckpt = next((run / "checkpoints").glob("*.ckpt"))
    info = load_checkpoint(ckpt, "segmentation")["hyper_parameters"]["data_info"]
    recorded = AppearanceProfile.from_dict(info["appearance"])
    assert recorded.images == len(objects["datamodule"].split_ids()["train"]) and recorded.coverage == 0.99

    dm = objects["datamodule"]
    image = read_rgb(dm.load_manifest().by_id()[dm.split_ids()["test"][0]].image)  # a test image of the training source
    for name, rgb in (("same.png", image), ("yellow.png", yellowed(image))):
        cv2.imwrite(str(tmp_path / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    pipe = CellPipeline.from_checkpoints(run)
    pipe.postprocess = type(pipe.postprocess)(threshold=0.0, opening_kernel=0, min_area=1, watershed=False)  # cells even from a 1-epoch model
    rows, _ = predict_images(pipe, [tmp_path / "same.png", tmp_path / "yellow.png"], tmp_path / "out")
    report = json.loads((tmp_path / "out" / "predictions.json").read_text())
    checks = {Path(im["image"]).name: im["appearance"] for im in report["images"]}
    assert checks["same.png"]["unlike_training"] is False and checks["yellow.png"]["unlike_training"] is True
    assert checks["yellow.png"]["model"] == "segmenter" and checks["yellow.png"]["distance"] > checks["yellow.png"]["threshold"]
    assert report["unlike_training_images"] == [str(tmp_path / "yellow.png")]
    yellow_rows = [r for r in rows if r["image"].endswith("yellow.png")]
    assert yellow_rows and all("unlike the segmenter's training images" in r["review_reasons"] for r in yellow_rows)
    assert not any("unlike" in r["review_reasons"] for r in rows if r["image"].endswith("same.png"))

    off = CellPipeline.from_checkpoints(run, review=ReviewOptions(unlike_training=False))
    assert off.check_appearance(yellowed(image)) is None
    loose = CellPipeline.from_checkpoints(run, review=ReviewOptions(appearance_threshold=1e6))
    assert loose.check_appearance(yellowed(image))["unlike_training"] is False


def test_the_profile_travels_in_the_onnx_export(trained_run, tmp_path):
    """export.json carries the segmenter's data_info, profile included: the ONNX pipeline checks images alike."""
    from wbc.inference import CellPipeline
    from wbc.onnx_backend import export_checkpoints, pipeline_from_export

    run = trained_run[0]
    export_checkpoints(run, None, tmp_path / "export")
    onnx_pipe, torch_pipe = pipeline_from_export(tmp_path / "export"), CellPipeline.from_checkpoints(run)
    image = yellowed(smears(400, 1)[0])
    assert onnx_pipe.check_appearance(image) == torch_pipe.check_appearance(image) is not None
