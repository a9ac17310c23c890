"""Appearance check (wbc.appearance): an image unlike the model's training images is flagged, with every
cell in it, in predict's outputs and the web app; exposure changes of the same slide are not; the profile
travels in the checkpoint and a malformed one is named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wbc.appearance import (
    FEATURES,
    AppearanceProfile,
    check_coverage,
    fit_profile,
    image_features,
    profile_of,
)
from wbc.data.synthetic import CLASS_NAMES, SyntheticSpec, render_image

SPEC = SyntheticSpec(image_size=96, seed=3)


def smears(first: int, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(RGB, nucleus mask) of synthetic smear images."""
    out = []
    for i in range(first, first + n):
        rgb, mask, _ = render_image(SPEC, i, CLASS_NAMES[i % len(CLASS_NAMES)])
        out.append((rgb, mask == 255))
    return out


def yellowed(rgb: np.ndarray) -> np.ndarray:
    """Another lab's light: a yellowish background and a paler blue channel (segmentation_wbc dataset1's look)."""
    return np.clip(rgb.astype(np.float32) * np.array([1.0, 0.94, 0.72]), 0, 255).astype(np.uint8)


def exposed(rgb: np.ndarray, k: float) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) * k, 0, 255).astype(np.uint8)


def around_a_nucleus(rgb: np.ndarray, nucleus: np.ndarray, half: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A square cut around one nucleus pixel (a cell as predict's annotated_dataset cuts it out)."""
    ys, xs = np.nonzero(nucleus)
    y, x = int(ys[len(ys) // 2]), int(xs[len(xs) // 2])
    box = (slice(max(0, y - half), y + half), slice(max(0, x - half), x + half))
    return rgb[box], nucleus[box]


@pytest.fixture(scope="module")
def profile() -> AppearanceProfile:
    return AppearanceProfile.from_dict(fit_profile({"smears": (smears(0, 100), smears(100, 30))}))


def distance(profile: AppearanceProfile, rgb: np.ndarray, nucleus: np.ndarray) -> float:
    return profile.nearest(image_features(rgb, nucleus))[0]


def test_another_stain_is_unlike_the_training_images_another_exposure_or_framing_is_not(profile):
    new = smears(300, 10)
    assert image_features(*new[0]).shape == (len(FEATURES),)
    (limit,) = [c.threshold for c in profile.components]
    same = [distance(profile, im, m) for im, m in new]
    darker = [distance(profile, exposed(im, 0.85), m) for im, m in new]
    cut = [distance(profile, *around_a_nucleus(im, m)) for im, m in new]
    other = [distance(profile, yellowed(im), m) for im, m in new]
    assert sum(profile.unlike(im, m) for im, m in new) == sum(d > limit for d in same) <= 2  # 99 % of 30 validation images
    assert np.allclose(darker, same, atol=0.3)  # chromaticity and brightness ratios: exposure does not move them
    # the nucleus mask, not the framing, says what is stain: a cut-out cell stays nearer its source than another stain
    assert np.median(cut) < limit and max(cut) < min(other)
    assert all(d > limit for d in other), (limit, other)
    assert min(other) > 1.5 * max(same)
    im, m = new[0]
    assert image_features(im, np.zeros_like(m)) is None and profile.unlike(im, np.zeros_like(m)) is None  # no nucleus: not measured
    assert image_features(im, np.ones_like(m)) is None  # nothing but nucleus: no background to compare


def test_the_profile_round_trips_and_a_malformed_one_is_named(profile):
    back = AppearanceProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    img = smears(200, 1)[0]
    assert distance(back, *img) == pytest.approx(distance(profile, *img)) and back.components[0].threshold == profile.components[0].threshold
    assert back.components[0].name == "smears" and back.images == 100
    assert profile_of({}, "x") is None and profile_of({"appearance": None}, "x") is None
    good = profile.to_dict()
    part = good["components"][0]
    for bad, expected in (({**good, "features": ["nucleus_r"]}, "not this version's"), ({**good, "components": []}, "no components"),
                          ({**good, "components": [{**part, "precision": [[1.0]]}]}, "precision"),
                          ({**good, "components": [{**part, "threshold": -1}]}, "positive distance"),
                          ({**good, "components": [{**part, "mean": None}]}, "mean")):
        with pytest.raises(ValueError, match=f"classifier data_info.appearance: not an appearance profile.*{expected}"):
            profile_of({"appearance": bad}, "classifier data_info.appearance")
    with pytest.raises(ValueError, match="appearance_coverage=1.5"):
        AppearanceProfile.fit({"x": (np.zeros((4, len(FEATURES))), None)}, coverage=1.5)
    for bad in ("most", True, 0):
        with pytest.raises(ValueError, match=f"appearance_coverage={bad!r}: expected a share in"):
            check_coverage(bad)
    assert fit_profile({"one": (smears(0, 1), [])}) is None  # one image: no profile, no check


def test_two_training_sources_are_two_components_an_image_of_either_is_like_them():
    """A combined data config's parts each get a component: an image near either is like the training
    images (and names it), a third stain is not."""
    both = AppearanceProfile.from_dict(fit_profile({
        "lab_a": (smears(0, 60), smears(60, 20)),
        "lab_b": ([(yellowed(im), m) for im, m in smears(80, 60)], [(yellowed(im), m) for im, m in smears(140, 20)])}))
    assert [c.name for c in both.components] == ["lab_a", "lab_b"] and both.images == 120
    new = smears(300, 10)
    assert sum(bool(both.unlike(im, m)) for im, m in new) <= 2 and sum(bool(both.unlike(yellowed(im), m)) for im, m in new) <= 2
    assert {both.nearest(image_features(yellowed(im), m))[2] for im, m in new} == {"lab_b"}
    bluish = [np.clip(im.astype(np.float32) * np.array([0.75, 0.9, 1.0]), 0, 255).astype(np.uint8) for im, _ in new]
    assert all(both.unlike(b, m) for b, (_, m) in zip(bluish, new))


def test_training_records_the_profile_and_predict_flags_every_cell_of_an_unlike_image(trained_run, tmp_path):
    """The tiny training run's checkpoint carries data_info.appearance; a yellowed image is flagged in
    predictions.json (images[].appearance, unlike_training_images) and each of its cells' review
    reasons; review.unlike_training=false turns the check off."""
    import cv2

    from lightning_modules.common import load_checkpoint
    from wbc.data.manifest import NUCLEUS, load_sample
    from wbc.inference import CellPipeline
    from wbc.predict_io import predict_images
    from wbc.review import ReviewOptions

    run, _, objects = trained_run
    ckpt = next((run / "checkpoints").glob("*.ckpt"))
    info = load_checkpoint(ckpt, "segmentation")["hyper_parameters"]["data_info"]
    recorded = AppearanceProfile.from_dict(info["appearance"])
    assert recorded.images == len(objects["datamodule"].split_ids()["train"]) and recorded.coverage == 0.99
    assert [c.name for c in recorded.components] == ["synthetic_tiny"]

    dm = objects["datamodule"]
    sample = dm.load_manifest().by_id()[dm.split_ids()["test"][0]]
    image, labels = load_sample(sample, dm.encoding_of(sample.id))  # a test image of the training source
    nucleus = (labels == NUCLEUS).astype(np.float32)
    for name, rgb in (("same.png", image), ("yellow.png", yellowed(image))):
        cv2.imwrite(str(tmp_path / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    pipe = CellPipeline.from_checkpoints(run)
    pipe.segment = lambda rgb: nucleus  # the true nuclei (a 1-epoch model finds none): the check itself is tested
    rows, _ = predict_images(pipe, [tmp_path / "same.png", tmp_path / "yellow.png"], tmp_path / "out")
    report = json.loads((tmp_path / "out" / "predictions.json").read_text())
    checks = {Path(im["image"]).name: im["appearance"] for im in report["images"]}
    assert checks["same.png"]["unlike_training"] is False and checks["yellow.png"]["unlike_training"] is True
    assert checks["yellow.png"]["model"] == "segmenter" and checks["yellow.png"]["distance"] > checks["yellow.png"]["threshold"]
    assert checks["yellow.png"]["source"] == "synthetic_tiny"
    assert report["unlike_training_images"] == [str(tmp_path / "yellow.png")]
    yellow_rows = [r for r in rows if r["image"].endswith("yellow.png")]
    assert yellow_rows and all("unlike the segmenter's training images" in r["review_reasons"] for r in yellow_rows)
    assert not any("unlike" in r["review_reasons"] for r in rows if r["image"].endswith("same.png"))

    off = CellPipeline.from_checkpoints(run, review=ReviewOptions(unlike_training=False))
    assert off.check_appearance(yellowed(image), labels == NUCLEUS) is None
    loose = CellPipeline.from_checkpoints(run, review=ReviewOptions(appearance_threshold=1e6))
    assert loose.check_appearance(yellowed(image), labels == NUCLEUS)["unlike_training"] is False
    for bad in (-1, "far", True):
        with pytest.raises(ValueError, match=f"review.appearance_threshold={bad!r}: expected a positive colour distance"):
            ReviewOptions.from_config({"appearance_threshold": bad})


def test_the_profile_travels_in_the_onnx_export(trained_run, tmp_path):
    """export.json carries the segmenter's data_info, profile included: the ONNX pipeline checks images alike."""
    from wbc.inference import CellPipeline
    from wbc.onnx_backend import export_checkpoints, pipeline_from_export

    run = trained_run[0]
    export_checkpoints(run, None, tmp_path / "export")
    onnx_pipe, torch_pipe = pipeline_from_export(tmp_path / "export"), CellPipeline.from_checkpoints(run)
    image, nucleus = smears(400, 1)[0]
    assert onnx_pipe.check_appearance(yellowed(image), nucleus) == torch_pipe.check_appearance(yellowed(image), nucleus) is not None


def test_one_dataset_is_one_source_whatever_its_subset_column(tmp_path):
    """A dataset's manifest `subset` column (segmentation_wbc's dataset1 / dataset2) does not split its
    profile or its training scale: one component per dataset (per part of a combined config). Splitting by
    subset was measured on segmentation_wbc and not adopted (README, appearance check)."""
    import csv

    from datamodules.segmentation import SegmentationDataModule
    from tests.helpers_data import make_csv_dataset
    from wbc.appearance import training_appearance
    from wbc.scale import measure_training_scale

    root = make_csv_dataset(tmp_path / "two", {"a": 12, "b": 12})
    with (root / "labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for i, row in enumerate(rows):
        row["subset"], row["image_id"] = ("lab1" if i % 2 else "lab2"), str(i)
    with (root / "labels.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[*rows[0].keys()])
        w.writeheader()
        w.writerows(rows)
    dm = SegmentationDataModule(root=str(root), name="labs", image_size=32, splits={"dir": str(tmp_path / "s"), "k": 2})
    dm.setup()
    assert {i.split("/")[0] for i in dm.split_ids()["train"]} == {"lab1", "lab2"}  # the subset is in the ids
    assert {dm.source_of(i) for i in dm.split_ids()["train"]} == {"labs"}
    assert [c["name"] for c in training_appearance(dm)["components"]] == ["labs"] and "sources" not in measure_training_scale(dm)


def test_an_ensemble_is_like_the_training_images_of_any_member():
    """An ensemble's profile holds every member's components (wbc.ensemble.common_data_info): an image
    like the second member's training images is not flagged because the first member never saw its
    stain; the same profile twice (folds of one run) is one component, a member without one is passed over."""
    from types import SimpleNamespace

    from wbc.ensemble import common_data_info

    lab_a = fit_profile({"lab": (smears(0, 60), smears(60, 20))})
    lab_b = fit_profile({"lab": ([(yellowed(im), m) for im, m in smears(80, 60)], [(yellowed(im), m) for im, m in smears(140, 20)])})

    def member(appearance: dict | None) -> SimpleNamespace:
        return SimpleNamespace(hparams={"data_info": {"classes": ["a", "b"], **({"appearance": appearance} if appearance else {})}})

    new = smears(300, 10)
    first = AppearanceProfile.from_dict(lab_a)
    both = AppearanceProfile.from_dict(common_data_info([member(lab_a), member(None), member(lab_b)])["appearance"])
    assert sum(bool(first.unlike(yellowed(im), m)) for im, m in new) >= 8  # the first member alone flags the second's stain
    assert sum(bool(both.unlike(yellowed(im), m)) for im, m in new) <= 2 and sum(bool(both.unlike(im, m)) for im, m in new) <= 2
    assert len(both.components) == 2 and both.images == 60  # one source name: its largest component's images
    folds = AppearanceProfile.from_dict(common_data_info([member(lab_a), member(lab_a)])["appearance"])
    assert folds.to_dict() == first.to_dict()
    assert "appearance" not in common_data_info([member(None), member(None)])
