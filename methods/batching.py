"""Running a step's work in fewer, bigger or overlapping kernels with the same math: several views through one
module in a single call with BatchNorm statistics per view (as if each view had been its own call, the reference
computation), and independent branches on concurrent CUDA streams."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

T = TypeVar("T")


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


# ---------------------------------------------------------------------------------------------
# independent branches on concurrent CUDA streams

_STREAMS_ON: contextvars.ContextVar[bool] = contextvars.ContextVar("okd_bench_branch_streams", default=False)
_POOL: dict[tuple[int, int], torch.cuda.Stream] = {}


@contextlib.contextmanager
def branch_streams(enabled: bool) -> Iterator[None]:
    """Within the context, `concurrently` puts each call on its own CUDA stream (`compute.branch_streams`, set by
    the trainer around its training steps)."""
    token = _STREAMS_ON.set(enabled)
    try:
        yield
    finally:
        _STREAMS_ON.reset(token)


def _side_stream(parent: torch.cuda.Stream, index: int) -> torch.cuda.Stream:
    """The `index`-th side stream forked from `parent`: the same ones every step (CUDA graphs replay them), and
    nested calls from different parents (PCL's peers and mean teacher) on different streams."""
    key = (parent.cuda_stream, index)
    if key not in _POOL:
        _POOL[key] = torch.cuda.Stream(parent.device)
    return _POOL[key]


def _tensors(tree: Any) -> list[Tensor]:
    """The CUDA tensors in a tensor, or a (nested) list, tuple or dict of them."""
    if isinstance(tree, Tensor):
        return [tree] if tree.is_cuda else []
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, (list, tuple)):
        return [t for item in tree for t in _tensors(item)]
    return []


def concurrently(calls: Sequence[Callable[[], T]], inputs: Any = None) -> list[T]:
    """`[call() for call in calls]`, the same kernels in the same order per call; inside `branch_streams(True)` on
    CUDA each call runs on its own side stream, forked from and joined back to the current stream, so that
    independent branches (PCL's peers and its mean teacher, DML's networks, ONE's branches) overlap on the GPU
    instead of queueing one small kernel after another. Autograd runs each backward op on its forward op's
    stream, so the backward passes overlap too; a CUDA graph captures the fork and join as graph edges.
    `inputs`: tensors the calls read that were made on the current stream (kept alive for the side streams)."""
    if not _STREAMS_ON.get() or len(calls) < 2 or not torch.cuda.is_available():
        return [call() for call in calls]
    main = torch.cuda.current_stream()
    sides = [_side_stream(main, index) for index in range(len(calls))]
    shared, outs = _tensors(inputs), []
    for side, call in zip(sides, calls):
        side.wait_stream(main)
        for t in shared:
            t.record_stream(side)  # the caching allocator must not hand their memory out while `side` reads
        with torch.cuda.stream(side):
            out = call()
        for t in _tensors(out):
            t.record_stream(main)  # made on `side`, read on the current stream from here on
        outs.append(out)
    for side in sides:
        main.wait_stream(side)
    return outs
