"""Shared machinery of the CIFAR backbones: timm's model contract over a plain sequence of stages."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

CIFAR_MEAN = (0.5071, 0.4865, 0.4409)  # CIFAR-100 training set
CIFAR_STD = (0.2673, 0.2564, 0.2762)


def cifar_cfg(**kwargs: Any) -> dict[str, Any]:
    """A timm default cfg for a 32x32 CIFAR network (no pretrained weights exist)."""
    return {
        "url": "", "num_classes": 100, "input_size": (3, 32, 32), "pool_size": None,
        "crop_pct": 1.0, "interpolation": "bilinear", "mean": CIFAR_MEAN, "std": CIFAR_STD,
        "first_conv": "conv1", "classifier": "fc", "license": "mit", **kwargs,
    }


def init_weights(model: nn.Module) -> None:
    """He-normal convolutions, unit BatchNorm, zero biases (the CIFAR ResNet/DenseNet convention)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


class _GlobalAvgPool(torch.autograd.Function):
    """Mean over H, W of [B, C, H, W] -> [B, C], whose gradient keeps the input's memory format.

    torch's own pooling backward hands back an NCHW-contiguous gradient even for a channels_last input; the
    ReLU backward that meets it then mixes layouts, which runs ~30x slower than either layout alone."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape
        ctx.channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        return x.mean((2, 3))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        b, c, h, w = ctx.shape
        out = (grad / (h * w))[:, :, None, None].expand(b, c, h, w)
        return out.contiguous(memory_format=torch.channels_last if ctx.channels_last else torch.contiguous_format)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C] global average; the gradient comes back in x's memory format. Without autograd
    (inference, TorchScript tracing, ONNX export) it is a plain mean, which every exporter knows."""
    if not (torch.is_grad_enabled() and x.requires_grad) or torch.jit.is_tracing() or torch.jit.is_scripting():
        return x.mean((2, 3))
    return _GlobalAvgPool.apply(x)


class CifarNet(nn.Module):
    """Base class: `forward_features` applies the children named in `feature_modules` in order, then
    `forward_head` global-average-pools and applies the classifier `fc`.

    Subclasses build their children, set `feature_modules`, `feature_info`, `num_features` and
    implement `make_classifier(num_classes)`. That the features are a plain sequence of named
    children is what lets `backbones.branching` cut any of these networks into trunk and branch.
    """

    feature_modules: list[str]
    feature_info: list[dict[str, Any]]
    num_features: int

    def __init__(self, num_classes: int, in_chans: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

    def make_classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "avg"):
            raise ValueError(f"only global_pool='avg' is supported, got {global_pool!r}")
        self.num_classes = num_classes
        self.fc = self.make_classifier(num_classes)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.feature_modules:
            x = getattr(self, name)(x)
        return x

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None,
                              intermediates_only: bool = False):
        """timm's contract: the outputs of the stages in `feature_info` (all, the last n, or by index)."""
        stage_names = [info["module"] for info in self.feature_info]
        n = len(stage_names)
        if indices is None:
            wanted = set(range(n))
        elif isinstance(indices, int):
            wanted = set(range(n - indices, n))
        else:
            wanted = {i % n for i in indices}
        intermediates = []
        for name in self.feature_modules:
            x = getattr(self, name)(x)
            if name in stage_names and stage_names.index(name) in wanted:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = global_avg_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
