"""DML, Deep Mutual Learning (Zhang et al., CVPR 2018).

m independent networks on the same batch, updated simultaneously. Network i minimises
    CE(z_i, y) + 1/(m-1) * sum_{j != i} KD_T(z_j -> z_i)            (paper Eq. 10, m-network form)
with KD_T = T^2 KL(p_j || p_i) and the peers' p_j detached; T = 1 as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import UsageError
from methods.base import BackboneFactory, OnlineKDMethod, Progress, register_method
from methods.losses import kd_loss


@dataclass
class DMLOptions:
    num_networks: int = 3
    temperature: float = 1.0


@register_method("dml")
class DML(OnlineKDMethod):
    Options = DMLOptions
    headline = "net0"

    def __init__(self, backbone: BackboneFactory, num_classes: int, opts: DMLOptions) -> None:
        super().__init__(backbone, num_classes, opts)
        if opts.num_networks < 2:
            raise UsageError(f"dml needs num_networks >= 2, got {opts.num_networks}")
        self.nets = nn.ModuleList(backbone() for _ in range(opts.num_networks))

    def losses(self, views: list[Tensor], target: Tensor, progress: Progress) -> dict[str, Tensor]:
        logits = [net(views[0]) for net in self.nets]
        m, t = len(logits), self.opts.temperature
        ce = sum(F.cross_entropy(z, target) for z in logits)
        kl = sum(kd_loss(z_i, z_j.detach(), t) for i, z_i in enumerate(logits)
                 for j, z_j in enumerate(logits) if j != i) / (m - 1)
        return {"ce": ce, "kl": kl}

    def eval_logits(self, x: Tensor) -> dict[str, Tensor]:
        logits = {f"net{i}": net(x) for i, net in enumerate(self.nets)}
        logits["ensemble"] = torch.stack(list(logits.values())).mean(0)
        return logits

    def eval_names(self) -> list[str]:
        return [f"net{i}" for i in range(len(self.nets))] + ["ensemble"]
