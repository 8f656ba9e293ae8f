"""ONE, On-the-fly Native Ensemble (Lan et al., NeurIPS 2018; official Lan1991Xu/ONE_NeurIPS2018).

Shared trunk, m branches. A gate on the trunk output, GAP -> Linear(C -> m) -> BN1d -> ReLU -> softmax,
weights the branches into the teacher z_e = sum_k g_k z_k (paper Eq. 2; gate not detached). Loss (Eq. 6):
    sum_k CE(z_k, y) + CE(z_e, y) + w(e) * sum_k KD_T(z_e -> z_k),   T = 3, z_e detached in KD.
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


@dataclass
class ONEOptions(BranchOptions):
    num_branches: int = option(3, ge=2, le=MAX_MEMBERS)
    temperature: float = option(3.0, gt=0)


@register_method("one")
class ONE(OnlineKDMethod):
    display_name = "ONE"
    Options = ONEOptions
    headline = "branch0"

    def __init__(self, backbone: BackboneFactory, num_classes: int, opts: ONEOptions) -> None:
        super().__init__(backbone, num_classes, opts)
        if opts.num_branches < 2:
            raise UsageError(f"one needs num_branches >= 2, got {opts.num_branches}")
        self.net = SharedTrunk(backbone, opts.num_branches, opts)
        m = opts.num_branches
        self.gate = nn.Sequential(nn.Linear(self.net.trunk_channels, m), nn.BatchNorm1d(m), nn.ReLU(inplace=True),
                                  nn.Softmax(dim=1))  # on the globally pooled trunk output

    def forward_all(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Branch logits and the gated ensemble logits."""
        shared = self.net.trunk(x)
        logits = [z for z, _ in self.net.run_branches(shared)]
        gate = self.gate(self.net.pool(shared))
        teacher = (gate.unsqueeze(2) * torch.stack(logits, dim=1)).sum(1)
        return logits, teacher

    def losses(self, views: list[Tensor], target: Tensor, progress: Progress) -> dict[str, Tensor]:
        logits, teacher = self.forward_all(views[0])
        t = self.opts.temperature
        return {
            "ce": sum(F.cross_entropy(z, target) for z in logits),
            "ce_ensemble": F.cross_entropy(teacher, target),
            "kd": progress.rampup * sum(kd_loss(z, teacher.detach(), t) for z in logits),
        }

    def eval_logits(self, x: Tensor) -> dict[str, Tensor]:
        logits, teacher = self.forward_all(x)
        return {**{f"branch{i}": z for i, z in enumerate(logits)}, "ensemble": teacher}

    def members(self) -> list[str]:
        return [f"branch{i}" for i in range(self.opts.num_branches)]

    def eval_names(self) -> list[str]:
        return [f"branch{i}" for i in range(self.opts.num_branches)] + ["ensemble"]

    def network_state_dict(self, name: str) -> dict[str, Tensor] | None:
        i = indexed(name, "branch", self.opts.num_branches)
        return None if i is None else self.net.network_state_dict(i)
