"""Backbones: the CIFAR networks of the online-KD literature, registered into timm's registry.

`import backbones` registers `cifar_resnet8/32/110`, `cifar_wrn_20_8`, `cifar_vgg16` and
`cifar_densenet40_12`; after that `timm.create_model(name, num_classes=...)` builds any of them, and any
other timm model name works too. A plug-in adds its own with `@register_backbone` (timm's `register_model`,
refusing a name that is taken).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import timm
from torch import nn

from backbones import cifar_densenet, cifar_resnet, cifar_vgg  # noqa: F401  (registers the models)
from bench.errors import UsageError, unknown
from bench.store.runfiles import backbone_label

CIFAR_BACKBONES = [
    "cifar_resnet8", "cifar_resnet32", "cifar_resnet110", "cifar_wrn_20_8", "cifar_vgg16", "cifar_densenet40_12",
]
PLUGIN_BACKBONES: list[str] = []  # registered by plug-ins, in the order they came


def register_backbone(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator for a plug-in's model function `name(pretrained=False, **kwargs) -> nn.Module` (a timm-style
    model: `forward_features`, `forward_head(pre_logits=...)`, `feature_info` to be split into branches):
    registers it into timm under the function's name, which must not be taken yet."""
    name = fn.__name__
    if timm.is_model(name):
        raise ValueError(f"backbone name '{name}' is already taken (a timm or okd-bench model); register it "
                         "under another name")
    timm.models.register_model(fn)
    PLUGIN_BACKBONES.append(name)
    return fn


def list_backbones() -> list[str]:
    """CIFAR backbones first, then plug-ins' backbones, then every other architecture timm registers."""
    first = CIFAR_BACKBONES + PLUGIN_BACKBONES
    return first + [n for n in timm.list_models() if n not in first]


def check_backbone(name: str) -> None:
    """A registered model, or timm's tagged name of its weights (`resnet18.a1_in1k`): one line with a close match."""
    if not timm.is_model(name):
        raise unknown("backbone", name, CIFAR_BACKBONES + timm.list_models())
    if "." in name:
        try:
            timm.models.get_pretrained_cfg(name)
        except RuntimeError:
            arch = name.split(".", 1)[0]
            raise unknown(f"weights tag of {arch}", name, timm.list_pretrained(f"{arch}.*")) from None


def create_backbone(name: str, num_classes: int, img_size: int | None = None, **kwargs) -> timm.models.nn.Module:
    """A freshly initialised backbone (never pretrained weights: nothing downloads). `img_size` is passed
    to models built for a fixed input size (ViT, Swin, ...) and ignored by the others."""
    return create_backbone_with_kwargs(name, num_classes, img_size, **kwargs)[0]


def backbone_factory(name: str, num_classes: int, img_size: int | None = None, pretrained: dict | None = None,
                     **kwargs: Any) -> Callable[[], nn.Module]:
    """A method's backbone factory: each call builds a freshly initialised `create_backbone(name, ...)`, then loads
    `pretrained`'s weights into it where given (backbones.pretrained: a new classifier where the classes differ);
    `kwargs` (the config's `backbone_options`, e.g. `drop_rate`) go to the model's constructor."""
    build = functools.partial(create_backbone, name, num_classes, img_size, **kwargs)
    if not pretrained:
        return build
    from backbones.pretrained import pretrained_builder

    used = create_backbone_with_kwargs(name, num_classes, img_size, **kwargs)[1]
    return pretrained_builder(build, pretrained, name, used)


class NetworkFactory:
    """The networks of one run, for methods that train networks of different sizes (`--backbones
    STUDENT+PARTNER`): calling it builds the student (network 0: what every method trains when it takes no partner,
    and what is deployed); `network(i)` builds network i, the student for 0 and partner i - 1 after it (partners
    take their own defaults, not the student's `backbone_options`)."""

    def __init__(self, student: Callable[[], nn.Module], partners: list[Callable[[], nn.Module]] = (),
                 names: list[str] | None = None) -> None:
        self.factories = [student, *partners]
        self.names = names or []  # the backbones' names, student first
        self.labels = list(self.names)  # as run folders name them (backbone_label: `@pretrained` where it is)

    def __call__(self) -> nn.Module:
        return self.factories[0]()

    def network(self, i: int) -> Callable[[], nn.Module]:
        return self.factories[i] if i < len(self.factories) else self.factories[0]

    @property
    def partners(self) -> int:
        return len(self.factories) - 1


