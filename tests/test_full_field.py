"""Full-field inference: sliding windows at the training scale (wbc.tiling, wbc.scale, CellPipeline).

A stand-in segmenter whose nucleus probability is a pointwise function of the pixel (dark = nucleus)
makes the expected masks exact, so tiling, seams, scale choice and memory are tested without training."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wbc.ensemble import AttributeDict
from wbc.inference import CellPipeline
from wbc.scale import ScaleOptions, choose_scale, training_scale
from wbc.tiling import gaussian_weight, sliding_window, tile_starts

ROOT = Path(__file__).resolve().parents[1]


class DarkSegmenter(torch.nn.Module):
    """probability = 1 - brightness, per pixel (no context): tiled == single pass, exactly."""

    def __init__(self, image_size: int = 64, diameter: float = 12.0, resize_factor: float = 1.0, source: int = 64) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        scale = {"nucleus_diameter": diameter, "resize_factor": resize_factor, "source_size": [source, source], "network_pixel_size_um": None}
        info = {"image_size": image_size, "preprocess": {"grayscale": False, "clahe": False}, "scale": scale,
                "postprocess": {"min_area": 4, "min_peak_radius": 4.0, "min_distance": 4}}
        self.hparams = AttributeDict(data_info=info, stage="segmentation")
        self.calls = 0

    def predict_probability(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return 1 - x.mean(1, keepdim=True)


def smear(h: int, w: int, discs: list[tuple[int, int, int]]) -> np.ndarray:
    """Light background with dark discs (cy, cx, r)."""
    img = np.full((h, w, 3), 235, np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for cy, cx, r in discs:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 40
    return img


def test_tile_starts_cover_the_image_with_the_requested_overlap() -> None:
    for length, tile, overlap in ((300, 64, 0.25), (64, 64, 0.5), (1000, 128, 0.5), (129, 128, 0.25)):
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == max(length, tile)
        assert all(b - a <= tile * (1 - overlap) + 1 for a, b in zip(starts, starts[1:]))
    w = gaussian_weight(64)
    assert w.max() == pytest.approx(1.0) and w.min() > 0 and w[32, 32] > w[0, 0]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"batch": -1}, r"tile_batch=-1: expected a whole number"), ({"batch": 0}, "tile_batch=0"), ({"batch": 2.5}, "tile_batch=2.5"),
    ({"overlap": 1.0}, r"tile_overlap=1.0: expected a fraction"), ({"overlap": -0.1}, "tile_overlap=-0.1"),
    ({"diameter": 0}, r"diameter=0: expected a finite positive number"), ({"pixel_size_um": -0.1}, "pixel_size_um=-0.1"),
    ({"diameter": float("inf")}, r"diameter=inf: expected a finite"), ({"pixel_size_um": float("inf")}, "pixel_size_um=inf"),
    ({"scale": "inf"}, r"scale='inf': expected auto, single or a finite positive factor"), ({"scale": "1e400"}, "scale='1e400'"),
    ({"scale": True}, r"scale=True: expected"), ({"scale": float("nan")}, "scale=nan"), ({"scale": "big"}, "scale='big'"),
])
def test_bad_tile_and_scale_options_are_refused_naming_the_key(kwargs, message) -> None:
    """A negative tile_batch used to give an all-NaN probability map and no cells, without an error."""
    with pytest.raises(ValueError, match=message):
        ScaleOptions(**kwargs)


def test_tiled_equals_single_pass_on_an_image_that_fits_one_tile() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 3, padding=1), torch.nn.Sigmoid())
    x = torch.rand(3, 64, 64)
    with torch.no_grad():
        direct = net(x[None])[0, 0].numpy()
    np.testing.assert_allclose(sliding_window(net, x, 64, 0.5), direct, atol=1e-6)
    # smaller than a tile: padded, then cut back
    assert sliding_window(net, x[:, :40, :50], 64).shape == (40, 50)


def test_a_cell_on_a_tile_seam_is_one_instance_and_memory_is_bounded_by_the_batch() -> None:
    seg = DarkSegmenter(image_size=64, diameter=12.0, source=64)
    pipe = CellPipeline(seg, None, scale=ScaleOptions(scale=1.0, overlap=0.25, batch=4))
    # tiles of 64 at step 48: a seam region around x = 48..64; the disc straddles it
    img = smear(200, 300, [(100, 56, 9), (40, 200, 7)])
    res = pipe(img)
    assert len(res.instances) == 2 and pipe.last_scale.factor == 1.0
    whole = 1 - img.mean(2) / 255.0
    np.testing.assert_allclose(res.prob, whole, atol=1e-5)  # seams are invisible: the stitched map is the pointwise one
    assert seg.calls == int(np.ceil(len(tile_starts(200, 64, 0.25)) * len(tile_starts(300, 64, 0.25)) / 4))


def test_scale_auto_finds_half_scale_on_a_2x_upscaled_image() -> None:
    """Training nuclei are 12 network px at resize factor 1; an image whose nuclei are 24 px wants ~0.5."""
    seg = DarkSegmenter(image_size=64, diameter=12.0, resize_factor=1.0, source=64)
    discs = [(y, x, 12) for y in range(40, 400, 80) for x in range(40, 600, 80)]
    pipe = CellPipeline(seg, None)  # scale=auto by default
    res = pipe(smear(400, 600, discs))
    assert pipe.last_scale.factor == pytest.approx(0.5, rel=0.15), pipe.last_scale
    assert pipe.last_scale.how.startswith("auto") and len(res.instances) == len(discs)
    # the crop follows the scale: 2 image px per training px
    spec, post = pipe.scaled_for_image()
    assert spec.size == pytest.approx(pipe.crop_spec.size * 2, rel=0.2) and post.min_area > 4


def test_images_like_the_training_ones_keep_the_single_pass_path() -> None:
    info = {"image_size": 128, "scale": {"nucleus_diameter": 20.0, "source_size": [257, 257], "resize_factor": 0.5}}
    assert choose_scale((257, 257), info).factor is None  # e.g. ALL-IDB2 at image_size 256: unchanged figures
    assert choose_scale((300, 300), info).factor is None
    assert choose_scale((2000, 2000), info, measure=lambda f: np.full(5, 40.0)).factor == pytest.approx(0.5)
    assert choose_scale((100, 100), info, diameter=10).factor == pytest.approx(2.0)
    with pytest.raises(ValueError, match="pixel_size_um"):
        choose_scale((100, 100), info, pixel_size_um=0.2)


def test_training_scale_is_measured_in_network_pixels() -> None:
    labels = np.zeros((200, 200), np.int32)
    yy, xx = np.mgrid[:200, :200]
    labels[(yy - 100) ** 2 + (xx - 100) ** 2 <= 20**2] = 1
    sc = training_scale([(labels, (200, 200))], image_size=100, pixel_size_um=0.25)
    assert sc["nucleus_diameter"] == pytest.approx(20, rel=0.05)  # 40 px at half size
    assert sc["resize_factor"] == pytest.approx(0.5) and sc["network_pixel_size_um"] == pytest.approx(0.5)


@pytest.mark.slow
def test_a_4000x3000_field_stays_in_bounded_memory(tmp_path: Path) -> None:
    """Peak RSS of a 4000 x 3000 inference (stand-in network, tiles of 128): under 2.5 GB."""
    code = f"""
