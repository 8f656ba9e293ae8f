"""Methods that train m independent full networks side by side (DML, KDCL): the networks, their eval
models `net0..net{m-1}` and the mean-logit `ensemble`; network 0 is the deployed model. With `--backbones
STUDENT+PARTNER`, network 0 is the student and network i + 1 is built from partner i (methods.md, "DML and KDCL
between networks of different architectures"); every loss is unchanged."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor, nn

from bench.errors import UsageError
from methods.base import BackboneFactory, OnlineKDMethod
from methods.batching import concurrently
from methods.multibranch import indexed


class IndependentNetworks(OnlineKDMethod):
    """Base: `opts.num_networks` (>= 2) networks, each independently initialised."""

    headline = "net0"
    partner_range = (0, 15)  # network i + 1 from partner i of `--backbones STUDENT+PARTNER+...`

    def __init__(self, backbone: BackboneFactory, num_classes: int, opts) -> None:
        super().__init__(backbone, num_classes, opts)
        if opts.num_networks < 2:
            raise UsageError(f"{self.name} needs num_networks >= 2, got {opts.num_networks}")
        network = getattr(backbone, "network", lambda i: backbone)  # a plain factory: every network the same
        self.nets = nn.ModuleList(network(i)() for i in range(opts.num_networks))
        names = getattr(backbone, "names", None) or []
        self.exportable = [i == 0 or not names or names[min(i, len(names) - 1)] == names[0]
                           for i in range(opts.num_networks)]  # network i exports as the student's backbone
        scales = getattr(opts, "lr_scales", None) or []
        if scales and (len(scales) != opts.num_networks or not all(math.isfinite(x) and x > 0 for x in scales)):
            raise UsageError(f"{self.name}.lr_scales takes one positive multiplier per network ({opts.num_networks}, "
                             f"network 0 the student first), got {scales}")

    def network_groups(self) -> list[dict]:
        """One optimizer group per network, with its `lr_scales` multiplier (1 where none is given)."""
        scales = getattr(self.opts, "lr_scales", None) or [1.0] * len(self.nets)
        return [{"params": [p for p in net.parameters() if p.requires_grad], "lr_scale": float(scale)}
                for net, scale in zip(self.nets, scales)]

    def param_groups(self) -> list[dict]:
        """Per-network groups when `lr_scales` asks for per-network learning rates, else the one default group (as
        run folders made before hold it)."""
        return self.network_groups() if getattr(self.opts, "lr_scales", None) else super().param_groups()

    def run_networks(self, inputs: list[Tensor]) -> list[Tensor]:
        """Network i on inputs[i] (concurrently on CUDA streams with `compute.branch_streams=on`)."""
        return concurrently([partial(net, x) for net, x in zip(self.nets, inputs)], inputs=inputs)

    def eval_logits(self, x: Tensor) -> dict[str, Tensor]:
        logits = {f"net{i}": z for i, z in enumerate(self.run_networks([x] * len(self.nets)))}
        logits["ensemble"] = torch.stack(list(logits.values())).mean(0)
        return logits

    def members(self) -> list[str]:
        return [f"net{i}" for i in range(len(self.nets))]

    def eval_names(self) -> list[str]:
        return [f"net{i}" for i in range(len(self.nets))] + ["ensemble"]

    def network_state_dict(self, name: str) -> dict[str, Tensor] | None:
        """Network i as the plain student backbone; None for a partner of another architecture (it is not the
        deployed network's kind) and for the ensemble."""
        i = indexed(name, "net", len(self.nets))
        return None if i is None or not self.exportable[i] else self.nets[i].state_dict()
