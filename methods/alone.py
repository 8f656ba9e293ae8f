"""Independent networks, the baseline that tells distillation from ensembling: m networks of the backbone trained side
by side on the same batches, each with cross-entropy alone (DML without its KL term, methods.md's DML loss with the KL
weight at 0). Its headline is network 0 (trained exactly as vanilla, on the same batches), and its ensemble is the mean
of the networks' probabilities, so that "PCL-E against m networks trained alone" and "DML against no distillation at
all" are rows of one table (issue 32)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.ranges import MAX_MEMBERS, option
from methods.base import Progress, register_method
from methods.independent import IndependentNetworks


@dataclass
class IndependentOptions:
    num_networks: int = option(3, ge=2, le=MAX_MEMBERS)
    lr_scales: list[float] = option(default_factory=list, gt=0, label="lr x")  # per network, as DML's


@register_method("independent")
class Independent(IndependentNetworks):
    uses_rampup = False  # no distillation at all
    display_name = "Independent"
    Options = IndependentOptions

    def losses(self, views: list[Tensor], target: Tensor, progress: Progress) -> dict[str, Tensor]:
        logits = self.run_networks([views[0]] * len(self.nets))
        return {"ce": sum(F.cross_entropy(z, target) for z in logits)}

    def eval_logits(self, x: Tensor) -> dict[str, Tensor]:
        """Each network's logits, and the ensemble as the log of the mean of their probabilities (a softmax of it
        is that mean)."""
        logits = {f"net{i}": z for i, z in enumerate(self.run_networks([x] * len(self.nets)))}
        probabilities = torch.stack([z.float().softmax(1) for z in logits.values()]).mean(0)
        logits["ensemble"] = probabilities.clamp_min(torch.finfo(torch.float32).tiny).log()
        return logits
