"""An example plug-in: two-peer mutual learning with a logit-matching MSE loss instead of DML's KL.

Each peer minimises CE(z_k, y) + w(e) * alpha * ||z_k - sg(z_j)||^2 / C (j the other peer, sg = stop-gradient,
C the number of classes, w(e) the common protocol's ramp-up). Run it beside the built-in methods without
touching okd-bench:

    bench run --plugin examples/mutual_mse.py --methods dml,mutual_mse --datasets digits mutual_mse.alpha=2
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from methods import OnlineKDMethod, Progress, register_method


@dataclass
class MutualMSEOptions:
    alpha: float = 1.0  # weight of the logit-matching term


@register_method("mutual_mse")
class MutualMSE(OnlineKDMethod):
    display_name = "Mutual-MSE"  # its row in tables and plots
    Options = MutualMSEOptions
    headline = "peer0"  # the eval model tables report (and `bench export` deploys)

    def __init__(self, backbone, num_classes: int, opts: MutualMSEOptions) -> None:
        super().__init__(backbone, num_classes, opts)
        self.peers = nn.ModuleList([backbone(), backbone()])

    def losses(self, views: list[Tensor], target: Tensor, progress: Progress) -> dict[str, Tensor]:
        z0, z1 = (peer(views[0]) for peer in self.peers)
        ce = F.cross_entropy(z0, target) + F.cross_entropy(z1, target)
        mse = F.mse_loss(z0, z1.detach()) + F.mse_loss(z1, z0.detach())
        return {"ce": ce, "mse": self.opts.alpha * progress.rampup * mse}

    def eval_logits(self, x: Tensor) -> dict[str, Tensor]:
        return {f"peer{k}": peer(x) for k, peer in enumerate(self.peers)}

    def eval_names(self) -> list[str]:
        return ["peer0", "peer1"]

    def network_state_dict(self, name: str) -> dict[str, Tensor] | None:
        return self.peers[int(name[-1])].state_dict() if name in self.eval_names() else None
