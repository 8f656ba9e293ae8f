"""PCL, Peer Collaborative Learning (Wu & Gong, AAAI 2021).

Shared trunk + m peers; peer i sees its own augmentation x_i of each image (multiple input
augmentation, Sec. 3.1): z_i, h_i = peer_i(trunk(x_i)).
- Peer ensemble teacher (Sec. 3.2): z_e = Linear(m*d -> C)(concat(h_1..h_m)), trained with CE.
- Peer mean teacher (Sec. 3.3): a temporal mean of trunk + peers, theta' <- a theta' + (1 - a) theta with
  a = min(1 - 1/(step + 1), 0.999) (Tarvainen & Valpola, 2017; `step` counted from 1 after the first
  update); it runs in train mode without gradients, so its BN statistics come from its own passes.
  Its peer l sees x_l, giving z~_l.
Loss (Eq. 7):
    CE(z_e, y) + sum_i [ CE(z_i, y) + w(e) KD_T(z_e -> z_i) + w(e)/(m-1) sum_{l != i} KD_T(z~_l -> z_i) ]
with T = 3 and both teachers detached. Deployed model: the mean teacher of peer 0.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import UsageError
from methods.base import BackboneFactory, OnlineKDMethod, Progress, register_method
from methods.losses import kd_loss
from methods.multibranch import BranchOptions, SharedTrunk


@dataclass
class PCLOptions(BranchOptions):
    num_peers: int = 3
    temperature: float = 3.0
    ema_decay: float = 0.999  # the cap of the mean teacher's decay alpha


@register_method("pcl")
class PCL(OnlineKDMethod):
    Options = PCLOptions
    headline = "mean_teacher0"

    def __init__(self, backbone: BackboneFactory, num_classes: int, opts: PCLOptions) -> None:
        super().__init__(backbone, num_classes, opts)
        if opts.num_peers < 2:
            raise UsageError(f"pcl needs num_peers >= 2, got {opts.num_peers}")
        self.views = opts.num_peers
        self.net = SharedTrunk(backbone, opts.num_peers, opts)
        self.ensemble_head = nn.Linear(opts.num_peers * self.net.feature_dim, num_classes)
        self.mean_teacher = copy.deepcopy(self.net)
        for p in self.mean_teacher.parameters():
            p.requires_grad_(False)

    def losses(self, views: list[Tensor], target: Tensor, progress: Progress) -> dict[str, Tensor]:
        m, t, w = self.opts.num_peers, self.opts.temperature, progress.rampup
        if len(views) != m:
            raise ValueError(f"pcl expects {m} views per batch, got {len(views)}")
        peers = [self.net.branches[i](self.net.trunk(x)) for i, x in enumerate(views)]
        logits = [z for z, _ in peers]
        ensemble = self.ensemble_head(torch.cat([h for _, h in peers], dim=1))
        with torch.no_grad():
            mean_logits = [self.mean_teacher.branches[i](self.mean_teacher.trunk(x))[0] for i, x in enumerate(views)]
        teacher = ensemble.detach()
        return {
            "ce_ensemble": F.cross_entropy(ensemble, target),
            "ce": sum(F.cross_entropy(z, target) for z in logits),
            "kd_ensemble": w * sum(kd_loss(z, teacher, t) for z in logits),
            "kd_mean_teacher": (w / (m - 1)) * sum(
                kd_loss(z_i, z_t, t) for i, z_i in enumerate(logits) for j, z_t in enumerate(mean_logits) if j != i),
        }

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        alpha = min(1.0 - 1.0 / (step + 1), self.opts.ema_decay)
        teacher = list(self.mean_teacher.parameters())
        student = list(self.net.parameters())
        torch._foreach_lerp_(teacher, student, 1.0 - alpha)

    def eval_logits(self, x: Tensor) -> dict[str, Tensor]:
        shared = self.net.trunk(x)
        peers = self.net.run_branches(shared)
        out = {f"peer{i}": z for i, (z, _) in enumerate(peers)}
        out["ensemble"] = self.ensemble_head(torch.cat([h for _, h in peers], dim=1))
        teacher_shared = self.mean_teacher.trunk(x)
        for i, (z, _) in enumerate(self.mean_teacher.run_branches(teacher_shared)):
            out[f"mean_teacher{i}"] = z
        return out

    def eval_names(self) -> list[str]:
        m = self.opts.num_peers
        return [f"mean_teacher{i}" for i in range(m)] + [f"peer{i}" for i in range(m)] + ["ensemble"]
