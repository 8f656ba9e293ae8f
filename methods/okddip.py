"""OKDDip, Online Knowledge Distillation with Diverse Peers (Chen et al., AAAI 2020;
official DefangChen/OKDDip-AAAI2020, train_GL.py).

Shared trunk, m auxiliary peers and one group leader (m + 1 branches of the same shape).
Peer attention (paper Eq. 4-6): q_a = W_q h_a, k_b = W_k h_b (Linear(d -> d/8), no bias, shared by all
peers), alpha_ab = softmax_b(q_a . k_b) with a itself included; peer a's target x_a = sum_b alpha_ab z_b.
Loss (Eq. 8-9):
    sum_a CE(z_a, y) + CE(z_leader, y) + w(e) * [ sum_a KD_T(x_a -> z_a) + KD_T(mean_a z_a -> z_leader) ]
with T = 3. Neither x_a nor mean_a z_a is detached, as in the official code: that is how W_q, W_k learn.
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
class OKDDipOptions(BranchOptions):
    num_peers: int = option(3, ge=2, le=MAX_MEMBERS)
    temperature: float = option(3.0, gt=0)
    detach_targets: bool = False  # True: treat x_a and the leader's target as constants


@register_method("okddip")
class OKDDip(OnlineKDMethod):
    display_name = "OKDDip"
    Options = OKDDipOptions
    headline = "leader"

    def __init__(self, backbone: BackboneFactory, num_classes: int, opts: OKDDipOptions) -> None:
        super().__init__(backbone, num_classes, opts)
        if opts.num_peers < 2:
            raise UsageError(f"okddip needs num_peers >= 2, got {opts.num_peers}")
        self.net = SharedTrunk(backbone, opts.num_peers + 1, opts)  # the last branch is the leader
        d = self.net.feature_dim
        self.query = nn.Linear(d, max(1, d // 8), bias=False)
        self.key = nn.Linear(d, max(1, d // 8), bias=False)

    def peer_targets(self, logits: Tensor, features: Tensor) -> Tensor:
        """x [B, m, C] from peer logits [B, m, C] and pooled features [B, m, d]."""
        energy = torch.bmm(self.query(features), self.key(features).transpose(1, 2))  # [B, m, m]
        return torch.bmm(energy.softmax(dim=2), logits)

    def forward_all(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Peer logits [B, m, C], peer features [B, m, d], leader logits [B, C]."""
        outputs = self.net.run_branches(self.net.trunk(x))
        peers, (leader, _) = outputs[:-1], outputs[-1]
        return torch.stack([z for z, _ in peers], 1), torch.stack([h for _, h in peers], 1), leader

    def losses(self, views: list[Tensor], target: Tensor, progress: Progress) -> dict[str, Tensor]:
        logits, features, leader = self.forward_all(views[0])
        targets = self.peer_targets(logits, features)
        leader_target = logits.mean(1)
        if self.opts.detach_targets:
            targets, leader_target = targets.detach(), leader_target.detach()
        m, t, w = logits.shape[1], self.opts.temperature, progress.rampup
        return {
            "ce": sum(F.cross_entropy(logits[:, a], target) for a in range(m)),
            "ce_leader": F.cross_entropy(leader, target),
            "kd": w * sum(kd_loss(logits[:, a], targets[:, a], t) for a in range(m)),
            "kd_leader": w * kd_loss(leader, leader_target, t),
        }

    def eval_logits(self, x: Tensor) -> dict[str, Tensor]:
        logits, _, leader = self.forward_all(x)
        out = {f"peer{a}": logits[:, a] for a in range(logits.shape[1])}
        return {"leader": leader, **out, "ensemble": logits.mean(1)}

    def members(self) -> list[str]:
        return [f"peer{a}" for a in range(self.opts.num_peers)]

    def eval_names(self) -> list[str]:
        return ["leader"] + [f"peer{a}" for a in range(self.opts.num_peers)] + ["ensemble"]

    def network_state_dict(self, name: str) -> dict[str, Tensor] | None:
        m = self.opts.num_peers
        i = m if name == "leader" else indexed(name, "peer", m)  # the leader is the last branch
        return None if i is None else self.net.network_state_dict(i)
