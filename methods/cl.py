"""CL, Collaborative Learning (Song & Chai, NeurIPS 2018), flat ILR-sharing variant.

A shared trunk with m heads; at the split point the gradient flowing back into the trunk is scaled
by 1/m (backprop rescaling, paper Sec. 3.3), identity forward. Head i minimises
    beta * CE(z_i, y) + (1 - beta) * KD_T( mean_{j != i} z_j -> z_i ),   target detached,
with beta = 0.5 and T = 2 (winycg/MCL-OKD main_cifar_cl_ilr.py).

`cl.sharing=tree` is the paper's hierarchical sharing (Fig. 1c; MCL-OKD's CL): the trunk splits into 2 groups
at `tree_point` (default: the stage before `branch_point`), each group into num_heads/2 heads at
`branch_point`, and the gradient into each shared part is scaled by 1/(its number of children) (1/2 at each
split with 4 heads). The loss is the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.branching import Trunk, plain_state_dict, split_model, split_points
from bench.errors import UsageError, unknown
from bench.ranges import MAX_MEMBERS, option
from methods.base import BackboneFactory, OnlineKDMethod, Progress, register_method
from methods.losses import kd_loss
from methods.multibranch import BranchOptions, SharedTrunk, indexed

SHARING = ("flat", "tree")


class GradScale(torch.autograd.Function):
    """Identity forward; the backward gradient multiplied by `scale`."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad * ctx.scale, None


@dataclass
class CLOptions(BranchOptions):
    num_heads: int = option(3, ge=2, le=MAX_MEMBERS)
    beta: float = option(0.5, ge=0)
    temperature: float = option(2.0, gt=0)
    backprop_rescale: bool = True
    sharing: str = option("flat", choices=("flat", "tree"))  # flat (one trunk, m heads) or tree (hierarchical:
    # 2 groups of m/2 heads)
    tree_point: str = ""  # tree: the stage where the trunk splits into the 2 groups ("": the one before branch_point)


class TreeTrunk(nn.Module):
    """Hierarchical sharing: a root trunk, `groups` middle parts, and `heads_per_group` heads on each middle
    part; x -> [(logits, pooled feature)] in head order (group 0's heads first)."""

    def __init__(self, backbone: BackboneFactory, groups: int, heads_per_group: int, opts: CLOptions) -> None:
        super().__init__()
        splits = [split_model(backbone(), opts.branch_point or None) for _ in range(groups * heads_per_group)]
        names = splits[0].trunk.names
        points = [n for n in split_points(backbone()) if n in names]
        tree_point = opts.tree_point or (points[-1] if points else "")
        if tree_point not in points:
            raise UsageError(f"cl tree_point '{tree_point}' must be a stage of the trunk before the branch point"
                             f" (valid: {', '.join(points) or 'none: the trunk has a single stage'})")
        cut = names.index(tree_point)
        first = splits[0].trunk
        self.root = Trunk(list(zip(names[:cut], first.stages[:cut])), stem=first.stem)
        self.middles = nn.ModuleList(Trunk(list(zip(names[cut:], s.trunk.stages[cut:])))
                                     for s in splits[::heads_per_group])
        self.heads = nn.ModuleList(s.branch for s in splits)
        self.groups, self.heads_per_group = groups, heads_per_group

    def forward(self, x: Tensor, rescale: bool) -> list[tuple[Tensor, Tensor]]:
        shared = self.root(x)
        if rescale:
            shared = GradScale.apply(shared, 1.0 / self.groups)
        out = []
        for g, middle in enumerate(self.middles):
            mid = middle(shared)
            if rescale:
                mid = GradScale.apply(mid, 1.0 / self.heads_per_group)
            out += [head(mid) for head in self.heads[g * self.heads_per_group:(g + 1) * self.heads_per_group]]
        return out

    def network_state_dict(self, index: int) -> dict[str, Tensor]:
        """Root + the head's middle part + head `index` as the plain backbone's state dict."""
        middle = self.middles[index // self.heads_per_group]
        trunk = Trunk(list(zip(self.root.names + middle.names, [*self.root.stages, *middle.stages])),
                      stem=self.root.stem)
        return plain_state_dict(trunk, self.heads[index])


@register_method("cl")
class CL(OnlineKDMethod):
    uses_rampup = False  # no KD ramp-up in its losses
    display_name = "CL"
    Options = CLOptions
    headline = "head0"

    def __init__(self, backbone: BackboneFactory, num_classes: int, opts: CLOptions) -> None:
        super().__init__(backbone, num_classes, opts)
        if opts.num_heads < 2:
            raise UsageError(f"cl needs num_heads >= 2, got {opts.num_heads}")
        if opts.sharing not in SHARING:
            raise unknown("cl sharing", opts.sharing, SHARING)
        if opts.sharing == "tree":
            if opts.num_heads < 4 or opts.num_heads % 2:
                raise UsageError(f"cl sharing=tree splits into 2 groups of heads: num_heads must be even and at "
                                 f"least 4, got {opts.num_heads}")
            self.net = TreeTrunk(backbone, 2, opts.num_heads // 2, opts)
        else:
            self.net = SharedTrunk(backbone, opts.num_heads, opts)

    def head_logits(self, x: Tensor) -> list[Tensor]:
        if isinstance(self.net, TreeTrunk):
            return [z for z, _ in self.net(x, self.opts.backprop_rescale)]
        shared = self.net.trunk(x)
        if self.opts.backprop_rescale:
            shared = GradScale.apply(shared, 1.0 / self.opts.num_heads)
        return [z for z, _ in self.net.run_branches(shared)]

    def losses(self, views: list[Tensor], target: Tensor, progress: Progress) -> dict[str, Tensor]:
        logits = self.head_logits(views[0])
        m, beta = len(logits), self.opts.beta
        total = torch.stack(logits).sum(0)
        ce = sum(F.cross_entropy(z, target) for z in logits)
        kd = sum(kd_loss(z, ((total - z) / (m - 1)).detach(), self.opts.temperature) for z in logits)
        return {"ce": beta * ce, "kd": (1.0 - beta) * kd}

    def eval_logits(self, x: Tensor) -> dict[str, Tensor]:
        logits = {f"head{i}": z for i, z in enumerate(self.head_logits(x))}
        logits["ensemble"] = torch.stack(list(logits.values())).mean(0)
        return logits

    def members(self) -> list[str]:
        return [f"head{i}" for i in range(self.opts.num_heads)]

    def eval_names(self) -> list[str]:
        return [f"head{i}" for i in range(self.opts.num_heads)] + ["ensemble"]

    def network_state_dict(self, name: str) -> dict[str, Tensor] | None:
        i = indexed(name, "head", self.opts.num_heads)
        return None if i is None else self.net.network_state_dict(i)
