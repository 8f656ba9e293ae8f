"""CIFAR VGG-16 with BatchNorm as in the OKDDip code and the PCL re-implementation (methods.md):
13 conv3x3(+bias)-BN-ReLU layers in 5 blocks, each ending in a 2x2 max-pool, then
Linear(512,512)-ReLU-Dropout-Linear(512,512)-ReLU-Dropout-Linear(512,classes); 15.30M parameters.
"""

from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from backbones._base import CifarNet, cifar_cfg, init_weights

VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class CifarVGG(CifarNet):
    def __init__(self, blocks: tuple[tuple[int, ...], ...] = VGG16_BLOCKS, num_classes: int = 100,
                 in_chans: int = 3, drop_rate: float = 0.0, classifier_dropout: float = 0.0) -> None:
        super().__init__(num_classes, in_chans, drop_rate=0.0)
        self.classifier_dropout = classifier_dropout or drop_rate
        in_chs, self.feature_info, self.feature_modules = in_chans, [], []
        for i, widths in enumerate(blocks):
            layers: list[nn.Module] = []
            for width in widths:
                layers += [nn.Conv2d(in_chs, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                in_chs = width
            layers.append(nn.MaxPool2d(2, 2))
            setattr(self, f"block{i + 1}", nn.Sequential(*layers))
            self.feature_modules.append(f"block{i + 1}")
            self.feature_info.append({"num_chs": in_chs, "reduction": 2 ** (i + 1), "module": f"block{i + 1}"})
        self.num_features = in_chs
        self.fc = self.make_classifier(num_classes)
        init_weights(self)

    def make_classifier(self, num_classes: int) -> nn.Module:
        d, p = self.num_features, self.classifier_dropout
        return nn.Sequential(
            nn.Linear(d, 512), nn.ReLU(inplace=True), nn.Dropout(p),
            nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(p),
            nn.Linear(512, num_classes),
        )


default_cfgs = generate_default_cfgs({"cifar_vgg16": cifar_cfg(first_conv="block1.0")})


@register_model
def cifar_vgg16(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-16 (BN) for 32x32 input with the 3-layer classifier; `classifier_dropout` defaults to 0."""
    if pretrained:
        raise ValueError("cifar_vgg16: no pretrained weights exist for the CIFAR backbones")
    return build_model_with_cfg(CifarVGG, "cifar_vgg16", pretrained, **kwargs)
