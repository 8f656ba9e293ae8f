"""The method interface: an online-KD method is an nn.Module that turns a batch into a dict of named,
already-weighted loss terms (the trainer sums them), and exposes its eval models by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from bench.config import from_dict
from bench.registry import Registry
from methods.losses import sigmoid_rampup

BackboneFactory = Callable[[], nn.Module]
"""Builds a freshly initialised backbone (timm model with the dataset's number of classes)."""


@dataclass(frozen=True)
class Progress:
    """Where training is: `epoch` counts fractional epochs done, `step` optimizer steps done."""

    epoch: float
    step: int
    rampup_epochs: float = 80.0
    weight: Any = None  # w(e) as a device tensor (filled by the trainer) for steps replayed as CUDA graphs
    batch: int = 0  # the batch's index within its epoch (0 first), e.g. OKDPH's fusion every g batches; a Python
    # int, so read it only in a method with graphable = False (a CUDA graph would keep the value it was captured with)

    @property
    def rampup(self) -> Any:
        """The ramp-up weight w(e) of the common protocol: a float, or a 0-dim tensor holding it when the step
        is a CUDA graph (use it in arithmetic only, never in Python control flow)."""
        return sigmoid_rampup(self.epoch, self.rampup_epochs) if self.weight is None else self.weight


@dataclass
class NoOptions:
    pass


class OnlineKDMethod(nn.Module):
    """Base class. Subclasses set `Options` (a dataclass, defaults from methods.md), `headline`
    (the eval model the paper reports) and `views` (augmented views per image), and implement
    `losses` and `eval_logits`."""

    name: ClassVar[str] = ""
    display_name: ClassVar[str] = ""  # the table row's name (default: the registered name)
    Options: ClassVar[type] = NoOptions
    headline: str = ""
    views: int = 1
    graphable: ClassVar[bool] = True  # False: its step decides on the host (e.g. which groups step): no CUDA graphs
    partner_range: ClassVar[tuple[int, int]] = (0, 0)  # how many partner networks (`--backbones A+B`) it takes
    uses_rampup: ClassVar[bool] = True  # whether its losses read `progress.rampup` (the KD ramp-up w(e)); False: the
    # sweep's schedule line leaves the ramp-up out
    partner_role: ClassVar[str] = "with"  # its row label's word for them: "DML (with ResNet-110)", "KD (T: ...)"

    def __init__(self, backbone: BackboneFactory, num_classes: int, opts: Any) -> None:
        super().__init__()
        self.opts = opts
        self.num_classes = num_classes

    @classmethod
    def check_inputs(cls, opts: Any, backbone: BackboneFactory) -> None:
        """Check what the options name outside the run (e.g. KD's teacher file) before any run starts; a problem is a
        UsageError. Not called when a finished run is rebuilt for export."""

    @classmethod
    def check_settings(cls, opts: Any, cfg: Any) -> None:
        """Check the run's settings the method depends on (`cfg`: the RunConfig, e.g. its `data.sampler`) before any
        run starts; a problem is a UsageError (MCL refuses batches that cannot hold a positive)."""

    def view_augment(self) -> list[str] | None:
        """The augmentation recipe of each of its views (bench.data.recipes: `crop+flip+rotate`, ...), e.g. OKDPH's
        official per-network set; None: the run's `data.view_augment` (default crop + flip for every view)."""
        return None

    @classmethod
    def partner_note(cls, options: dict[str, Any]) -> str:
        """Words the row label adds after the partner's name (KD: "best epoch" when its teacher is taken there)."""
        return ""

    @classmethod
    def needs_partner_runs(cls, options: dict[str, Any]) -> bool:
        """Whether each partner is first trained alone (the sweep's vanilla run of its backbone), and this run starts
        only once those are done (KD's teacher). `options`: the run's resolved options."""
        return False

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: dicts with `params` and optionally `lr_scale` (a multiplier of the
        schedule's learning rate, e.g. SwitOKD's student at 0.1x). Default: every trainable parameter, one group."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def groups_to_step(self) -> list[bool] | None:
        """After `losses`, which parameter groups the optimizer steps this batch (None: all). A group left out is
        untouched: no weight decay, no momentum update (SwitOKD's teacher in expert mode). Needs `graphable =
        False`."""
        return None

    def step_stats(self) -> dict[str, Any]:
        """Quantities of the last batch that are not losses, averaged per epoch into metrics.jsonl `stats` (e.g.
        SwitOKD's expert-mode share)."""
        return {}

    def prepare_run(self, folder: Any) -> None:
        """Called once the run's folder is known, before training or resuming (KD loads its teacher's weights from
        the sweep's teacher run here)."""

    def losses(self, views: list[Tensor], target: Tensor, progress: Progress) -> dict[str, Tensor]:
        """Named, already-weighted loss terms for one batch; their sum is what is minimised."""
        raise NotImplementedError

    def eval_logits(self, x: Tensor) -> dict[str, Tensor]:
        """Logits of every eval model on a test batch, in one pass."""
        raise NotImplementedError

    def forward(self, views: list[Tensor], target: Tensor, progress: Progress) -> dict[str, Tensor]:
        """The loss terms: forward() is losses(), so DistributedDataParallel can wrap a method."""
        return self.losses(views, target, progress)

    def after_step(self, step: int) -> None:
        """Called after each optimizer step; `step` = optimizer steps taken so far (1 after the first)."""

    def eval_names(self) -> list[str]:
        """Names of the eval models, the keys of `eval_logits`."""
        raise NotImplementedError

    def members(self) -> list[str]:
        """The eval models that are the method's members (peers, branches, networks), whose diversity the trainer
        measures every epoch (pairwise top-1 disagreement and KL on the test split); [] for a single network."""
        return []

    def network_state_dict(self, name: str) -> dict[str, Tensor] | None:
        """The eval model `name` as the state dict of the plain backbone it was cut from (the backbone's own
        keys, so `timm.create_model(backbone).load_state_dict` takes it), or None when `name` is not one
        network of the backbone's size (an ensemble). Methods that do not implement it cannot be exported."""
        return None


METHODS: Registry[type[OnlineKDMethod]] = Registry("method")


def register_method(name: str) -> Callable[[type[OnlineKDMethod]], type[OnlineKDMethod]]:
    """Class decorator: register an `OnlineKDMethod` subclass under `name` (what --methods and tables use)."""

    def add(cls: type[OnlineKDMethod]) -> type[OnlineKDMethod]:
        check_interface(cls, name)
        cls.name = name
        cls.display_name = cls.__dict__.get("display_name") or name
        return METHODS.register(name)(cls)

    return add


REQUIRED = ("losses", "eval_logits", "eval_names")


def check_interface(cls: Any, name: str) -> None:
    """A registered method is an OnlineKDMethod subclass that implements `losses`, `eval_logits` and
    `eval_names`, with a dataclass `Options`; a TypeError says what is missing. (`headline` and `views` may be set
    per instance, as PCL and KDCL do: they are checked on a built method before any run.)"""
    where = f"method '{name}' ({getattr(cls, '__qualname__', cls)})"
    if not (isinstance(cls, type) and issubclass(cls, OnlineKDMethod)):
        raise TypeError(f"{where} does not meet the interface: it must be a class derived from "
                        "methods.OnlineKDMethod")
    missing = [f"{m}()" for m in REQUIRED if getattr(cls, m) is getattr(OnlineKDMethod, m)]
    if not dataclasses.is_dataclass(cls.Options):
        missing.append("Options (a dataclass of the method's options)")
    if missing:
        raise TypeError(f"{where} does not meet the interface: missing {', '.join(missing)}")


def resolve_options(method: str, overrides: dict[str, Any] | None) -> Any:
    """The method's options dataclass with `overrides` applied (unknown keys are errors)."""
    cls = METHODS.get(method)
    return from_dict(cls.Options, overrides or {}, where=f"options of {method}")


def options_dict(opts: Any) -> dict[str, Any]:
    return dataclasses.asdict(opts)


def build_method(method: str, backbone: BackboneFactory, num_classes: int,
                 overrides: dict[str, Any] | None = None) -> OnlineKDMethod:
    cls = METHODS.get(method)
    return cls(backbone, num_classes, resolve_options(method, overrides))
