"""AdaBN (wbc.adaptation, callbacks.adapt_bn): batch-norm statistics re-estimated on the test images,
nothing else about the network changed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lightning_modules.callbacks import AdaptBatchNorm
from wbc.adaptation import adapt_batchnorm, adapt_targets, minimise_entropy


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2)).eval()


def test_statistics_become_those_of_the_new_images_and_nothing_else_changes() -> None:
    net = _net()
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    momentum = net[1].momentum
    gen = torch.Generator().manual_seed(1)
    batches = [3.0 + 2.0 * torch.randn(8, 3, 12, 12, generator=gen) for _ in range(4)]
    assert adapt_batchnorm(net, batches) == 32
    with torch.no_grad():
        feats = torch.cat([net[0](x) for x in batches])
    assert torch.allclose(net[1].running_mean, feats.mean((0, 2, 3)), atol=1e-4)
    assert torch.allclose(net[1].running_var, feats.var((0, 2, 3)), rtol=0.05)
    assert not net.training and net[1].momentum == momentum
    assert all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())
    # the adapted network now normalises the new images to ~zero mean (it did not before)
    with torch.no_grad():
        out = net[:2](batches[0])
    assert out.mean().abs() < 0.2


def _entropy(net: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        logits = net(x).mean((2, 3))
    return float(-(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean())


def test_entropy_minimisation_moves_only_the_batch_norm_scales_and_shifts() -> None:
    net = _net()
    net[0].weight.requires_grad_(False)  # a frozen weight stays frozen afterwards
    gen = torch.Generator().manual_seed(2)
    batches = [torch.randn(8, 3, 12, 12, generator=gen) for _ in range(6)]
    adapt_batchnorm(net, batches)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    start = _entropy(net, torch.cat(batches))
    assert minimise_entropy(net, batches * 5, lr=0.05, forward=lambda x: net(x).mean((2, 3))) == 240
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"1.weight", "1.bias", "4.weight", "4.bias"}  # running statistics and convolutions kept
    assert _entropy(net, torch.cat(batches)) < start
    assert not net.training and not net[0].weight.requires_grad and net[3].weight.requires_grad
    with pytest.raises(ValueError, match="no images"):
        minimise_entropy(net, [])


def test_adapt_bn_callback_refuses_bad_entropy_settings() -> None:
    with pytest.raises(ValueError, match=r"callbacks\.adapt_bn: entropy_epochs=-1 must be >= 0"):
        AdaptBatchNorm(entropy_epochs=-1)


def test_no_images_or_no_batch_norm_is_an_error_and_leaves_the_statistics() -> None:
    net = _net()
    before = net[1].running_mean.clone()
    with pytest.raises(ValueError, match="no images"):
        adapt_batchnorm(net, [])
    assert torch.equal(net[1].running_mean, before) and net[1].momentum == 0.1
    with pytest.raises(ValueError, match="no batch-norm layer"):
        adapt_batchnorm(nn.Linear(2, 2), [torch.zeros(1, 2)])


@pytest.mark.parametrize("entropy_epochs", [0, 1])
def test_classifier_tested_with_adapt_bn_uses_the_test_images_statistics(make_cfg, run_training, one_thread, entropy_epochs) -> None:
    """The test split is scored adapted to its own images (AdaBN, + Tent); the model left after the run is the
    checkpoint's again (the out-of-fold scoring of the validation split sees it: tests/test_training_fixes_callbacks.py)."""
    from lightning_modules.classification import ClassifierModule
    from lightning_modules.common import module_from_checkpoint
    from wbc.evaluation.classification import predict_crops, read_predictions_csv

    cfg = make_cfg(["experiment=classify", "callbacks=[default,adapt_bn]", "trainer.max_epochs=1",
                    f"callbacks.adapt_bn.entropy_epochs={entropy_epochs}"])
    metrics, objects = run_training(cfg)
    model, dm = objects["model"], objects["datamodule"]
    assert any(isinstance(cb, AdaptBatchNorm) for cb in objects["trainer"].callbacks)
    out = Path(cfg.paths.output_dir)
    saved = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items() if k in saved)  # restored after the test scoring
    classes, rows = read_predictions_csv(out / "test_predictions.csv")
    written = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    fresh = module_from_checkpoint(ClassifierModule, str(out / "checkpoints" / "last.ckpt"), "classification")
    plain = predict_crops(fresh, dm.datasets["test"])
    assert np.abs(plain - written).max() > 1e-3  # scored adapted, not as trained
    if entropy_epochs == 0:  # AdaBN alone: the test images' statistics, whatever the batch order
        adapt_batchnorm(fresh, (b["image"] for b in dm.test_dataloader()))
        assert np.abs(predict_crops(fresh, dm.datasets["test"]) - written).max() < 1e-4
    assert "test/macro_f1" in metrics


