"""FFL-S, Feature Fusion Learning with shared low-level layers (Kim et al., ICPR 2020, "Feature Fusion
for Online Mutual Knowledge Distillation").

A shared trunk and m sub-network branches (default 2). A fusion module combines the branches' last
feature maps: concatenation -> depthwise 3x3 conv -> pointwise 1x1 conv (to the branch width) -> BN ->
ReLU -> global pool -> fused classifier z_f. Mutual knowledge distillation (paper Sec. 3.2):
- ensemble KD: the sub-networks' ensemble z_e = mean_i z_i teaches the fused classifier, KD_T(z_e -> z_f);
- fusion KD: the fused classifier teaches every sub-network, sum_i KD_T(z_f -> z_i);
    L = sum_i CE(z_i, y) + CE(z_f, y) + w(e) * [ KD_T(z_e -> z_f) + sum_i KD_T(z_f -> z_i) ],
teachers detached, T = 3, with the ramp-up w(e) of the common protocol (FFL's code follows ONE's).
Deployed model: sub-network 0; the fused classifier is the "ensemble" eval model (row FFL-S-E).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import UsageError
from bench.ranges import MAX_MEMBERS, option
from methods.base import BackboneFactory, OnlineKDMethod, Progress, register_method
from methods.losses import kd_loss
from methods.multibranch import BranchOptions, SharedTrunk, indexed


class FusionModule(nn.Module):
    """cat(feature maps) -> depthwise 3x3 -> pointwise 1x1 -> BN -> ReLU -> pool -> Linear."""

    def __init__(self, channels: int, num_branches: int, num_classes: int) -> None:
        super().__init__()
        total = channels * num_branches
        self.fuse = nn.Sequential(
            nn.Conv2d(total, total, 3, padding=1, groups=total, bias=False),
            nn.Conv2d(total, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, maps: list[Tensor]) -> Tensor:
        fused = self.fuse(torch.cat(maps, dim=1))
        return self.classifier(fused.mean((2, 3)))


@dataclass
class FFLOptions(BranchOptions):
    num_branches: int = option(2, ge=2, le=MAX_MEMBERS)
    temperature: float = option(3.0, gt=0)


@register_method("ffl_s")
class FFLS(OnlineKDMethod):
    display_name = "FFL-S"
    Options = FFLOptions
    headline = "branch0"

    def __init__(self, backbone: BackboneFactory, num_classes: int, opts: FFLOptions) -> None:
        super().__init__(backbone, num_classes, opts)
        if opts.num_branches < 2:
            raise UsageError(f"ffl_s needs num_branches >= 2, got {opts.num_branches}")
        self.net = SharedTrunk(backbone, opts.num_branches, opts)
        channels = self.net.branches[0].model.num_features  # channels of the branches' last feature map
        self.fusion = FusionModule(channels, opts.num_branches, num_classes)

    def forward_all(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        shared = self.net.trunk(x)
        maps = [branch.feature_map(shared) for branch in self.net.branches]
        if maps[0].dim() != 4 or maps[0].shape[1] != self.fusion.classifier.in_features:
            raise UsageError("ffl_s fuses convolutional feature maps (NCHW); this backbone's are not")
        logits = [branch.head(fmap)[0] for branch, fmap in zip(self.net.branches, maps)]
        return logits, self.fusion(maps)

    def losses(self, views: list[Tensor], target: Tensor, progress: Progress) -> dict[str, Tensor]:
        logits, fused = self.forward_all(views[0])
        t, w = self.opts.temperature, progress.rampup
        ensemble = torch.stack(logits).mean(0).detach()
        return {
            "ce": sum(F.cross_entropy(z, target) for z in logits),
            "ce_fused": F.cross_entropy(fused, target),
            "kd_ensemble": w * kd_loss(fused, ensemble, t),
            "kd_fusion": w * sum(kd_loss(z, fused.detach(), t) for z in logits),
        }

    def eval_logits(self, x: Tensor) -> dict[str, Tensor]:
        logits, fused = self.forward_all(x)
        return {**{f"branch{i}": z for i, z in enumerate(logits)}, "ensemble": fused}

    def members(self) -> list[str]:
        return [f"branch{i}" for i in range(self.opts.num_branches)]

    def eval_names(self) -> list[str]:
        return [f"branch{i}" for i in range(self.opts.num_branches)] + ["ensemble"]

    def network_state_dict(self, name: str) -> dict[str, Tensor] | None:
        i = indexed(name, "branch", self.opts.num_branches)
        return None if i is None else self.net.network_state_dict(i)
