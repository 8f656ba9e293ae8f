"""KDCL, Online Knowledge Distillation via Collaborative Learning (Guo et al., CVPR 2020).

m independent networks (no shared layers) trained together; a soft teacher is built from their logits
every batch and distilled into each network:
    sum_i [ CE(z_i, y) + kd_weight * KD_T(z_t -> z_i) ],   z_t detached.
Teacher variants (paper Sec. 3.2):
- `minlogit` (KDCL-MinLogit, default): per sample, each network's logits shifted so that its target-class
  logit is 0, z'_i = z_i - z_i[y]; the teacher takes, per class, the minimum over networks,
  z_t[c] = min_i z'_i[c]: the most confident answer for every class at once (no extra parameters).
- `naive` (KDCL-Naive): per sample, the logits of the network with the lowest cross-entropy.
- `linear` (KDCL-Linear): z_t = sum_i w_i z_i with weights on the simplex (w = softmax(a)) that minimise the
  batch cross-entropy of z_t, found by a few gradient steps on the detached logits.
Every network sees the same augmented batch by default ("same-input"); `distinct_views` gives each its own
augmentation as in the paper's data-augmentation variant. Defaults chosen here (the paper's exact values
could not be checked offline): m = 2, T = 2, kd_weight = 1. Deployed model: network 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.errors import unknown
from bench.ranges import MAX_MEMBERS, option
from methods.base import BackboneFactory, Progress, register_method
from methods.independent import IndependentNetworks
from methods.losses import kd_loss

TEACHERS = ("minlogit", "naive", "linear")


def minlogit_teacher(logits: Tensor, target: Tensor) -> Tensor:
    """min over networks of z_i - z_i[y], per class: logits [m, B, C] -> [B, C]."""
    shifted = logits - logits.gather(2, target.view(1, -1, 1).expand(logits.shape[0], -1, 1))
    return shifted.min(0).values


def naive_teacher(logits: Tensor, target: Tensor) -> Tensor:
    """Per sample, the logits of the network with the lowest cross-entropy: [m, B, C] -> [B, C]."""
    losses = torch.stack([F.cross_entropy(z, target, reduction="none") for z in logits])  # [m, B]
    best = losses.argmin(0)
    return logits[best, torch.arange(logits.shape[1], device=logits.device)]


def linear_teacher(logits: Tensor, target: Tensor, steps: int = 20, lr: float = 1.0) -> Tensor:
    """sum_i w_i z_i with w = softmax(a) minimising the batch cross-entropy (gradient descent on a)."""
    logits = logits.detach().float()
    a = torch.zeros(logits.shape[0], device=logits.device, requires_grad=True)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(torch.einsum("m,mbc->bc", a.softmax(0), logits), target)
            (grad,) = torch.autograd.grad(loss, a)
            a = (a - lr * grad).detach().requires_grad_(True)
    return torch.einsum("m,mbc->bc", a.detach().softmax(0), logits)


@dataclass
class KDCLOptions:
    num_networks: int = option(2, ge=2, le=MAX_MEMBERS)
    teacher: str = option("minlogit", choices=("minlogit", "naive", "linear"))  # minlogit, naive or linear
    temperature: float = option(2.0, gt=0)
    kd_weight: float = option(1.0, ge=0)
    distinct_views: bool = False
    lr_scales: list[float] = option(default_factory=list, gt=0, label="lr x")  # per network, student
    # first ([]: all at the schedule's lr), e.g. [0.1, 1] for a student at a tenth of its partner's lr


@register_method("kdcl")
class KDCL(IndependentNetworks):
    uses_rampup = False  # no KD ramp-up in its losses
    display_name = "KDCL"
    Options = KDCLOptions

    def __init__(self, backbone: BackboneFactory, num_classes: int, opts: KDCLOptions) -> None:
        if opts.teacher not in TEACHERS:
            raise unknown("kdcl teacher", opts.teacher, TEACHERS)
        super().__init__(backbone, num_classes, opts)
        self.views = opts.num_networks if opts.distinct_views else 1

    def teacher(self, logits: Tensor, target: Tensor) -> Tensor:
        build = {"minlogit": minlogit_teacher, "naive": naive_teacher, "linear": linear_teacher}[self.opts.teacher]
        return build(logits.detach(), target)

    def losses(self, views: list[Tensor], target: Tensor, progress: Progress) -> dict[str, Tensor]:
        logits = self.run_networks([views[i % len(views)] for i in range(len(self.nets))])
        teacher = self.teacher(torch.stack(logits), target)
        return {
            "ce": sum(F.cross_entropy(z, target) for z in logits),
            "kd": self.opts.kd_weight * sum(kd_loss(z, teacher, self.opts.temperature) for z in logits),
        }
