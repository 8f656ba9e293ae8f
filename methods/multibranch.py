"""A shared trunk with m branches cut from any splittable backbone (CL, ONE, OKDDip, PCL)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial

from torch import Tensor, nn

from backbones.branching import plain_state_dict, split_model
from bench.errors import UsageError, unknown
from bench.ranges import option
from methods.base import BackboneFactory
from methods.batching import concurrently


@dataclass
class BranchOptions:
    """Options every shared-trunk method has."""

    branch_point: str = ""  # the stage the branches start at; "" = the backbone's last stage
    peer_init: str = option("independent", choices=("independent", "copy"))  # copy: every branch starts as branch 0


class SharedTrunk(nn.Module):
    """trunk(x) once, then each of `num_branches` branches: [(logits, pooled feature), ...]."""

    def __init__(self, backbone: BackboneFactory, num_branches: int, opts: BranchOptions) -> None:
        super().__init__()
        if opts.peer_init not in ("independent", "copy"):
            raise unknown("peer_init", opts.peer_init, ["independent", "copy"])
        if num_branches < 1:
            raise UsageError(f"the number of branches must be at least 1, got {num_branches}")
        first = split_model(backbone(), opts.branch_point or None)
        self.trunk = first.trunk
        branches = [first.branch]
        for _ in range(num_branches - 1):
            if opts.peer_init == "copy":
                branches.append(copy.deepcopy(first.branch))
            else:
                branches.append(split_model(backbone(), opts.branch_point or None).branch)
        self.branches = nn.ModuleList(branches)
        self.trunk_channels, self.feature_dim = first.trunk_channels, first.feature_dim
        self.pool = first.pool  # trunk output -> [B, C] (NCHW, NHWC or tokens)

    def run_branches(self, shared: Tensor) -> list[tuple[Tensor, Tensor]]:
        return concurrently([partial(branch, shared) for branch in self.branches], inputs=shared)

    def network_state_dict(self, index: int) -> dict[str, Tensor]:
        """Trunk + branch `index` as the plain backbone's state dict."""
        return plain_state_dict(self.trunk, self.branches[index])


def indexed(name: str, prefix: str, count: int) -> int | None:
    """i for an eval model named `<prefix><i>` with 0 <= i < count, else None."""
    suffix = name.removeprefix(prefix)
    if name.startswith(prefix) and suffix.isdigit() and int(suffix) < count:
        return int(suffix)
    return None
