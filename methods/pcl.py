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

The paper's component study (methods.md, "PCL's ablation") switches one component off at a time:
`multi_view=off` (every peer sees the same view: the trunk runs once), `ensemble_teacher=off` (no z_e, no CE(z_e)
and no KD from it; no PCL-E model), `mean_teacher=off` (no temporal mean and no KD from it; the headline falls back to
peer 0).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import UsageError, unknown
from bench.ranges import MAX_MEMBERS, option
from methods.base import BackboneFactory, OnlineKDMethod, Progress, register_method
from methods.batching import concurrently, per_group_batchnorm
from methods.losses import kd_loss
from methods.multibranch import BranchOptions, SharedTrunk, indexed


@dataclass
class PCLOptions(BranchOptions):
    num_peers: int = option(3, ge=2, le=MAX_MEMBERS)
    temperature: float = option(3.0, gt=0, label="T")
    ema_decay: float = option(0.999, ge=0, le=1)  # the cap of the mean teacher's decay alpha
    batch_views: str = option("auto", choices=("auto", "on", "off"))  # on: the m views through the trunk in one
    # call (BN statistics per view);
    # off: one call per view; auto: on for accelerators (fewer, bigger kernels), off on CPU (no gain there)
    multi_view: bool = field(default=True, metadata={"label": "multi-view"})  # each peer its own augmented view
    ensemble_teacher: bool = field(default=True, metadata={"label": "ensemble teacher"})  # z_e and KD from it
    mean_teacher: bool = field(default=True, metadata={"label": "mean teacher"})  # the temporal mean and KD from it


@register_method("pcl")
class PCL(OnlineKDMethod):
    display_name = "PCL"
    Options = PCLOptions
    headline = "mean_teacher0"

    def __init__(self, backbone: BackboneFactory, num_classes: int, opts: PCLOptions) -> None:
        super().__init__(backbone, num_classes, opts)
        if opts.num_peers < 2:
            raise UsageError(f"pcl needs num_peers >= 2, got {opts.num_peers}")
        if opts.batch_views not in ("auto", "on", "off"):
            raise unknown("pcl batch_views", opts.batch_views, ["auto", "on", "off"])
        self.views = opts.num_peers if opts.multi_view else 1
        self.headline = "mean_teacher0" if opts.mean_teacher else "peer0"
        self.net = SharedTrunk(backbone, opts.num_peers, opts)
        if opts.ensemble_teacher:
            self.ensemble_head = nn.Linear(opts.num_peers * self.net.feature_dim, num_classes)
        if opts.mean_teacher:
            self.mean_teacher = copy.deepcopy(self.net)
            for p in self.mean_teacher.parameters():
                p.requires_grad_(False)

    def losses(self, views: list[Tensor], target: Tensor, progress: Progress) -> dict[str, Tensor]:
        m, t, w, opts = self.opts.num_peers, self.opts.temperature, progress.rampup, self.opts
        if len(views) != self.views:
            raise ValueError(f"pcl expects {self.views} views per batch, got {len(views)}")
        calls = [partial(self.peer_views, self.net, views)]
        if opts.mean_teacher:
            calls.append(partial(self.peer_views, self.mean_teacher, views, False))
        peers, *mean_teacher = concurrently(calls, inputs=views)
        logits = [z for z, _ in peers]
        terms = {"ce": sum(F.cross_entropy(z, target) for z in logits)}
        if opts.ensemble_teacher:
            ensemble = self.ensemble_head(torch.cat([h for _, h in peers], dim=1))
            teacher = ensemble.detach()
            terms["ce_ensemble"] = F.cross_entropy(ensemble, target)
            terms["kd_ensemble"] = w * sum(kd_loss(z, teacher, t) for z in logits)
        if opts.mean_teacher:
            mean_logits = [z for z, _ in mean_teacher[0]]
            terms["kd_mean_teacher"] = (w / (m - 1)) * sum(
                kd_loss(z_i, z_t, t) for i, z_i in enumerate(logits) for j, z_t in enumerate(mean_logits) if j != i)
        return terms

    def peer_views(self, net: SharedTrunk, views: list[Tensor], grad: bool = True) -> list[tuple[Tensor, Tensor]]:
        """peer_i(trunk(x_i)) of `net` (the peers or their mean teacher): [(logits, pooled feature)] per peer (with
        multi_view off, every peer on trunk(x) of the one view)."""
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            shared = self.trunk_views(net, views) if self.opts.multi_view else [net.trunk(views[0])] * len(net.branches)
            return concurrently([partial(branch, x) for branch, x in zip(net.branches, shared)], inputs=shared)

    def trunk_views(self, net: SharedTrunk, views: list[Tensor]) -> list[Tensor]:
        """trunk(x_i) for every view: one batched call with per-view BatchNorm statistics (the same math
        as one call per view), or one call per view."""
        batched = self.opts.batch_views == "on" or (self.opts.batch_views == "auto" and views[0].device.type != "cpu")
        if not batched:
            return [net.trunk(x) for x in views]
        with per_group_batchnorm(net.trunk, len(views)):
            return list(net.trunk(torch.cat(views)).chunk(len(views)))

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        if not self.opts.mean_teacher:
            return
        alpha = min(1.0 - 1.0 / (step + 1), self.opts.ema_decay)
        teacher = list(self.mean_teacher.parameters())
        student = list(self.net.parameters())
        torch._foreach_lerp_(teacher, student, 1.0 - alpha)

    def eval_logits(self, x: Tensor) -> dict[str, Tensor]:
        shared = self.net.trunk(x)
        peers = self.net.run_branches(shared)
        out = {f"peer{i}": z for i, (z, _) in enumerate(peers)}
        if self.opts.ensemble_teacher:
            out["ensemble"] = self.ensemble_head(torch.cat([h for _, h in peers], dim=1))
        if self.opts.mean_teacher:
            teacher_shared = self.mean_teacher.trunk(x)
            for i, (z, _) in enumerate(self.mean_teacher.run_branches(teacher_shared)):
                out[f"mean_teacher{i}"] = z
        return out

    def eval_names(self) -> list[str]:
        m, opts = self.opts.num_peers, self.opts
        return ([f"mean_teacher{i}" for i in range(m)] if opts.mean_teacher else []) + \
            [f"peer{i}" for i in range(m)] + (["ensemble"] if opts.ensemble_teacher else [])

    def members(self) -> list[str]:
        return [f"peer{i}" for i in range(self.opts.num_peers)]

    def network_state_dict(self, name: str) -> dict[str, Tensor] | None:
        m = self.opts.num_peers
        nets = (("mean_teacher", self.mean_teacher),) if self.opts.mean_teacher else ()
        for prefix, net in (*nets, ("peer", self.net)):
            i = indexed(name, prefix, m)
            if i is not None:
                return net.network_state_dict(i)
        return None
