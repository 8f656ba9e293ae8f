"""MCL, Mutual Contrastive Learning (Yang et al., AAAI 2022; official winycg/MCL @ 236da2f).

m networks (default 2, independent; `shared_trunk=on` is the official x4 variant, conv1 + stage 1 shared) each with
a training-only embedding head e = L2norm(Linear(128) ReLU Linear(d -> 128) (h)) on its pooled feature h
(losses/cifar_sup_mcl_loss.py L89-103). With S^{ab} = e_a e_b^T / tau (tau = 0.1) and, for an anchor i,
P_i = {p != i : y_p = y_i},
    l(S) = -(1/B) sum_i mean_{p in P_i} [S_ip - log sum_{k != i} exp S_ik]        (L37-64)
(the same image, the diagonal, is left out of the positives and the denominator, also between two networks).
The loss (main_cifar.py L155-175, weights of scripts/train_cifar_mcl.sh) is
    sum_a CE(z_a, y) + 0.1 VCL + 1 SoftVCL + 0.1 ICL + 1 SoftICL
    VCL = sum_a l(S^{aa}),  ICL = sum_{a<b} [l(S^{ab}) + l(S^{ba})],
    SoftVCL = sum_{a != b} KD_3(S^{bb} -> S^{aa}),
    SoftICL = sum_{a<b} [KD_3(S^{ba} -> S^{ab}) + KD_3(S^{ab} -> S^{ba})]
with KD_T row-wise over the similarity rows, the teacher rows detached. An anchor without a positive in the batch is
left out of the mean (the official code divides by zero there; its class-balanced batches, `data.sampler=
class_balanced`, always hold one). Deployed: network 0, without its embedding head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.branching import head_outputs, split_points
from bench.errors import UsageError
from bench.ranges import MAX_MEMBERS, option
from methods.base import BackboneFactory, OnlineKDMethod, Progress, register_method
from methods.losses import kd_loss
from methods.multibranch import BranchOptions, SharedTrunk, indexed


@dataclass
class MCLOptions:
    num_networks: int = option(2, ge=2, le=MAX_MEMBERS)
    shared_trunk: bool = False  # the official x4 variant: the networks share the stem and first stage
    branch_point: str = ""  # with shared_trunk: the stage the networks split at ("": the second stage)
    tau: float = option(0.1, gt=0)
    temperature: float = option(3.0, gt=0)  # of the soft (KD) terms on similarity rows
    embedding_dim: int = option(128, ge=1, le=65536)
    vcl_weight: float = option(0.1, ge=0)
    soft_vcl_weight: float = option(1.0, ge=0)
    icl_weight: float = option(0.1, ge=0)
    soft_icl_weight: float = option(1.0, ge=0)


def contrastive_loss(similarity: Tensor, target: Tensor) -> Tensor:
    """l(S): for each anchor i, minus the mean over its positives p (same label, p != i) of S_ip - log sum_{k != i}
    exp S_ik; averaged over the anchors that have a positive (0 when none has)."""
    b = similarity.shape[0]
    eye = torch.eye(b, dtype=torch.bool, device=similarity.device)
    s = similarity.float()
    log_prob = s - torch.logsumexp(s.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    positive = (target[:, None] == target[None, :]) & ~eye
    count = positive.sum(1)
    mean_positive = log_prob.masked_fill(~positive, 0.0).sum(1) / count.clamp(min=1)
    has = (count > 0).float()
    return -(mean_positive * has).sum() / has.sum().clamp(min=1.0)


class EmbeddingHead(nn.Module):
    """Linear(d, k) - ReLU - Linear(k, k), L2-normalised: training only, never part of the deployed network."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(inplace=True), nn.Linear(out_dim, out_dim))

    def forward(self, h: Tensor) -> Tensor:
        return F.normalize(self.proj(h.flatten(1).float()), dim=1)


