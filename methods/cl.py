"""CL, Collaborative Learning (Song & Chai, NeurIPS 2018), flat ILR-sharing variant.

A shared trunk with m heads; at the split point the gradient flowing back into the trunk is scaled
by 1/m (backprop rescaling, paper Sec. 3.3), identity forward. Head i minimises
    beta * CE(z_i, y) + (1 - beta) * KD_T( mean_{j != i} z_j -> z_i ),   target detached,
with beta = 0.5 and T = 2 (winycg/MCL-OKD main_cifar_cl_ilr.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.errors import UsageError
from methods.base import BackboneFactory, OnlineKDMethod, Progress, register_method
from methods.losses import kd_loss
from methods.multibranch import BranchOptions, SharedTrunk, indexed


class GradScale(torch.autograd.Function):
    """Identity forward; the backward gradient multiplied by `scale`."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad * ctx.scale, None


@dataclass
class CLOptions(BranchOptions):
    num_heads: int = 3
    beta: float = 0.5
    temperature: float = 2.0
    backprop_rescale: bool = True


@register_method("cl")
class CL(OnlineKDMethod):
    display_name = "CL"
    Options = CLOptions
    headline = "head0"

    def __init__(self, backbone: BackboneFactory, num_classes: int, opts: CLOptions) -> None:
        super().__init__(backbone, num_classes, opts)
        if opts.num_heads < 2:
            raise UsageError(f"cl needs num_heads >= 2, got {opts.num_heads}")
        self.net = SharedTrunk(backbone, opts.num_heads, opts)

    def head_logits(self, x: Tensor) -> list[Tensor]:
        shared = self.net.trunk(x)
        if self.opts.backprop_rescale:
            shared = GradScale.apply(shared, 1.0 / self.opts.num_heads)
        return [z for z, _ in self.net.run_branches(shared)]

    def losses(self, views: list[Tensor], target: Tensor, progress: Progress) -> dict[str, Tensor]:
        logits = self.head_logits(views[0])
        m, beta = len(logits), self.opts.beta
        total = torch.stack(logits).sum(0)
        ce = sum(F.cross_entropy(z, target) for z in logits)
        kd = sum(kd_loss(z, ((total - z) / (m - 1)).detach(), self.opts.temperature) for z in logits)
        return {"ce": beta * ce, "kd": (1.0 - beta) * kd}

    def eval_logits(self, x: Tensor) -> dict[str, Tensor]:
        logits = {f"head{i}": z for i, z in enumerate(self.head_logits(x))}
        logits["ensemble"] = torch.stack(list(logits.values())).mean(0)
        return logits

    def eval_names(self) -> list[str]:
        return [f"head{i}" for i in range(self.opts.num_heads)] + ["ensemble"]

    def network_state_dict(self, name: str) -> dict[str, Tensor] | None:
        i = indexed(name, "head", self.opts.num_heads)
        return None if i is None else self.net.network_state_dict(i)
