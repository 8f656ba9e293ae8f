"""Compute choices of a training step, in one place for the trainer, `bench speed` and the sweep's up-front
validation: the device, autocast (AMP), the SGD implementation, the step itself, and CUDA graphs of it."""

from __future__ import annotations

import contextlib
import functools
import platform

import torch
from torch import Tensor

from bench.config import OptimConfig
from bench.errors import UsageError, unknown
from methods.base import Progress


def choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """`value` if it is one of `choices`; else the one-line error naming setting `name` and a close match."""
    if value not in choices:
        raise unknown(name, value, choices)
    return value


def parse_device(name: str, kind: str = "device") -> torch.device | None:
    """The torch device `name` spells (None for auto), or one clear error naming `kind`."""
    if name == "auto":
        return None
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown {kind} '{name}' (valid: auto, cpu, cuda, cuda:N, mps)") from None


def resolve_device(name: str) -> torch.device:
    device = parse_device(name)
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device '{name}' requested but CUDA is not available here (use --device cpu)")
    return device


AMP_CHOICES = ("auto", "bf16", "off")
OPTIMIZER_IMPLS = ("auto", "fused", "foreach", "loop")


def amp_name(dtype: torch.dtype | None) -> str:
    """How a resolved autocast dtype is reported: 'bfloat16', or 'off'."""
    return str(dtype).replace("torch.", "") if dtype else "off"


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    choice("compute.amp", amp, AMP_CHOICES)
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast to `dtype` on `device`, or a no-op context when `dtype` is None (AMP off)."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def optimizer_impl(impl: str, device: torch.device) -> str:
    """The SGD implementation `compute.optimizer_impl` resolves to: auto is fused on CUDA, foreach elsewhere."""
    choice("compute.optimizer_impl", impl, OPTIMIZER_IMPLS)
    return ("fused" if device.type == "cuda" else "foreach") if impl == "auto" else impl


def build_optimizer(params: list, optim: OptimConfig, impl: str) -> torch.optim.SGD:
    """SGD with the config's momentum, Nesterov and weight decay; `impl` from `optimizer_impl`. `params`: parameters,
    or parameter groups (dicts, as a method's `param_groups()` gives them)."""
    flags = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}[impl]
    return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum,
                           nesterov=optim.nesterov and optim.momentum > 0, weight_decay=optim.weight_decay,
                           **flags)


def optimisation_step(module: torch.nn.Module, optimizer: torch.optim.Optimizer, autocast, views: list[Tensor],
                      target: Tensor, progress: Progress) -> tuple[dict[str, Tensor], Tensor]:
    """One step: the method's loss terms (under `autocast()`), their sum, backward, optimizer step. No host
    synchronisation. Returns the terms and their sum."""
    with autocast():
        terms = module(views, target, progress)
    total = sum(terms.values())
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    chosen = unwrap(module).groups_to_step() if hasattr(unwrap(module), "groups_to_step") else None
    if chosen is None:
        optimizer.step()
    else:  # only the chosen groups: the others' weights, momentum and weight decay stay untouched
        every = optimizer.param_groups
        optimizer.param_groups = [group for group, on in zip(every, chosen) if on]
        try:
            if optimizer.param_groups:
                optimizer.step()
        finally:
            optimizer.param_groups = every
    return terms, total


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The method inside DistributedDataParallel or torch.compile wrappers."""
    while True:
        inner = getattr(module, "module", None) or getattr(module, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return module
        module = inner


CUDA_GRAPHS = ("auto", "on", "off")
CUDNN_BENCHMARK = ("auto", "on", "off")
BRANCH_STREAMS = ("off", "on")


def set_cudnn_benchmark(setting: str, device: torch.device) -> bool:
    """`compute.cudnn_benchmark`: let cuDNN time its convolution algorithms per input shape and keep the fastest
    (auto: on for CUDA). The chosen algorithms may differ between processes, so bit-exact resume on CUDA wants
    `off` together with deterministic kernels."""
    enabled = choice("compute.cudnn_benchmark", setting, CUDNN_BENCHMARK) == "on" or (
        setting == "auto" and device.type == "cuda")
    torch.backends.cudnn.benchmark = enabled
    return enabled


def use_cuda_graphs(setting: str, device: torch.device, world: int = 1, compiled: bool = False) -> bool:
    """`compute.cuda_graphs`: auto is on for a single-process CUDA run that is not torch.compile'd."""
    choice("compute.cuda_graphs", setting, CUDA_GRAPHS)
    if setting == "on" and device.type != "cuda":
        raise UsageError("compute.cuda_graphs=on needs a CUDA device")
    return setting == "on" or (setting == "auto" and device.type == "cuda" and world == 1 and not compiled)


def branch_streams_asked(setting: str, compiled: bool = False) -> bool:
    """Whether `compute.branch_streams` is on: a known choice, and not together with compute.compile (checked
    without a device, for the sweep's up-front validation)."""
    if choice("compute.branch_streams", setting, BRANCH_STREAMS) == "off":
        return False
    if compiled:
        raise UsageError("compute.branch_streams=on cannot be combined with compute.compile=true")
    return True


