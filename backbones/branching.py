"""Cut a timm model into a shared trunk and a branch at a stage boundary.

A model whose `forward_features` is a plain sequence of named children (the CIFAR backbones by
construction; timm's ResNet-style models) splits before any stage named in its `feature_info`. The
branch keeps the remaining stages and the model's own head (`forward_head(pre_logits=True)` gives the
pooled feature h, `get_classifier()` the logits), so branch(trunk(x)) == model(x). Every split is
checked against `forward_features` once, on a small input, when it is made.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bench.errors import UsageError

_HEAD_NAMES = {"global_pool", "fc", "head", "head_drop", "classifier", "fc_norm", "pre_logits", "head_hidden_size"}


class Trunk(nn.Sequential):
    """The children of a model before the split point, applied in order."""


class Branch(nn.Module):
    """The remaining stages of a model and its head: x -> (logits, pooled feature)."""

    def __init__(self, model: nn.Module, stage_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.stage_names = list(stage_names)

    def features(self, x: Tensor) -> Tensor:
        for name in self.stage_names:
            x = getattr(self.model, name)(x)
        return self.model.forward_head(x, pre_logits=True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.features(x)
        return self.model.get_classifier()(h), h


@dataclass
class Split:
    trunk: Trunk
    branch: Branch
    trunk_channels: int  # channels of the trunk's output (e.g. ONE's gate input)
    feature_dim: int  # size of the branch's pooled feature h


def feature_sequence(model: nn.Module) -> list[str]:
    """Names of the children that `forward_features` applies in order."""
    if hasattr(model, "feature_modules"):
        return list(model.feature_modules)
    return [name for name, _ in model.named_children() if name not in _HEAD_NAMES]


def split_points(model: nn.Module) -> list[str]:
    """Valid split points: stages of `feature_info` that are top-level children, except the first child."""
    sequence = feature_sequence(model)
    stages = [info["module"] for info in getattr(model, "feature_info", [])]
    return [s for s in stages if s in sequence and sequence.index(s) > 0]


def default_split_point(model: nn.Module) -> str:
    """Before the last stage (methods.md: the branch = last stage + pool + classifier)."""
    points = split_points(model)
    if not points:
        raise UsageError(f"{type(model).__name__} cannot be split into trunk and branches: "
                         "its feature_info names no top-level stage")
    return points[-1]


def _probe_input(model: nn.Module) -> Tensor:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    chans, height, width = cfg.get("input_size", (3, 32, 32))
    return torch.randn(2, chans, min(height, 64), min(width, 64))


def split_model(model: nn.Module, at: str | None = None, name: str = "backbone") -> Split:
    """Split `model` before stage `at` (default: its last stage) into a trunk and a branch."""
    points = split_points(model)
    at = at or default_split_point(model)
    if at not in points:
        raise UsageError(f"cannot split {name} at '{at}': valid split points are {', '.join(points) or 'none'}")
    sequence = feature_sequence(model)
    cut = sequence.index(at)
    trunk = Trunk()
    for child in sequence[:cut]:
        trunk.add_module(child, getattr(model, child))
    head_model = copy.copy(model)  # shallow: shares the remaining children, drops the trunk's
    head_model._modules = {k: (nn.Identity() if k in sequence[:cut] else v) for k, v in model._modules.items()}
    branch = Branch(head_model, sequence[cut:])

    was_training = model.training
    model.eval()
    with torch.no_grad():
        x = _probe_input(model)
        mid = trunk(x)
        h = branch.features(mid)
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
    model.train(was_training)
    if h.shape != expected.shape or not torch.allclose(h, expected, rtol=1e-4, atol=1e-5):
        raise UsageError(f"cannot split {name}: its forward_features is not a plain sequence of stages "
                         f"({', '.join(sequence)})")
    return Split(trunk, branch, trunk_channels=mid.shape[1], feature_dim=h.shape[-1])
