"""Vanilla baseline: one network trained with cross-entropy."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from methods.base import BackboneFactory, NoOptions, OnlineKDMethod, Progress, register_method


@register_method("vanilla")
class Vanilla(OnlineKDMethod):
    uses_rampup = False  # no KD ramp-up in its losses
    display_name = "Vanilla"
    Options = NoOptions
    headline = "net"

    def __init__(self, backbone: BackboneFactory, num_classes: int, opts: NoOptions) -> None:
        super().__init__(backbone, num_classes, opts)
        self.net = backbone()

    def losses(self, views: list[Tensor], target: Tensor, progress: Progress) -> dict[str, Tensor]:
        return {"ce": F.cross_entropy(self.net(views[0]), target)}

    def eval_logits(self, x: Tensor) -> dict[str, Tensor]:
        return {"net": self.net(x)}

    def eval_names(self) -> list[str]:
        return ["net"]

    def network_state_dict(self, name: str) -> dict[str, Tensor] | None:
        return self.net.state_dict() if name == "net" else None