def network_factory(student: str, partners: list[str], num_classes: int, img_size: int | None = None,
                    pretrained: dict[str, dict] | None = None, **kwargs: Any) -> NetworkFactory:
    """The NetworkFactory of a run: `student` with the config's backbone options, each partner plain; each from its
    own entry of `pretrained` (backbone -> source record) where it has one."""
    pretrained = pretrained or {}
    factory = NetworkFactory(backbone_factory(student, num_classes, img_size, pretrained.get(student), **kwargs),
                             [backbone_factory(p, num_classes, img_size, pretrained.get(p)) for p in partners],
                             [student, *partners])
    factory.labels = [backbone_label(n, pretrained) for n in factory.names]
    return factory


def split_entry(entry: str) -> tuple[str, list[str]]:
    """'cifar_resnet32+cifar_resnet110' -> ('cifar_resnet32', ['cifar_resnet110']); each name checked (close
    match), an empty side refused."""
    parts = [p.strip() for p in str(entry).split("+")]
    if any(not p for p in parts):
        raise UsageError(f"backbone entry '{entry}' has an empty side: give STUDENT or STUDENT+PARTNER (e.g. "
                         "cifar_resnet32+cifar_resnet110)")
    for name in parts:
        check_backbone(name)
    return parts[0], parts[1:]


def pretty_name(name: str) -> str:
    """A backbone's name as papers write it: cifar_resnet110 -> ResNet-110, cifar_wrn_20_8 -> WRN-20-8."""
    import re

    for pattern, fmt in ((r"cifar_resnet(\d+)", "ResNet-{}"), (r"cifar_wrn_(\d+)_(\d+)", "WRN-{}-{}"),
                         (r"cifar_vgg(\d+)", "VGG-{}"), (r"cifar_densenet(\d+)_(\d+)", "DenseNet-{}-{}")):
        match = re.fullmatch(pattern, name)
        if match:
            return fmt.format(*match.groups())
    return name


def create_backbone_with_kwargs(name: str, num_classes: int, img_size: int | None = None,
                                **kwargs) -> tuple[timm.models.nn.Module, dict]:
    """`create_backbone`, and the keyword arguments of `timm.create_model` that built it (what an exported
    network's user passes to rebuild it)."""
    check_backbone(name)
    used = {"num_classes": num_classes, **kwargs}
    if img_size is not None and not name.startswith("cifar_"):
        try:
            return timm.create_model(name, pretrained=False, **used, img_size=img_size), {**used, "img_size": img_size}
        except TypeError:
            pass  # the model takes any input size
        except (ValueError, AssertionError) as err:
            raise UsageError(f"backbone '{name}' cannot be built: {err}") from None
    try:
        return timm.create_model(name, pretrained=False, **used), used
    except (TypeError, ValueError, AssertionError) as err:
        raise UsageError(f"backbone '{name}' cannot be built: {err}") from None


INPUT_SIZES = (8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)


def smallest_input_size(name: str, num_classes: int, **kwargs: Any) -> int | None:
    """The smallest square input (among common sizes) a backbone builds for and runs a forward pass on, or None
    when none up to 512 works. Used to turn "kernel size can't be greater than actual input size" into the
    `data.image_size` that fixes it."""
    import torch

    for size in INPUT_SIZES:
        try:
            model = create_backbone(name, num_classes, size, **kwargs).eval()
            with torch.no_grad():
                model(torch.zeros(1, 3, size, size))
            return size
        except (RuntimeError, ValueError, AssertionError, UsageError, TypeError):
            continue
    return None