@register_method("mcl")
class MCL(OnlineKDMethod):
    uses_rampup = False  # no KD ramp-up in its losses
    display_name = "MCL"
    Options = MCLOptions
    headline = "net0"

    def __init__(self, backbone: BackboneFactory, num_classes: int, opts: MCLOptions) -> None:
        super().__init__(backbone, num_classes, opts)
        m = opts.num_networks
        if m < 2:
            raise UsageError(f"mcl needs num_networks >= 2, got {m}")
        if opts.tau <= 0 or opts.temperature <= 0 or opts.embedding_dim < 1:
            raise UsageError("mcl needs tau > 0, temperature > 0 and embedding_dim >= 1")
        if opts.shared_trunk:
            point = opts.branch_point or (split_points(backbone())[1:2] or [""])[0]
            self.body = SharedTrunk(backbone, m, BranchOptions(branch_point=point))
            dim = self.body.feature_dim
        else:
            if opts.branch_point:
                raise UsageError("mcl.branch_point applies with shared_trunk=on only")
            self.nets = nn.ModuleList(backbone() for _ in range(m))
            dim = self.nets[0].num_features
        self.embed = nn.ModuleList(EmbeddingHead(dim, opts.embedding_dim) for _ in range(m))

    @classmethod
    def check_settings(cls, opts: MCLOptions, cfg) -> None:
        data = cfg.data
        if getattr(data, "sampler", "random") == "class_balanced" and data.per_class < 2:
            raise UsageError(f"mcl needs at least 2 images of a class in a batch (its positives); data.per_class="
                             f"{data.per_class} gives none: set data.per_class=2 (the official batches)")
        if data.batch_size < 2:
            raise UsageError(f"mcl needs batches of at least 2 images (its positives), got data.batch_size="
                             f"{data.batch_size}")

    def forward_all(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """(logits, pooled feature) of every network on `x`."""
        if self.opts.shared_trunk:
            return self.body.run_branches(self.body.trunk(x))
        return [head_outputs(net, net.forward_features(x)) for net in self.nets]

    def losses(self, views: list[Tensor], target: Tensor, progress: Progress) -> dict[str, Tensor]:
        o = self.opts
        outputs = self.forward_all(views[0])
        e = [head(h) for head, (_, h) in zip(self.embed, outputs)]
        m = len(e)
        ce = sum(F.cross_entropy(z, target) for z, _ in outputs)
        sim = {(a, b): e[a] @ e[b].t() / o.tau for a in range(m) for b in range(m)}
        vcl = sum(contrastive_loss(sim[a, a], target) for a in range(m))
        icl = sum(contrastive_loss(sim[a, b], target) + contrastive_loss(sim[b, a], target)
                  for a in range(m) for b in range(a + 1, m))
        t = o.temperature
        soft_vcl = sum(kd_loss(sim[a, a], sim[b, b].detach(), t) for a in range(m) for b in range(m) if a != b)
        soft_icl = sum(kd_loss(sim[a, b], sim[b, a].detach(), t) + kd_loss(sim[b, a], sim[a, b].detach(), t)
                       for a in range(m) for b in range(a + 1, m))
        return {"ce": ce, "vcl": o.vcl_weight * vcl, "soft_vcl": o.soft_vcl_weight * soft_vcl,
                "icl": o.icl_weight * icl, "soft_icl": o.soft_icl_weight * soft_icl}

    def eval_logits(self, x: Tensor) -> dict[str, Tensor]:
        logits = {f"net{i}": z for i, (z, _) in enumerate(self.forward_all(x))}
        logits["ensemble"] = torch.stack(list(logits.values())).mean(0)
        return logits

    def eval_names(self) -> list[str]:
        return [f"net{i}" for i in range(self.opts.num_networks)] + ["ensemble"]

    def members(self) -> list[str]:
        return [f"net{i}" for i in range(self.opts.num_networks)]

    def network_state_dict(self, name: str) -> dict[str, Tensor] | None:
        """Network i as the plain backbone (its embedding head left out); None for the ensemble."""
        i = indexed(name, "net", self.opts.num_networks)
        if i is None:
            return None
        return self.body.network_state_dict(i) if self.opts.shared_trunk else self.nets[i].state_dict()
