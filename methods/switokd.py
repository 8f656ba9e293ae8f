"""SwitOKD, Switchable Online Knowledge Distillation (Qian et al., ECCV 2022), as its official code does it
(hfutqian/SwitOKD @ a3f9623, SwitOKD_code/CIFAR-100/WRN16-2_0.5mobilenetv2/main.py, L35-119).

Two independent networks on one shared batch: network 0 the student, network 1 the larger teacher (`--backbones
STUDENT+TEACHER`; alone, both are the student's backbone). Per batch, from detached softmax outputs at T = 1:
    d_s = mean ||p_s - onehot(y)||_1,  d_t likewise,  G = mean ||p_t - p_s||_1,
    eps = exp(-d_t / (d_t + d_s)),     delta = d_s - eps * d_t.
Expert mode when G > delta and d_t < d_s: only the student learns,
    L_s = CE(z_s, y) + KL(p_t || p_s)                (teacher detached),
and the teacher's optimizer group does not step at all (weights, momentum and weight decay untouched; its forward
ran in train mode, so its BN running statistics still move). Learning mode otherwise: both learn, the teacher on
    L_t = CE(z_t, y) + KL(p_s || p_t)                (student detached).
KL at T = 1 without a T^2 factor. The share of expert-mode batches is logged per epoch (`stats.expert_share`).
Official recipe: teacher lr 0.1, student 0.01 (`switokd.lr_scales=[0.1,1]`); the common protocol trains both at 0.1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.errors import UsageError
from bench.ranges import option
from methods.base import BackboneFactory, Progress, register_method
from methods.independent import IndependentNetworks
from methods.losses import kd_loss


@dataclass
class SwitOKDOptions:
    num_networks: int = option(2, ge=2, le=2)  # the student and the teacher (fixed)
    lr_scales: list[float] = option(default_factory=list, gt=0, label="lr x")  # per network, student first;
    # []: both at the schedule's lr (the common protocol); [0.1, 1]: the official student 0.01 / teacher 0.1


def switch_state(z_s: Tensor, z_t: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(expert mode?, d_s, d_t, G) of one batch, from detached softmax outputs at T = 1 (official main.py)."""
    p_s, p_t = z_s.detach().float().softmax(1), z_t.detach().float().softmax(1)
    onehot = F.one_hot(target, p_s.shape[1]).float()
    d_s = (p_s - onehot).abs().sum(1).mean()
    d_t = (p_t - onehot).abs().sum(1).mean()
    gap = (p_t - p_s).abs().sum(1).mean()
    eps = torch.exp(-d_t / (d_t + d_s))
    delta = d_s - eps * d_t
    return (gap > delta) & (d_t < d_s), d_s, d_t, gap


@register_method("switokd")
class SwitOKD(IndependentNetworks):
    uses_rampup = False  # no KD ramp-up in its losses
    display_name = "SwitOKD"
    Options = SwitOKDOptions
    headline = "net0"
    partner_range = (0, 1)
    partner_role = "T"
    graphable = False  # the switch is decided on the host every batch

    def __init__(self, backbone: BackboneFactory, num_classes: int, opts: SwitOKDOptions) -> None:
        if opts.num_networks != 2:
            raise UsageError(f"switokd trains exactly 2 networks (student and teacher), got {opts.num_networks}")
        super().__init__(backbone, num_classes, opts)
        self.expert = False

    def param_groups(self) -> list[dict]:
        return self.network_groups()  # one group per network, always: the teacher's may skip a step

    def losses(self, views: list[Tensor], target: Tensor, progress: Progress) -> dict[str, Tensor]:
        z_s, z_t = self.run_networks([views[0], views[0]])
        expert, *_ = switch_state(z_s, z_t, target)
        self.expert = bool(expert)  # one host sync per batch: the switch decides which networks step
        terms = {"ce_student": F.cross_entropy(z_s, target), "kl_student": kd_loss(z_s, z_t.detach(), 1.0)}
        if self.expert:
            zero = z_s.new_zeros(())
            terms.update(ce_teacher=zero, kl_teacher=zero)
        else:
            terms.update(ce_teacher=F.cross_entropy(z_t, target), kl_teacher=kd_loss(z_t, z_s.detach(), 1.0))
        return terms

    def groups_to_step(self) -> list[bool]:
        return [True, not self.expert]  # expert mode: the teacher's group does not step at all

    def step_stats(self) -> dict[str, float]:
        return {"expert_share": 1.0 if self.expert else 0.0}
