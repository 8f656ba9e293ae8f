"""CIFAR ResNets of the online-KD literature (methods.md): a 3x3 stem of 16 channels and three stages
of widths 16/32/64 (x expansion), strides 1/2/2.

- cifar_resnet8/32: BasicBlock [1,1,1] / [5,5,5]                (He et al., 2016, CIFAR variant)
- cifar_resnet110: Bottleneck [12,12,12], expansion 4           (OKDDip / PCL lineage)
- cifar_wrn_20_8: Bottleneck [2,2,2], 8x inner width, exp. 4    (OKDDip lineage; not Zagoruyko's WRN)
Shortcuts are 1x1 conv + BN where shape changes (as in MCL-OKD / OKDDip code).
"""

from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from backbones._base import CifarNet, cifar_cfg, init_weights


def _shortcut(in_chs: int, out_chs: int, stride: int) -> nn.Module:
    if stride == 1 and in_chs == out_chs:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), nn.BatchNorm2d(out_chs))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_chs: int, planes: int, stride: int = 1, width_factor: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_chs, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.shortcut = _shortcut(in_chs, out, stride)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(y)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_chs: int, planes: int, stride: int = 1, width_factor: int = 1) -> None:
        super().__init__()
        inner, out = planes * width_factor, planes * self.expansion
        self.conv1 = nn.Conv2d(in_chs, inner, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.shortcut = _shortcut(in_chs, out, stride)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.act(self.bn2(self.conv2(y)))
        return self.act(self.bn3(self.conv3(y)) + self.shortcut(x))


class CifarResNet(CifarNet):
    def __init__(self, block: type[nn.Module], layers: tuple[int, int, int], width_factor: int = 1,
                 num_classes: int = 100, in_chans: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__(num_classes, in_chans, drop_rate)
        self.conv1 = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.act1 = nn.ReLU(inplace=True)
        in_chs, self.feature_info = 16, []
        for i, (planes, n, stride) in enumerate(zip((16, 32, 64), layers, (1, 2, 2))):
            blocks = []
            for j in range(n):
                blocks.append(block(in_chs, planes, stride if j == 0 else 1, width_factor))
                in_chs = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append({"num_chs": in_chs, "reduction": 2**i, "module": f"layer{i + 1}"})
        self.feature_modules = ["conv1", "bn1", "act1", "layer1", "layer2", "layer3"]
        self.num_features = in_chs
        self.fc = self.make_classifier(num_classes)
        init_weights(self)


def _create(variant: str, pretrained: bool, **kwargs: Any) -> CifarResNet:
    if pretrained:
        raise ValueError(f"{variant}: no pretrained weights exist for the CIFAR backbones")
    return build_model_with_cfg(CifarResNet, variant, pretrained, feature_cfg={"flatten_sequential": True},
                                **kwargs)


default_cfgs = generate_default_cfgs({
    name: cifar_cfg() for name in ("cifar_resnet8", "cifar_resnet32", "cifar_resnet110", "cifar_wrn_20_8")
})


@register_model
def cifar_resnet8(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """Tiny BasicBlock [1,1,1] ResNet for tests."""
    return _create("cifar_resnet8", pretrained, block=BasicBlock, layers=(1, 1, 1), **kwargs)


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-32: BasicBlock [5,5,5], 0.47M parameters at 100 classes."""
    return _create("cifar_resnet32", pretrained, block=BasicBlock, layers=(5, 5, 5), **kwargs)


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-110: Bottleneck [12,12,12], expansion 4, 1.17M parameters at 100 classes."""
    return _create("cifar_resnet110", pretrained, block=Bottleneck, layers=(12, 12, 12), **kwargs)


@register_model
def cifar_wrn_20_8(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """WRN-20-8 of the OKDDip code: Bottleneck [2,2,2] with 8x inner width, 6.87M parameters."""
    return _create("cifar_wrn_20_8", pretrained, block=Bottleneck, layers=(2, 2, 2), width_factor=8, **kwargs)
