"""What a dataset is to the harness: its spec (classes, size, statistics, how to load it), the two forms a split takes
(a TensorSplit held whole, an ImageList streamed), the dataset registry, and the cache folder."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from bench.errors import UsageError
from bench.registry import Registry

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DIGITS_MEAN, DIGITS_STD = (0.3054,) * 3, (0.3760,) * 3  # the digits training split


@dataclass
class TensorSplit:
    """A whole split as uint8 images [N, C, H, W] and int64 labels [N]."""

    images: Tensor
    labels: Tensor


@dataclass
class DatasetSpec:
    """What the trainer needs to know of a dataset, and how to load it."""

    name: str
    num_classes: int
    image_size: int
    mean: tuple[float, ...] | None  # None: computed once from the training split and cached
    std: tuple[float, ...] | None
    pad: int  # zero padding of the random crop (0: no crop)
    flip: bool
    load: Callable[..., TensorSplit | Path | ImageList]  # (data config, train?) -> a split held whole, an
    # ImageFolder root or a list of image files (streamed through a DataLoader)
    description: str = ""
    resized_crop: bool = False  # streamed training crops: RandomResizedCrop (ImageNet) instead of pad + crop
    stats_key: str = ""  # what identifies the data for the mean/std cache (default: name + data root)


@dataclass
class ImageList:
    """Image files with their labels (index into `classes`), read one at a time."""

    samples: list[tuple[str, int]]
    classes: list[str]
    where: str  # the folder, for messages


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Register a dataset under `spec.name` (built-ins and plug-ins alike); a taken name is an error."""
    DATASETS.register(spec.name)(spec)
    return spec


def cache_dir() -> Path:
    """Where computed statistics and decoded image folders are cached."""
    env = os.environ.get("OKD_BENCH_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "okd-bench"


def write_cache(path: Path, data: bytes) -> None:
    """Best effort: a cache that cannot be written only costs time."""
    from bench.store import runs

    try:
        runs.atomic_write(path, lambda f: f.write(data), binary=True)
    except (OSError, UsageError):  # UsageError: a refused write, named as a StorageError
        pass
