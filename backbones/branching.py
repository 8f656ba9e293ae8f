"""Cut any timm model into a shared trunk and a branch at a stage boundary, through timm's contract.

The order in which `forward_features` calls a model's children is traced once (forward pre-hooks on a
small probe input); a child that holds stages named by `feature_info` (e.g. `blocks.3`, `stages.2`)
is expanded into those stages. A model whose features are that plain sequence splits before any of its
`feature_info` stages: the trunk runs the modules before it, the branch the rest and the model's own head
(`forward_head(pre_logits=True)` gives the pooled feature h, `get_classifier()` the logits). Families
whose forward is not a plain sequence have an override (ViT-style: patch embedding, then class token and
position embedding, then blocks). Every split is checked once: branch(trunk(x)) must equal model(x).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from backbones._base import global_avg_pool
from bench.errors import UsageError

BRANCH_SHARE = 0.10  # the default split leaves at least this share of the feature parameters to the branch


def head_outputs(model: nn.Module, feature_map: Tensor) -> tuple[Tensor, Tensor]:
    """(logits, pooled feature) of a timm model's feature map. The head runs twice (cheap: a pooling), since some
    classifiers are convolutions on an unflattened pool (DLA)."""
    return model.forward_head(feature_map), model.forward_head(feature_map, pre_logits=True)


class Trunk(nn.Module):
    """The modules of a model before the split point, applied in order (plus a family's own stem step)."""

    def __init__(self, modules: list[tuple[str, nn.Module]], stem: nn.Module | None = None) -> None:
        super().__init__()
        self.names = [name for name, _ in modules]
        self.stages = nn.ModuleList(module for _, module in modules)
        self.stem = stem

    def forward(self, x: Tensor) -> Tensor:
        if self.stem is not None:
            x = self.stem(x)
        for module in self.stages:
            x = module(x)
        return x


class Branch(nn.Module):
    """The remaining stages of a model and its head: x -> (logits, pooled feature)."""

    def __init__(self, model: nn.Module, stage_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.stage_names = list(stage_names)

    def feature_map(self, x: Tensor) -> Tensor:
        """The branch's stages: the feature map before pooling."""
        for name in self.stage_names:
            x = self.model.get_submodule(name)(x)
        return x

    def head(self, feature_map: Tensor) -> tuple[Tensor, Tensor]:
        """(logits, pooled feature) of a feature map (`head_outputs`)."""
        return head_outputs(self.model, feature_map)

    def features(self, x: Tensor) -> Tensor:
        return self.model.forward_head(self.feature_map(x), pre_logits=True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(self.feature_map(x))


def plain_state_dict(trunk: Trunk, branch: Branch) -> dict[str, Tensor]:
    """trunk + branch reassembled into the state dict of the model they were cut from (its own keys): the
    trunk's modules go back under their names, a family stem's parameters back to the top level."""
    state: dict[str, Tensor] = {}
    if isinstance(trunk.stem, VitStem):
        state.update(trunk.stem.vit.state_dict())
    for name, module in zip(trunk.names, trunk.stages):
        state.update({f"{name}.{key}": value for key, value in module.state_dict().items()})
    state.update(branch.model.state_dict())  # the trunk's places there are parameter-free Identity modules
    return state


@dataclass
class Split:
    trunk: Trunk
    branch: Branch
    trunk_channels: int  # channels of the trunk's output (e.g. ONE's gate input)
    feature_dim: int  # size of the branch's pooled feature h
    channel_dim: int = 1  # where the trunk output keeps its channels: 1 (NCHW) or -1 (NHWC, tokens)

    def pool(self, x: Tensor) -> Tensor:
        """Global average of a trunk output over everything but batch and channels: [B, C]."""
        if self.channel_dim != 1:
            x = x.movedim(-1, 1)
        if x.dim() == 4:
            return global_avg_pool(x)
        return x.flatten(2).mean(2) if x.dim() > 2 else x


# ---------------------------------------------------------------------------------------------
# families


class VitStem(nn.Module):
    """ViT/DeiT before the blocks: patch embedding, class/register tokens and position embedding."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.vit = copy.copy(model)  # shares the stem modules and embeddings; blocks and head dropped below
        keep = ("patch_embed", "pos_drop", "patch_drop", "norm_pre", "rope")
        self.vit._modules = {k: v for k, v in model._modules.items() if k in keep}
        self.vit._parameters, self.vit._buffers = dict(model._parameters), dict(model._buffers)

    def forward(self, x: Tensor) -> Tensor:
        v = self.vit
        x = v._pos_embed(v.patch_embed(x))
        return v.norm_pre(v.patch_drop(x))


def is_vit(model: nn.Module) -> bool:
    return all(hasattr(model, a) for a in ("_pos_embed", "patch_embed", "blocks", "norm")) and isinstance(
        getattr(model, "blocks", None), nn.Sequential)


# ---------------------------------------------------------------------------------------------


def _probe_input(model: nn.Module) -> Tensor:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    chans, height, width = cfg.get("input_size", (3, 32, 32))
    embed = getattr(model, "patch_embed", None) or getattr(model, "stem", None)
    fixed = getattr(embed, "img_size", None)  # models built for one input size (ViT, MLP-Mixer, ...)
    if isinstance(fixed, (tuple, list)) and getattr(embed, "strict_img_size", True):
        return torch.randn(2, chans, *fixed)
    return torch.randn(2, chans, min(height, 64), min(width, 64))


def _stage_names(model: nn.Module) -> list[str]:
    return [info["module"] for info in getattr(model, "feature_info", []) if info.get("module")]


def feature_sequence(model: nn.Module, probe: Tensor | None = None) -> list[str]:
    """Names of the modules that `forward_features` applies, in call order (traced)."""
    if is_vit(model):
        return [f"blocks.{i}" for i in range(len(model.blocks))] + ["norm"]
    expand = {name.split(".")[0] for name in _stage_names(model) if "." in name}
    calls: list[str] = []
    handles = []

    def record(name: str):
        return lambda module, args: calls.append(name)

    for name, child in model.named_children():
        if name in expand:
            for sub, grandchild in child.named_children():
                handles.append(grandchild.register_forward_pre_hook(record(f"{name}.{sub}")))
        else:
            handles.append(child.register_forward_pre_hook(record(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model.forward_features(probe if probe is not None else _probe_input(model))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return calls


def split_points(model: nn.Module) -> list[str]:
    """Valid split points: the model's `feature_info` stages that start a module of its feature sequence."""
    sequence = feature_sequence(model)
    if len(set(sequence)) != len(sequence):
        return []  # a module called twice: not a plain sequence
    return [s for s in _stage_names(model) if s in sequence and sequence.index(s) > 0]


def default_split_point(model: nn.Module, points: list[str] | None = None) -> str:
    """The last stage whose branch keeps >= 10% of the feature parameters (for the CIFAR networks and
    timm's ResNets: the last stage, as in methods.md)."""
    points = split_points(model) if points is None else points
    if not points:
        raise UsageError(f"{type(model).__name__} cannot be split into trunk and branches: "
                         "its forward_features is not a plain sequence of feature_info stages")
    sequence = feature_sequence(model)
    sizes = [sum(p.numel() for p in model.get_submodule(name).parameters()) for name in sequence]
    total = sum(sizes) or 1
    for point in reversed(points):
        if sum(sizes[sequence.index(point):]) >= BRANCH_SHARE * total:
            return point
    return points[0]


def _detach_from(model: nn.Module, name: str) -> nn.Module:
    """Replace submodule `name` of `model` by an Identity and return the module."""
    module = model.get_submodule(name)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, nn.Identity())
    return module


def split_model(model: nn.Module, at: str | None = None, name: str = "backbone") -> Split:
    """Split `model` (consumed: its trunk modules move to the Trunk) before stage `at` (default: see
    `default_split_point`) into a trunk and a branch; branch(trunk(x)) == model(x)."""
    probe = _probe_input(model)
    points = split_points(model)
    if not points:
        raise UsageError(f"cannot split {name}: its forward_features is not a plain sequence of feature_info "
                         "stages, and no family override applies")
    at = at or default_split_point(model, points)
    if at not in points:
        raise UsageError(f"cannot split {name} at '{at}': valid split points are {', '.join(points)}")
    sequence = feature_sequence(model, probe)
    cut = sequence.index(at)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(probe), pre_logits=True)
    stem = None
    if is_vit(model):
        stem = VitStem(model)
        for attr in ("patch_embed", "pos_drop", "patch_drop", "norm_pre"):
            if hasattr(model, attr):
                setattr(model, attr, nn.Identity())
        for param in ("pos_embed", "cls_token", "reg_token"):
            if isinstance(getattr(model, param, None), nn.Parameter):
                setattr(model, param, None)
    trunk = Trunk([(n, _detach_from(model, n)) for n in sequence[:cut]], stem=stem)
    branch = Branch(model, sequence[cut:])
    trunk.train(was_training)
    with torch.no_grad():
        trunk.eval(), branch.eval()
        mid = trunk(probe)
        h = branch.features(mid)
    trunk.train(was_training), branch.train(was_training)
    if h.shape != expected.shape or not torch.allclose(h, expected, rtol=1e-4, atol=1e-5):
        raise UsageError(f"cannot split {name} at '{at}': trunk + branch do not reproduce the model "
                         f"(its forward_features is not a plain sequence of {', '.join(sequence)})")
    channel_dim = -1 if is_vit(model) or getattr(model, "output_fmt", "NCHW") == "NHWC" or mid.dim() == 3 else 1
    return Split(trunk, branch, trunk_channels=mid.shape[channel_dim], feature_dim=h.shape[-1],
                 channel_dim=channel_dim)