def _bn_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k}


def test_pipeline_adapts_both_models_to_the_images_and_keeps_their_weights(tmp_path) -> None:
    from tests.helpers_data import cell
    from tests.helpers_models import DiscSegmenter, tiny_modules
    from wbc.inference import CellPipeline

    seg, clf = tiny_modules(tmp_path)
    images = [np.clip(cell(64, seed=i)[0].astype(np.float32) * 0.6 + 90, 0, 255).astype(np.uint8) for i in range(3)]  # another "stain"
    weights = {k: v.clone() for k, v in clf.state_dict().items() if "running" not in k and "num_batches" not in k}
    seg_before = _bn_state(seg)
    pipe = CellPipeline(seg, clf)
    assert pipe.adapt_batchnorm(lambda: iter(images)) == 3 and pipe.adapted_on == 3
    assert any(not torch.equal(v, seg.state_dict()[k]) for k, v in seg_before.items())
    assert not seg.training and not clf.training
    # the classifier adapts on the crops: with a segmenter that always finds a cell
    disc = CellPipeline(DiscSegmenter(dict(clf.hparams.data_info)), clf)
    cls_before, probs_before = _bn_state(clf), disc(images[0]).class_probs
    disc.adapt_batchnorm(images)
    assert any(not torch.equal(v, clf.state_dict()[k]) for k, v in cls_before.items())
    assert not np.allclose(disc(images[0]).class_probs, probs_before)
    assert all(torch.equal(clf.state_dict()[k], v) for k, v in weights.items())
    with pytest.raises(ValueError, match="no readable image"):
        disc.adapt_batchnorm([])
    disc.classifier = type("Onnx", (), {"hparams": clf.hparams})()
    with pytest.raises(ValueError, match="ONNX"):
        disc.adapt_batchnorm(images)


def test_one_value_per_channel_is_a_clear_error() -> None:
    net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(3)).eval()
    with pytest.raises(ValueError, match="adapt_bn: a batch of 1 .*1x1"):
        adapt_batchnorm(net, [torch.ones(1, 3, 4, 4)])
    assert adapt_batchnorm(net, [torch.rand(2, 3, 4, 4)]) == 2


def test_evaluate_adapt_bn_scores_a_run_with_statistics_of_the_split(trained_run, make_eval_cfg) -> None:
    from wbc.cli import evaluate

    run, _, _ = trained_run
    plain, objects = evaluate.evaluate(make_eval_cfg(run))
    before = _bn_state(objects["module"])
    adapted, objects = evaluate.evaluate(make_eval_cfg(run, "adapt_bn=true"))
    after = _bn_state(objects["module"])
    assert any(not torch.equal(before[k], after[k]) for k in before)
    saved = json.loads((Path(make_eval_cfg(run).paths.output_dir) / "metrics.json").read_text())
    assert saved["adapt_bn"] is True and saved["test/dice_post"] == pytest.approx(adapted["test/dice_post"])
    assert adapted["test/dice_raw_fullres"] != plain["test/dice_raw_fullres"]


@pytest.mark.parametrize(("value", "expected"), [(False, ()), (None, ()), ("false", ()), (True, ("segmenter", "classifier")),
                                                 ("all", ("segmenter", "classifier")), ("classifier", ("classifier",)),
                                                 ("segmenter", ("segmenter",))])
def test_adapt_bn_values(value, expected) -> None:
    assert adapt_targets(value) == expected


def test_adapt_bn_bad_value_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"adapt_bn='classifer': expected false, true .*segmenter or classifier"):
        adapt_targets("classifer")