import resource, sys, numpy as np, torch
sys.path.insert(0, {str(ROOT)!r})
from tests.test_full_field import DarkSegmenter, smear
from wbc.ensemble import AttributeDict
from wbc.inference import CellPipeline
from wbc.scale import ScaleOptions
img = smear(3000, 4000, [(y, x, 10) for y in range(50, 3000, 300) for x in range(50, 4000, 300)])
pipe = CellPipeline(DarkSegmenter(image_size=128, diameter=20.0), None, scale=ScaleOptions(scale=1.0, batch=8))
res = pipe(img)
print(len(res.instances), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells, peak_mb = (int(v) for v in proc.stdout.split()[-2:])
    assert cells == 10 * 14
    assert peak_mb < 2500, f"peak RSS {peak_mb} MB"


@pytest.mark.slow
def test_a_dataset_of_big_fields_is_evaluated_on_the_tiled_path(trained_run, make_eval_cfg, tmp_path: Path, monkeypatch) -> None:
    """A segmenter trained on 64 px images (network 32 px) scored on 2 x 2 mosaics (128 px fields):
    evaluate.py takes predict's tiled at-scale path for them and scores at full resolution."""
    import csv

    import cv2

    from wbc.cli import evaluate
    from wbc.data.synthetic import SyntheticSpec, render_field

    root = tmp_path / "fields"
    for sub in ("images", "masks", "instances"):
        (root / sub).mkdir(parents=True)
    rows = []
    for i in range(12):
        rgb, mask, inst = render_field(SyntheticSpec(image_size=64, seed=3), 4 * i, (2, 2))
        name = f"f{i:02d}.png"
        cv2.imwrite(str(root / "images" / name), rgb[..., ::-1])
        cv2.imwrite(str(root / "masks" / name), mask)
        cv2.imwrite(str(root / "instances" / name), inst.astype(np.uint16))
        rows.append({"image": f"images/{name}", "mask": f"masks/{name}", "instances": f"instances/{name}",
                     "class_name": ["lymphoblast", "neutrophil", "promyelocyte"][i % 3], "group": f"g{i}"})
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    run, _, objects = trained_run
    assert objects["model"].hparams.data_info["scale"]["source_size"] == [64, 64]
    cfg = make_eval_cfg(run, "data=synthetic_tiny", f"data.root={root}", "data.generator=null", "data.name=fields",
                        f"data.splits.dir={tmp_path / 'splits'}", "data.splits.use_groups=false")
    tiled = []
    original = CellPipeline.segment_preprocessed

    def spy(self, pre):
        prob = original(self, pre)
        tiled.append(self.last_scale)
        return prob

    monkeypatch.setattr(CellPipeline, "segment_preprocessed", spy)
    metrics, out = evaluate.evaluate(cfg)
    cases = out["summary"]["metric_per_case"]
    assert cases and all(c["size"] == [128, 128] for c in cases) and np.isfinite(metrics["test/dice_post"])
    assert len(tiled) == len(cases) and all(t.factor is not None and t.how.startswith("auto") for t in tiled)


def test_auto_scale_prefers_the_smallest_fitting_factor_over_fragmented_nuclei():
    """Enlarged too far, a nucleus splits into pieces that can match the training diameter better than
    the whole nuclei do (seen on dataset2 mosaics): the smallest factor that fits wins."""
    import numpy as np

    from wbc.scale import choose_scale

    info = {"image_size": 256, "scale": {"nucleus_diameter": 80.0, "resize_factor": 0.8, "source_size": [300, 300]}}

    def measure(f: float) -> np.ndarray:
        return np.full(10, 110.0 if f < 1.2 else 52.0)  # whole nuclei (110 px) below 1.2, halves above

    asked: list[float] = []
    choice = choose_scale((1200, 1200), info, "auto", measure=lambda f: asked.append(f) or measure(f))
    assert choice.factor == pytest.approx(80.0 / 110.0)  # refined from the whole nuclei, not 80 / 52
    # the ladder is climbed from the smallest factor and stops at the first that fits (0.8 x 0.7: 110 px
    # are 61.6 network px, within x1.35 of 80): the costlier larger factors are never measured
    assert asked == pytest.approx([0.8 * r for r in (0.25, 0.35, 0.5, 0.7)])


def test_typical_diameter_leaves_out_specks_but_not_the_nuclei_beside_merged_ones():
    """Six 8 px specks among five 80 px nuclei would halve a plain median; three merged 60 px blobs
    among ten 20 px nuclei would take an area-weighted median (60): the typical diameter is 80 and 20."""
    from wbc.scale import typical_diameter

    specks = np.array([80.0] * 5 + [8.0] * 6)
    assert np.median(specks) == 8.0 and typical_diameter(specks) == 80.0
    assert typical_diameter(np.array([20.0] * 10 + [60.0] * 3)) == 20.0
    assert np.isnan(typical_diameter(np.zeros(0)))


def test_auto_scale_matches_the_nearest_training_source_of_a_combined_segmenter():
    """A segmenter trained on two sets resized by different factors: an image whose nuclei match one
    set is put at that set's size, not at the pooled median's (which fits neither), and the crops and
    filters follow that set's pixels."""
    sources = {"d2": {"nucleus_diameter": 81.0, "resize_factor": 0.853}, "idb2": {"nucleus_diameter": 101.0, "resize_factor": 0.996}}
    info = {"image_size": 256, "scale": {"nucleus_diameter": 98.0, "resize_factor": 0.996, "source_size": [257, 257], "sources": sources}}
    choice = choose_scale((1200, 1200), info, "auto", measure=lambda f: np.full(10, 95.0))
    assert choice.factor == pytest.approx(81.0 / 95.0) and choice.source == "d2" and choice.resize_factor == pytest.approx(0.853)
    assert "d2" in choice.how
    # checkpoints from before the per-source record: the pooled median
    pooled = {**info, "scale": {k: v for k, v in info["scale"].items() if k != "sources"}}
    choice = choose_scale((1200, 1200), pooled, "auto", measure=lambda f: np.full(10, 95.0))
    assert choice.factor == pytest.approx(98.0 / 95.0) and choice.source is None


def test_a_given_diameter_picks_the_training_source_whose_nuclei_had_that_size():
    """diameter= on a segmenter trained on two sets: the field goes to the set whose nuclei had that
    size in its own pixels (dataset2: 81 / 0.853 = 95 px), not to the pooled median (98 network px)."""
    sources = {"d2": {"nucleus_diameter": 81.0, "resize_factor": 0.853}, "idb2": {"nucleus_diameter": 115.0, "resize_factor": 0.996}}
    info = {"image_size": 256, "scale": {"nucleus_diameter": 98.0, "resize_factor": 0.996, "source_size": [257, 257], "sources": sources}}
    near_d2 = choose_scale((1200, 1600), info, diameter=95.0)
    assert near_d2.source == "d2" and near_d2.factor == pytest.approx(81.0 / 95.0) and near_d2.resize_factor == 0.853
    near_idb2 = choose_scale((1200, 1600), info, diameter=110.0)
    assert near_idb2.source == "idb2" and near_idb2.factor == pytest.approx(115.0 / 110.0)
    one = choose_scale((1200, 1600), {**info, "scale": {k: v for k, v in info["scale"].items() if k != "sources"}}, diameter=95.0)
    assert one.source is None and one.factor == pytest.approx(98.0 / 95.0)


def test_a_combined_data_config_records_the_scale_of_each_part(tmp_path):
    """measure_training_scale of a DataModule with data.parts: pooled figures plus one entry per part."""
    from datamodules.segmentation import SegmentationDataModule
    from tests.helpers_data import RGB_ENCODING, make_csv_dataset
    from wbc.scale import measure_training_scale

    grey = make_csv_dataset(tmp_path / "grey", {"a": 6, "b": 6})
    rgb = make_csv_dataset(tmp_path / "rgb", {"b": 6, "c": 6}, mask_mode="rgb")
    parts = {"lab1": {"root": str(grey), "name": "lab1", "classes": ["a", "b"], "splits": {"dir": str(tmp_path / "s"), "k": 2}},
             "lab2": {"root": str(rgb), "name": "lab2", "classes": ["b", "c"], "mask_encoding": RGB_ENCODING, "splits": {"dir": str(tmp_path / "s"), "k": 2}}}
    dm = SegmentationDataModule(root="unused", name="combined", image_size=32, parts=parts)
    dm.setup()
    sc = measure_training_scale(dm)
    assert set(sc["sources"]) == {"lab1", "lab2"}
    assert sum(s["n_nuclei"] for s in sc["sources"].values()) == sc["n_nuclei"] > 0
    assert all(s["nucleus_diameter"] > 0 and s["resize_factor"] > 0 for s in sc["sources"].values())
    alone = SegmentationDataModule(**parts["lab1"], image_size=32)
    alone.setup()
    assert "sources" not in measure_training_scale(alone)


def test_a_combined_segmenter_puts_a_field_at_its_matching_source_and_reviews_it_against_that_source():
    """Two training sources resized by different factors: the field's nuclei (24 image px) match the
    source whose nuclei were 12 network px at factor 1.0, so the field is put at 0.5, crops and filters
    follow that source's pixels (x2, where the pooled factor would give x1.5), and the review's size
    range is that source's quartiles."""
    from wbc.scale import ScaleChoice

    seg = DarkSegmenter(image_size=64, diameter=18.0, resize_factor=0.75, source=96)
    seg.hparams.data_info["scale"]["nucleus_diameter_q25_q75"] = [12.0, 24.0]
    seg.hparams.data_info["scale"]["sources"] = {
        "small": {"nucleus_diameter": 12.0, "nucleus_diameter_q25_q75": [10.0, 14.0], "resize_factor": 1.0, "source_size": [64, 64]},
        "big": {"nucleus_diameter": 32.0, "nucleus_diameter_q25_q75": [30.0, 34.0], "resize_factor": 0.5, "source_size": [128, 128]}}
    pipe = CellPipeline(seg, None)
    discs = [(y, x, 12) for y in range(40, 400, 80) for x in range(40, 600, 80)]
    res = pipe(smear(400, 600, discs))
    assert pipe.last_scale.source == "small" and pipe.last_scale.factor == pytest.approx(0.5, rel=0.1), pipe.last_scale
    spec, _ = pipe.scaled_for_image()
    assert spec.size == pytest.approx(pipe.crop_spec.size * 2, rel=0.15)
    assert len(res.instances) == len(discs) and not any("nucleus small" in r for rs in res.review for r in rs)
    pipe.last_scale = ScaleChoice(pipe.last_scale.factor, "test", None, "big", 0.5)  # as if matched to the big source
    reasons = pipe.review((400, 600), res.instances, res.class_probs)
    assert all(any("nucleus small" in r for r in rs) for rs in reasons)


def test_a_single_pass_image_is_reviewed_against_the_training_source_its_nuclei_match():
    """An image no larger than the training images is not scaled, but a segmenter of several sources
    still reviews nucleus size against the source whose nuclei its own are nearest to, not the pool
    (where the other source's many nuclei would set the range)."""
    seg = DarkSegmenter(image_size=64, diameter=12.0, resize_factor=1.0, source=64)
    seg.hparams.data_info["scale"]["nucleus_diameter_q25_q75"] = [11.0, 13.0]  # the pool: mostly the small source
    seg.hparams.data_info["scale"]["sources"] = {
        "small": {"nucleus_diameter": 12.0, "nucleus_diameter_q25_q75": [11.0, 13.0], "resize_factor": 1.0, "source_size": [64, 64]},
        "big": {"nucleus_diameter": 30.0, "nucleus_diameter_q25_q75": [28.0, 32.0], "resize_factor": 1.0, "source_size": [64, 64]}}
    pipe = CellPipeline(seg, None)
    big = pipe(smear(64, 64, [(20, 20, 14), (44, 44, 15)]))  # nuclei ~28-30 px across at factor 1
    assert pipe.last_scale.factor is None and len(big.instances) == 2
    assert not any("nucleus large" in r for rs in big.review for r in rs), big.review  # within the big source's range
    del seg.hparams.data_info["scale"]["sources"]  # the pooled range alone: 2 x 13 = 26 px < 28
    assert all(any("nucleus large" in r for r in rs) for rs in pipe.review((64, 64), big.instances, big.class_probs))


def test_auto_measures_only_whole_nuclei_in_its_window():
    """The coarse pass's window cuts nuclei at its edge; their pieces would read as small nuclei, so
    only nuclei clear of the window's edge are measured (every disc here is 24 px across)."""
    seg = DarkSegmenter(image_size=64, diameter=12.0, resize_factor=1.0, source=64)
    pipe = CellPipeline(seg, None)
    discs = [(y, x, 12) for y in range(20, 400, 37) for x in range(20, 600, 37)]
    d = pipe._diameters(smear(400, 600, discs), 0.5)  # window 256 px: its edge crosses several discs
    assert len(d) >= 3 and d.min() > 0.85 * 24 and d.max() < 1.15 * 24, np.sort(d)


def test_auto_scale_stopping_at_the_first_fitting_factor_chooses_what_measuring_every_factor_did():
    """500 random nucleus-size responses, one and two training sources: the factor, diameter and source
    are those of the smallest fitting factor over the whole ladder (or the nearest when none fits)."""
    import math

    from wbc.scale import (
        AUTO_LADDER,
        AUTO_TOLERANCE,
        choose_scale,
        nearest_target,
        scale_targets,
        typical_diameter,
    )

    rng = np.random.default_rng(0)
    sources = {"a": {"nucleus_diameter": 60.0, "resize_factor": 0.5}, "b": {"nucleus_diameter": 90.0, "resize_factor": 0.9}}
    for k in range(500):
        info = {"image_size": 256, "scale": {"nucleus_diameter": 75.0, "resize_factor": 0.7, "source_size": [300, 300]}}
        if k % 2:
            info["scale"]["sources"] = sources
        measure = {0.7 * r: rng.uniform(5, 400, size=int(rng.integers(0, 8))) for r in AUTO_LADDER}.__getitem__
        found = []
        for r in AUTO_LADDER:
            d = measure(0.7 * r)
            if len(d) >= 3:
                med = typical_diameter(d)
                t = nearest_target(med * 0.7 * r, scale_targets(info["scale"]))
                found.append((abs(math.log(med * 0.7 * r / t[1])), 0.7 * r, med, t))
        fits = [c for c in found if c[0] <= AUTO_TOLERANCE]
        best = min(fits, key=lambda c: c[1]) if fits else min(found, default=None, key=lambda c: c[0])
        choice = choose_scale((1500, 1500), info, "auto", measure=measure)
        if best is None:
            assert choice.factor == pytest.approx(0.7)
        else:
            assert (choice.factor, choice.nucleus_diameter_px, choice.source) == (pytest.approx(best[3][1] / best[2]), best[2], best[3][0])


@pytest.mark.parametrize("shape", [(3, 200), (200, 3), (1, 50), (40, 1), (20, 20), (63, 70)])
def test_a_thin_image_is_padded_with_itself_not_zeros(shape: tuple[int, int]) -> None:
    """Padding to the tile repeats the image's reflection (a one-pixel axis replicated): zeros had drawn a black
    band beside a thin strip, which a trained segmenter sees as context and lost 25-70 % of the nuclei by."""
    image = torch.rand(3, *shape) * 0.5 + 0.5  # no value below 0.5
    seen: list[float] = []

    def predict(x: torch.Tensor) -> torch.Tensor:
        seen.append(float(x.min()))
        return x[:, :1]

    prob = sliding_window(predict, image, tile=64, overlap=0.25)
    assert prob.shape == shape and min(seen) >= 0.5
    np.testing.assert_allclose(prob, image[0].numpy(), atol=1e-6)  # the image's own pixels come back where they were


def test_a_given_factor_far_off_the_training_scale_is_refused_before_it_stalls() -> None:
    """scale=0.001 had made a 5001 px opening kernel (minutes on a small image) and scale=5e4 a 750 GB allocation:
    a given factor is kept within 1/32 to 32 times the training factor and 64 MP at the network's scale."""
    info = {"image_size": 128, "scale": {"nucleus_diameter": 20.0, "source_size": [256, 256], "resize_factor": 0.5, "network_pixel_size_um": 0.5}}
    assert choose_scale((81, 81), info, scale=0.5 / 32).factor == pytest.approx(0.5 / 32)  # the limits themselves pass
    assert choose_scale((81, 81), info, scale=16).factor == 16
    for kwargs, message in (({"scale": 0.001}, r"scale=0\.001 \(given\): factor 0\.001 puts the image at 0\.002 x the training scale"),
                            ({"scale": 5e4}, r"scale=50000 \(given\): .* 1e\+05 x the training scale"),
                            ({"diameter": 0.05}, r"diameter=0\.05 px \(given\).*: factor 400"),
                            ({"pixel_size_um": 100.0}, r"pixel_size_um=100 \(given\).*: factor 200 puts the image at 400 x the training scale"),
                            ({"diameter": float("inf")}, r"diameter=inf: expected a finite positive number")):
        with pytest.raises(ValueError, match=message):
            choose_scale((81, 81), info, **kwargs)
    with pytest.raises(ValueError, match=r"the 4000 x 3000 image would be 64000 x 48000 px at the network's scale, over 64 MP"):
        choose_scale((3000, 4000), info, scale=16)
