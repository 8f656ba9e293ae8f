"""The built-in datasets (digits, CIFAR, SVHN, STL-10, ImageNet, Tiny-ImageNet) and datasets named on the command line
(`NAME=imagefolder:ROOT`): their specs at the run's image size, their checks, and their channel statistics
(computed once from the training split and cached)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.data.folders import (
    check_image_lists,
    decode_image,
    first_image_size,
    listing_key,
    load_listed,
    load_tinyimagenet,
    scan,
)
from bench.data.spec import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    DATASETS,
    DIGITS_MEAN,
    DIGITS_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetSpec,
    ImageList,
    TensorSplit,
    cache_dir,
    register_dataset,
    write_cache,
)
from bench.errors import UsageError


def load_digits(data_cfg, train: bool) -> TensorSplit:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), a fixed stratified 80/20 split,
    grey levels 0..16 scaled to 0..255 and repeated to 3 channels."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    idx_train, idx_test = train_test_split(np.arange(len(images)), test_size=0.2, stratify=bunch.target,
                                           random_state=0)
    idx = idx_train if train else idx_test
    x = torch.from_numpy(images[idx]).unsqueeze(1).repeat(1, 3, 1, 1).contiguous()
    return TensorSplit(x, torch.from_numpy(bunch.target[idx]).long())


def _cifar_loader(cls_name: str, folder: str, label: str):
    def load(data_cfg, train: bool) -> TensorSplit:
        import torchvision

        root = Path(data_cfg.root).expanduser()
        if not data_cfg.download and not (root / folder).is_dir():
            raise UsageError(
                f"{label} not found: expected {root / folder}/ (the python version of the dataset); "
                f"set --data-root to the folder that holds {folder}/, or pass --download to fetch it"
            )
        try:
            ds = getattr(torchvision.datasets, cls_name)(str(root), train=train, download=data_cfg.download)
        except RuntimeError as err:
            raise UsageError(f"{label} at {root / folder} is unreadable: {err}") from None
        x = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return TensorSplit(x, torch.as_tensor(ds.targets, dtype=torch.long))

    return load


def _torchvision_loader(cls_name: str, folder: str, label: str, splits: tuple[str, str]):
    """SVHN and STL-10 (torchvision, `split=`): labelled train and test splits as uint8 tensors."""

    def load(data_cfg, train: bool) -> TensorSplit:
        import torchvision

        root = Path(data_cfg.root).expanduser()
        if not data_cfg.download and not (root / folder).exists():
            raise UsageError(f"{label} not found: expected {root / folder} (torchvision's layout); set --data-root "
                             f"to the folder that holds it, or pass --download to fetch it")
        try:
            ds = getattr(torchvision.datasets, cls_name)(str(root),
                                                         split=splits[0] if train else splits[1],
                                                         download=data_cfg.download)
        except RuntimeError as err:
            raise UsageError(f"{label} at {root / folder} is unreadable: {err}") from None
        return TensorSplit(torch.from_numpy(np.ascontiguousarray(ds.data)), torch.as_tensor(ds.labels).long())

    return load


def load_imagenet(data_cfg, train: bool) -> Path:
    folder = Path(data_cfg.root).expanduser() / ("train" if train else "val")
    if not folder.is_dir():
        raise UsageError(
            f"ImageNet not found: expected an ImageFolder tree at {folder}/ (one sub-folder per class); "
            "set --data-root to the folder holding train/ and val/ (downloading ImageNet is manual)"
        )
    return folder


register_dataset(DatasetSpec("digits", 10, 8, DIGITS_MEAN, DIGITS_STD, pad=1, flip=False, load=load_digits,
                      description="scikit-learn's bundled 8x8 digits; offline, CPU-sized (the demo)"))
register_dataset(DatasetSpec("cifar10", 10, 32, CIFAR10_MEAN, CIFAR10_STD, pad=4, flip=True,
                      load=_cifar_loader("CIFAR10", "cifar-10-batches-py", "CIFAR-10"),
                      description="CIFAR-10 via torchvision (--data-root, --download)"))
register_dataset(DatasetSpec("cifar100", 100, 32, CIFAR100_MEAN, CIFAR100_STD, pad=4, flip=True,
                      load=_cifar_loader("CIFAR100", "cifar-100-python", "CIFAR-100"),
                      description="CIFAR-100 via torchvision (--data-root, --download)"))
register_dataset(DatasetSpec("imagenet", 1000, 224, IMAGENET_MEAN, IMAGENET_STD, pad=0, flip=True, load=load_imagenet,
                      description="ImageFolder tree <data-root>/{train,val}/<class>/*.JPEG", resized_crop=True))
register_dataset(DatasetSpec("svhn", 10, 32, None, None, pad=4, flip=False,
                      load=_torchvision_loader("SVHN", "train_32x32.mat", "SVHN", ("train", "test")),
                      description="SVHN via torchvision (train/test; --data-root, --download)"))
register_dataset(DatasetSpec("stl10", 10, 96, None, None, pad=12, flip=True,
                      load=_torchvision_loader("STL10", "stl10_binary", "STL-10", ("train", "test")),
                      description="STL-10 labelled splits via torchvision, 96x96 (--data-root, --download)"))
register_dataset(DatasetSpec("tinyimagenet", 200, 64, None, None, pad=8, flip=True,
                      load=lambda data_cfg, train: load_tinyimagenet(Path(data_cfg.root) / "tiny-imagenet-200",
                                                                     "tinyimagenet", data_cfg, train, 64),
                      description="Tiny-ImageNet as distributed: <data-root>/tiny-imagenet-200 (manual download)"))



def source_spec(name: str, source, data_cfg) -> DatasetSpec:
    """The spec of a dataset named on the command line (`NAME=imagefolder:ROOT`, `NAME=tinyimagenet:ROOT`).
    Its image size is `data.image_size`, else its own `image_size`, else the height of its first training
    image."""
    root = Path(source.root)
    train = scan(source.kind, source.root, name, True)
    size = int(data_cfg.image_size or 0) or int(source.image_size or 0) or first_image_size(train)
    pad = source.pad if source.pad >= 0 else size // 8
    mean = tuple(source.mean) if source.mean else None
    std = tuple(source.std) if source.std else None
    return DatasetSpec(name, len(train.classes), size, mean, std, pad=pad, flip=source.flip,
                       load=lambda cfg, is_train: load_listed(lambda t: scan(source.kind, source.root, name, t), size,
                                                               pad, cfg, is_train),
                       description=f"{source.kind} at {root}", stats_key=f"{source.kind}:{root}")


def dataset_spec(name: str, data_cfg, source=None) -> DatasetSpec:
    """The dataset a run trains on: registered (or from `source`), at `data.image_size` when set (the crop
    padding scaled with it, e.g. CIFAR's 4 at 32 -> 8 at 64)."""
    if source is not None:
        spec = source_spec(name, source, data_cfg)
    else:
        spec = DATASETS.get(name)
        size = int(data_cfg.image_size or 0)
        if size and size != spec.image_size:
            spec = dataclasses.replace(spec, image_size=size, pad=round(spec.pad * size / spec.image_size))
    mean, std = getattr(data_cfg, "mean", None), getattr(data_cfg, "std", None)
    if mean and std:  # the normalisation of the weights a run starts from (their pretrained_cfg), not the data's
        spec = dataclasses.replace(spec, mean=tuple(map(float, mean)), std=tuple(map(float, std)))
    return spec


def run_dataset(cfg) -> DatasetSpec:
    """`dataset_spec` of a RunConfig."""
    return dataset_spec(cfg.dataset, cfg.data, getattr(cfg, "dataset_source", None))


def check_dataset(spec: DatasetSpec, data_cfg, source=None) -> None:
    """Before any run: the dataset's files are there and readable (one clear line otherwise)."""
    if source is None:
        spec.load(data_cfg, False)
        return
    check_image_lists(scan(source.kind, source.root, spec.name, True), scan(source.kind, source.root, spec.name, False),
                      spec.name)


def with_statistics(spec: DatasetSpec, data_cfg, train_split: Any = None) -> DatasetSpec:
    """`spec` with mean/std filled: given ones as they are, else computed once from the training split (per
    channel over every pixel, scaled to 0..1) and cached by what identifies the data. `train_split`: what
    `spec.load(data_cfg, True)` returned, when the caller has it already."""
    if spec.mean is not None and spec.std is not None:
        return spec
    key = hashlib.sha256(f"{spec.name}|{spec.stats_key or Path(data_cfg.root).expanduser().resolve()}".encode())
    source = spec.load(data_cfg, True) if train_split is None else train_split
    if isinstance(source, ImageList):
        key.update(listing_key(source).encode())
    elif isinstance(source, TensorSplit):
        key.update(f"{tuple(source.images.shape)}".encode())
    path = cache_dir() / "stats" / f"{key.hexdigest()[:32]}.json"
    try:
        stats = json.loads(path.read_text())
        mean, std = tuple(map(float, stats["mean"])), tuple(map(float, stats["std"]))
    except (OSError, ValueError, KeyError, TypeError):
        mean, std = channel_statistics(source, min(spec.image_size, 64))
        write_cache(path, json.dumps({"dataset": spec.name, "mean": mean, "std": std}).encode())
    return dataclasses.replace(spec, mean=mean, std=std)


def channel_statistics(source: TensorSplit | ImageList | Path, size: int) -> tuple[tuple[float, ...], ...]:
    """Per-channel mean and standard deviation (0..1 scale) of a training split."""
    total = np.zeros(3)
    squares = np.zeros(3)
    count = 0
    if isinstance(source, Path):
        from torchvision.datasets import ImageFolder

        source = ImageList([(p, c) for p, c in ImageFolder(str(source)).samples], [], str(source))
    chunks: Iterator[np.ndarray]
    if isinstance(source, TensorSplit):
        chunks = (source.images[i:i + 4096].numpy() for i in range(0, len(source.images), 4096))
    else:
        chunks = (decode_image(p, size).transpose(2, 0, 1)[None] for p, _ in source.samples)
    for chunk in chunks:
        x = chunk.astype(np.float64) / 255.0
        total += x.sum(axis=(0, 2, 3))
        squares += (x ** 2).sum(axis=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean ** 2, 1e-12))
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def resize_split(split: TensorSplit, size: int) -> TensorSplit:
    """uint8 images resized once to size x size (bilinear, antialiased when shrinking)."""
    if split.images.shape[-1] == size and split.images.shape[-2] == size:
        return split
    out = []
    for i in range(0, len(split.images), 2048):
        x = F.interpolate(split.images[i:i + 2048].float(), size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return TensorSplit(torch.cat(out), split.labels)


