"""DML, Deep Mutual Learning (Zhang et al., CVPR 2018).

m independent networks on the same batch, updated simultaneously. Network i minimises
    CE(z_i, y) + 1/(m-1) * sum_{j != i} KD_T(z_j -> z_i)            (paper Eq. 10, m-network form)
with KD_T = T^2 KL(p_j || p_i) and the peers' p_j detached; T = 1 as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from bench.ranges import MAX_MEMBERS, option
from methods.base import Progress, register_method
from methods.independent import IndependentNetworks
from methods.losses import kd_loss


@dataclass
class DMLOptions:
    num_networks: int = option(3, ge=2, le=MAX_MEMBERS)
    temperature: float = option(1.0, gt=0)
    lr_scales: list[float] = option(default_factory=list, gt=0, label="lr x")  # per network, student
    # first ([]: all at the schedule's lr), e.g. [0.1, 1] for a student at a tenth of its partner's lr


@register_method("dml")
class DML(IndependentNetworks):
    uses_rampup = False  # no KD ramp-up in its losses
    display_name = "DML"
    Options = DMLOptions

    def losses(self, views: list[Tensor], target: Tensor, progress: Progress) -> dict[str, Tensor]:
        logits = self.run_networks([views[0]] * len(self.nets))
        m, t = len(logits), self.opts.temperature
        ce = sum(F.cross_entropy(z, target) for z in logits)
        kl = sum(kd_loss(z_i, z_j.detach(), t) for i, z_i in enumerate(logits)
                 for j, z_j in enumerate(logits) if j != i) / (m - 1)
        return {"ce": ce, "kl": kl}
