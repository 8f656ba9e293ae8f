"""CIFAR DenseNet-BC (Huang et al., 2017) as the online-KD literature uses it (methods.md):
DenseNet-40-12 = growth 12, three blocks of 6 bottleneck layers (BN-ReLU-1x1(4k)-BN-ReLU-3x3(k)),
compression 0.5, 24 initial features, a final BN-ReLU; 0.19M parameters at 100 classes.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from backbones._base import CifarNet, cifar_cfg, init_weights


class DenseLayer(nn.Module):
    def __init__(self, in_chs: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_chs), nn.ReLU(inplace=True), nn.Conv2d(in_chs, bn_size * growth, 1, bias=False),
            nn.BatchNorm2d(bn_size * growth), nn.ReLU(inplace=True),
            nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.body(x)], 1)


def _transition(in_chs: int, out_chs: int) -> nn.Module:
    return nn.Sequential(nn.BatchNorm2d(in_chs), nn.ReLU(inplace=True), nn.Conv2d(in_chs, out_chs, 1, bias=False),
                         nn.AvgPool2d(2))


class CifarDenseNet(CifarNet):
    def __init__(self, growth: int = 12, block_layers: tuple[int, ...] = (6, 6, 6), bn_size: int = 4,
                 compression: float = 0.5, init_features: int = 24, num_classes: int = 100,
                 in_chans: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__(num_classes, in_chans, drop_rate)
        self.conv1 = nn.Conv2d(in_chans, init_features, 3, padding=1, bias=False)
        chs, self.feature_modules, self.feature_info = init_features, ["conv1"], []
        for i, n in enumerate(block_layers):
            layers = []
            for _j in range(n):
                layers.append(DenseLayer(chs, growth, bn_size))
                chs += growth
            setattr(self, f"block{i + 1}", nn.Sequential(*layers))
            self.feature_modules.append(f"block{i + 1}")
            self.feature_info.append({"num_chs": chs, "reduction": 2**i, "module": f"block{i + 1}"})
            if i < len(block_layers) - 1:
                out = int(chs * compression)
                setattr(self, f"trans{i + 1}", _transition(chs, out))
                self.feature_modules.append(f"trans{i + 1}")
                chs = out
        self.norm_final = nn.Sequential(nn.BatchNorm2d(chs), nn.ReLU(inplace=True))
        self.feature_modules.append("norm_final")
        self.num_features = chs
        self.fc = self.make_classifier(num_classes)
        init_weights(self)


default_cfgs = generate_default_cfgs({"cifar_densenet40_12": cifar_cfg()})


@register_model
def cifar_densenet40_12(pretrained: bool = False, **kwargs: Any) -> CifarDenseNet:
    """DenseNet-BC-40 with growth rate 12."""
    if pretrained:
        raise ValueError("cifar_densenet40_12: no pretrained weights exist for the CIFAR backbones")
    return build_model_with_cfg(CifarDenseNet, "cifar_densenet40_12", pretrained, **kwargs)
