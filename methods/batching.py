"""Running several views through one module in a single call while keeping BatchNorm statistics per
view, as if each view had been its own call (the reference computation): bigger, fewer kernels, same math."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _grouped_bn_forward(bn: nn.modules.batchnorm._BatchNorm, groups: int):
    def forward(x: Tensor) -> Tensor:
        if not bn.training or groups == 1:
            return nn.modules.batchnorm._BatchNorm.forward(bn, x)
        momentum = 0.0 if bn.momentum is None else bn.momentum
        outs = []
        for chunk in x.chunk(groups):  # one batch-norm call per view, running stats updated in view order
            if bn.num_batches_tracked is not None:
                bn.num_batches_tracked.add_(1)
            factor = (1.0 / float(bn.num_batches_tracked)) if bn.momentum is None else momentum
            outs.append(F.batch_norm(chunk, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, factor,
                                     bn.eps))
        return torch.cat(outs)  # keeps the inputs' memory format

    return forward


@contextlib.contextmanager
def per_group_batchnorm(module: nn.Module, groups: int) -> Iterator[None]:
    """Within the context, every BatchNorm of `module` normalises each of `groups` equal batch chunks
    separately (and updates its running statistics once per chunk, in order)."""
    patched = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in patched:
        bn.forward = _grouped_bn_forward(bn, groups)
    try:
        yield
    finally:
        for bn in patched:
            bn.__dict__.pop("forward", None)  # (torch.compile may have dropped the instance attribute already)