def test_pipeline_run_bad_adapt_bn_fails_before_training(make_cfg, monkeypatch) -> None:
    from wbc import fit, stages

    def no_training(*_a, **_k):
        raise AssertionError("a stage was trained before the bad value was reported")

    monkeypatch.setattr(fit, "fit_stage", no_training)
    cfg = make_cfg(["experiment=pipeline", "pipeline.adapt_bn=classifer"])
    with pytest.raises(ValueError, match=r"pipeline\.adapt_bn='classifer': expected false"):
        stages.run_pipeline(cfg, Path(cfg.paths.output_dir))


def test_pipeline_adapts_only_the_classifier_when_asked(tmp_path) -> None:
    from tests.helpers_data import cell
    from tests.helpers_models import tiny_modules
    from wbc.inference import CellPipeline

    seg, clf = tiny_modules(tmp_path)
    pipe = CellPipeline(seg, clf, crop_spec=None)
    seg_before = _bn_state(seg)
    images = [cell(64, seed=i)[0] for i in range(3)]
    assert pipe.adapt_batchnorm(images, models=("classifier",)) == 3 and pipe.adapted_models == ("classifier",)
    assert all(torch.equal(v, seg.state_dict()[k]) for k, v in seg_before.items())


class _BNNet(nn.Module):
    """A one-layer segmenter with a batch norm, on RGB or grey (+ CLAHE) input."""

    def __init__(self, preprocess: dict, scale: dict | None = None) -> None:
        super().__init__()
        from wbc.ensemble import AttributeDict

        info = {"image_size": 32, "preprocess": preprocess, "postprocess": {}, **({"scale": scale} if scale else {})}
        self.hparams = AttributeDict(stage="segmentation", data_info=info)
        self.conv, self.bn, self.out = nn.Conv2d(1 if preprocess.get("grayscale") else 3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.bn(self.conv(x)))

    def predict_probability(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(x))


@pytest.mark.parametrize("second", [{"grayscale": True, "clahe": True}, {"clahe": True, "white_balance": True}])
def test_segmenter_ensemble_members_adapt_on_their_own_inputs(second) -> None:
    """An ensemble of segmenters trained on other preprocessing (the README's RGB + grey recipe): each
    member's batch norms are re-estimated on its own channels (it crashed on grey, and silently used
    the first member's input otherwise)."""
    from wbc.data.transforms import Preprocess, to_tensor
    from wbc.ensemble import SegmentationEnsemble
    from wbc.inference import CellPipeline

    torch.manual_seed(0)
    a, b = _BNNet({"clahe": False}), _BNNet(second)
    rgb = (np.random.default_rng(0).random((32, 32, 3)) * 80 + 150).astype(np.uint8)
    CellPipeline(SegmentationEnsemble([a, b]), None).adapt_batchnorm([rgb], models=("segmenter",))
    for member, pre in ((a, {"clahe": False}), (b, second)):
        with torch.no_grad():
            own = member.conv(to_tensor(Preprocess.from_config(pre)(rgb))[None]).mean((0, 2, 3))
        torch.testing.assert_close(member.bn.running_mean, own, atol=1e-5, rtol=1e-4)


def test_adapt_bn_leaves_out_the_trial_scales_of_scale_auto() -> None:
    """scale=auto first segments a central window at several trial factors: those tiles are not the
    image's inputs and are not recorded (they were over half the statistics of an 800 px image)."""
    from wbc.inference import CellPipeline
    from wbc.scale import ScaleOptions

    pipe = CellPipeline(_BNNet({"clahe": False}, scale={"nucleus_diameter": 8.0, "resize_factor": 1.0}), None, scale=ScaleOptions(scale="auto"))
    inside, seen = [False], []  # (in a trial scale, recorded) per batch of segmenter inputs
    diameters, real = pipe._diameters, pipe._probability

    def measured(pre, factor):
        inside[0] = True
        try:
            return diameters(pre, factor)
        finally:
            inside[0] = False

    def counted(x):
        seen.append((inside[0], pipe._seg_inputs is not None))
        return real(x)

    pipe._diameters, pipe._probability = measured, counted
    pipe.adapt_batchnorm([np.full((128, 128, 3), 200, np.uint8)], models=("segmenter",))
    assert any(t for t, _ in seen), "no trial scale ran: the test image is too small for scale=auto"
    assert not any(t and r for t, r in seen), "a trial scale's tiles were recorded"
    assert any(r for t, r in seen if not t) and pipe._seg_inputs is None
