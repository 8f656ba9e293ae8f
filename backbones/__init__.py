"""Backbones: the CIFAR networks of the online-KD literature, registered into timm's registry.

`import backbones` registers `cifar_resnet8/32/110`, `cifar_wrn_20_8`, `cifar_vgg16` and
`cifar_densenet40_12`; after that `timm.create_model(name, num_classes=...)` builds any of them, and any
other timm model name works too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import timm
from torch import nn

from backbones import cifar_densenet, cifar_resnet, cifar_vgg  # noqa: F401  (registers the models)
from bench.errors import UsageError, unknown

CIFAR_BACKBONES = [
    "cifar_resnet8", "cifar_resnet32", "cifar_resnet110", "cifar_wrn_20_8", "cifar_vgg16", "cifar_densenet40_12",
]


def list_backbones() -> list[str]:
    """CIFAR backbones first, then every other architecture timm registers."""
    return CIFAR_BACKBONES + [n for n in timm.list_models() if n not in CIFAR_BACKBONES]


def check_backbone(name: str) -> None:
    if not timm.is_model(name):
        raise unknown("backbone", name, CIFAR_BACKBONES + timm.list_models())


def create_backbone(name: str, num_classes: int, img_size: int | None = None, **kwargs) -> timm.models.nn.Module:
    """A freshly initialised backbone (never pretrained weights: nothing downloads). `img_size` is passed
    to models built for a fixed input size (ViT, Swin, ...) and ignored by the others."""
    return create_backbone_with_kwargs(name, num_classes, img_size, **kwargs)[0]


def backbone_factory(name: str, num_classes: int, img_size: int | None = None) -> Callable[[], nn.Module]:
    """A method's backbone factory: each call builds a freshly initialised `create_backbone(name, ...)`."""
    return functools.partial(create_backbone, name, num_classes, img_size)


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