def use_branch_streams(setting: str, device: torch.device, compiled: bool = False) -> bool:
    """`compute.branch_streams`: on runs a method's independent branches (PCL's peers and mean teacher, DML's
    networks, the branches of CL, ONE and OKDDip) on concurrent CUDA streams (`methods.batching.concurrently`): the
    same kernels, overlapped. Off by default until measured on a GPU (`bench speed --branch-streams on`)."""
    if not branch_streams_asked(setting, compiled):
        return False
    if device.type != "cuda":
        raise UsageError("compute.branch_streams=on needs a CUDA device (streams are a CUDA feature)")
    return True


def make_step(module: torch.nn.Module, optimizer: torch.optim.Optimizer, autocast, device: torch.device,
              cuda_graphs: bool, branch_streams: bool = False):
    """The training step `(views, target, progress) -> (terms, total)`: a GraphedStep, or the eager step; with
    `branch_streams`, run inside `methods.batching.branch_streams(True)`."""
    step = (GraphedStep(module, optimizer, autocast, device) if cuda_graphs
            else functools.partial(optimisation_step, module, optimizer, autocast))
    return StreamedStep(step) if branch_streams else step


class StreamedStep:
    """A training step whose method runs its independent branches on concurrent CUDA streams."""

    def __init__(self, step) -> None:
        self.step = step

    @property
    def failed(self) -> str | None:  # a GraphedStep's capture failure, reported in summary.json
        return getattr(self.step, "failed", None)

    def __call__(self, views: list[Tensor], target: Tensor, progress: Progress) -> tuple[dict[str, Tensor], Tensor]:
        from methods.batching import branch_streams

        with branch_streams(True):
            return self.step(views, target, progress)


class GraphedStep:
    """`optimisation_step` as CUDA graphs: forward, backward and the optimizer step of one batch captured once and
    replayed for every batch of that shape, which removes the per-kernel launch cost that dominates small
    networks (a CIFAR ResNet runs hundreds of tiny kernels per step).

    Nothing a step depends on is frozen at capture: the batch is copied into static inputs and the ramp-up weight
    w(e) is a device tensor filled before each replay (`Progress.weight`). A new batch shape (an epoch's last,
    smaller batch) or learning rate first runs `warmup` eager steps (real steps, on a side stream as CUDA
    graphs require) and is then captured; graphs are kept per shape and dropped when the learning rate changes.
    `after_step` (e.g. PCL's mean teacher) stays eager. Capture failing (a method doing something graphs
    cannot hold) falls back to eager steps for the rest of the run, with one warning."""

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, autocast, device: torch.device,
                 warmup: int = 2) -> None:
        self.module, self.optimizer, self.autocast = module, optimizer, autocast
        self.device, self.warmup = device, warmup
        self.weight = torch.zeros((), device=device)
        self.graphs: dict[tuple, tuple] = {}  # shape key -> (graph, static views, static target, terms, total)
        self.eager_steps: dict[tuple, int] = {}
        self.lr: tuple = ()
        self.failed: str | None = None

    def __call__(self, views: list[Tensor], target: Tensor, progress: Progress) -> tuple[dict[str, Tensor], Tensor]:
        self.weight.fill_(progress.rampup)
        graphed = Progress(progress.epoch, progress.step, progress.rampup_epochs, weight=self.weight,
                           batch=progress.batch)
        if self.failed:
            return optimisation_step(self.module, self.optimizer, self.autocast, views, target, graphed)
        lr = tuple(group["lr"] for group in self.optimizer.param_groups)
        if lr != self.lr:  # the learning rate is baked into a captured optimizer step
            self.lr, self.graphs, self.eager_steps = lr, {}, {}
        key = (tuple((tuple(v.shape), v.stride()) for v in views), tuple(target.shape))
        if key not in self.graphs:
            done = self.eager_steps.get(key, 0)
            if done < self.warmup:
                self.eager_steps[key] = done + 1
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    out = optimisation_step(self.module, self.optimizer, self.autocast, views, target, graphed)
                torch.cuda.current_stream(self.device).wait_stream(side)
                return out
            try:
                self.graphs[key] = self._capture(views, target, graphed)
            except Exception as err:  # noqa: BLE001  (any capture failure: run eagerly from here on)
                import warnings

                self.failed = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                warnings.warn(f"CUDA graph capture failed ({self.failed}); training eagerly", stacklevel=2)
                torch.cuda.synchronize(self.device)
                return optimisation_step(self.module, self.optimizer, self.autocast, views, target, graphed)
        graph, static_views, static_target, terms, total = self.graphs[key]
        for dst, src in zip(static_views, views):
            dst.copy_(src)
        static_target.copy_(target)
        graph.replay()
        return terms, total

    def _capture(self, views: list[Tensor], target: Tensor, progress: Progress) -> tuple:
        static_views = [v.clone() for v in views]  # clone keeps the memory format (channels_last stays so)
        static_target = target.clone()
        self.optimizer.zero_grad(set_to_none=True)  # gradients are then allocated inside the graph's memory
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            with self.autocast():
                terms = self.module(static_views, static_target, progress)
            total = sum(terms.values())
            total.backward()
            self.optimizer.step()
        return graph, static_views, static_target, terms, total


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()
