"""Training and test loaders: device-resident (TensorTrainLoader, TensorEvalLoader) for splits held whole, and
DataLoader-backed (FolderTrainLoader, FolderEvalLoader) for streamed image folders; `build_loaders` picks them.

Every training loader yields `(views, target)`: a list of `views` augmented batches and the labels."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench.data.augment import Normalize, crop_flip_nhwc, epoch_generator, pad_nhwc
from bench.data.sources import dataset_spec, resize_split, with_statistics
from bench.data.spec import DatasetSpec, ImageList, TensorSplit
from bench.errors import UsageError


class TensorTrainLoader:
    """Shuffled, augmented batches of a split held on `device`, `views` augmentations per image.

    With `world` > 1 processes, every rank draws the same permutation and takes its own 1/world of it
    (`batch_size` stays the global batch), with its own augmentation stream."""

    def __init__(self, split: TensorSplit, spec: DatasetSpec, batch_size: int, views: int, seed: int,
                 device: torch.device, channels_last: bool, rank: int = 0, world: int = 1) -> None:
        self.normalize = Normalize(spec.mean, spec.std, device, channels_last)
        # the split, zero-padded and normalised once, float32 NHWC: a batch is then one gather of pixels
        # (4x the memory of uint8: 0.96 GB for CIFAR's 50,000 training images)
        self.store = self.normalize.nhwc(pad_nhwc(split.images.to(device), spec.pad))
        self.size = tuple(split.images.shape[2:])
        self.labels = split.labels.to(device)
        self.spec, self.views, self.seed, self.device = spec, views, seed, device
        self.rank, self.world = rank, world
        self.batch_size = max(1, batch_size // world)

    @property
    def num_samples(self) -> int:
        """Samples per epoch on this rank."""
        return len(self.labels) // self.world

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[list[Tensor], Tensor]]:
        gen = epoch_generator(self.seed, epoch)
        order = torch.randperm(len(self.labels), generator=gen).to(self.device)
        if self.world > 1:
            order = order[self.rank::self.world][: self.num_samples]
            gen = epoch_generator(self.seed + 104_729 * (self.rank + 1), epoch)
        for start in range(0, self.num_samples, self.batch_size):
            idx = order[start:start + self.batch_size]
            many = idx.repeat(self.views) if self.views > 1 else idx
            crops = crop_flip_nhwc(self.store, many, self.size, self.spec.pad, self.spec.flip, gen)
            yield list(self.normalize.layout(crops).chunk(self.views)), self.labels[idx]


class TensorEvalLoader:
    """The test split in order; with `world` > 1, this rank's share (rank, rank + world, ...)."""

    def __init__(self, split: TensorSplit, spec: DatasetSpec, batch_size: int, device: torch.device,
                 channels_last: bool, rank: int = 0, world: int = 1) -> None:
        self.images = split.images[rank::world].to(device)
        self.labels = split.labels[rank::world].to(device)
        self.batch_size = batch_size
        self.normalize = Normalize(spec.mean, spec.std, device, channels_last)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(self.labels), self.batch_size):
            yield (self.normalize(self.images[start:start + self.batch_size]),
                   self.labels[start:start + self.batch_size])


# ---------------------------------------------------------------------------------------------
# ImageFolder loader (ImageNet)


class MultiView:
    """A torchvision transform applied `views` times independently: PCL's multiple augmentation."""

    def __init__(self, transform: Callable, views: int) -> None:
        self.transform, self.views = transform, views

    def __call__(self, img):
        return [self.transform(img) for _ in range(self.views)]


class ListedImages(torch.utils.data.Dataset):
    """An ImageList as a torch Dataset: (transform(RGB image), label)."""

    def __init__(self, images: ImageList, transform: Callable) -> None:
        self.samples, self.classes, self.transform = images.samples, images.classes, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.samples[i]
        with Image.open(path) as img:
            return self.transform(img.convert("RGB")), label


def _folder_dataset(source: Path | ImageList, spec: DatasetSpec, transform: Callable):
    from torchvision import datasets

    if isinstance(source, ImageList):
        return ListedImages(source, transform)
    dataset = datasets.ImageFolder(str(source), transform=transform)
    _check_classes(dataset, spec)
    return dataset


class FolderTrainLoader:
    def __init__(self, root: Path | ImageList, spec: DatasetSpec, data_cfg, views: int, seed: int,
                 device: torch.device, channels_last: bool, rank: int = 0, world: int = 1) -> None:
        from torchvision import transforms

        size = spec.image_size
        crop = ([transforms.RandomResizedCrop(size)] if spec.resized_crop else
                [transforms.Resize((size, size)), transforms.RandomCrop(size, padding=spec.pad)])
        tf = transforms.Compose([*crop, *([transforms.RandomHorizontalFlip()] if spec.flip else []),
                                 transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)])
        self.dataset = _folder_dataset(root, spec, MultiView(tf, views))
        self.seed, self.device = seed, device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        workers = data_cfg.workers
        self.sampler = torch.utils.data.DistributedSampler(self.dataset, num_replicas=world, rank=rank, shuffle=True,
                                                           seed=seed, drop_last=True)
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=max(1, data_cfg.batch_size // world), sampler=self.sampler,
            num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
            drop_last=False,
        )

    @property
    def num_samples(self) -> int:
        return len(self.sampler)

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int) -> Iterator[tuple[list[Tensor], Tensor]]:
        self.sampler.set_epoch(epoch)  # the order depends on (seed, epoch) only
        for views, target in self.loader:
            yield ([v.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
                    for v in views], target.to(self.device, non_blocking=True))


class FolderEvalLoader:
    def __init__(self, root: Path | ImageList, spec: DatasetSpec, data_cfg, device: torch.device,
                 channels_last: bool, rank: int = 0, world: int = 1) -> None:
        from torchvision import transforms

        size = spec.image_size
        resize = ([transforms.Resize(int(round(size / 0.875))), transforms.CenterCrop(size)] if spec.resized_crop
                  else [transforms.Resize((size, size))])
        tf = transforms.Compose([*resize, transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)])
        self.dataset = _folder_dataset(root, spec, tf)
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        shard = torch.utils.data.Subset(self.dataset, range(rank, len(self.dataset), world))
        self.loader = torch.utils.data.DataLoader(shard, batch_size=data_cfg.eval_batch_size,
                                                  num_workers=data_cfg.workers, pin_memory=device.type == "cuda")

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in self.loader:
            yield x.to(self.device).contiguous(memory_format=self.memory_format), y.to(self.device)


def _check_classes(dataset, spec: DatasetSpec) -> None:
    if len(dataset.classes) > spec.num_classes:
        raise UsageError(f"{spec.name}: found {len(dataset.classes)} class folders, expected at most "
                         f"{spec.num_classes}")


def eval_transform(spec: DatasetSpec) -> dict[str, Any]:
    """How the test split's images reach the network, as timm's `pretrained_cfg` fields, so that
    `timm.data.create_transform(**timm.data.resolve_data_config(pretrained_cfg=...))` on the original image files
    gives what the run evaluated: image folders are resized once to the square size, bilinear (PIL, antialiased);
    ImageNet-style data is resized to size / 0.875 and centre-cropped."""
    return {"input_size": [3, spec.image_size, spec.image_size], "interpolation": "bilinear",
            "crop_pct": 0.875 if spec.resized_crop else 1.0, "crop_mode": "center" if spec.resized_crop else "squash",
            "mean": list(spec.mean or ()), "std": list(spec.std or ()), "num_classes": spec.num_classes}


def build_eval_loader(spec: DatasetSpec | str, data_cfg, device: torch.device, channels_last: bool, rank: int = 0,
                      world: int = 1):
    """The test split of a dataset (a `dataset_spec`, or a registered name), in order; sharded over `world`
    ranks."""
    spec = with_statistics(dataset_spec(spec, data_cfg) if isinstance(spec, str) else spec, data_cfg)
    test_src = spec.load(data_cfg, False)
    if isinstance(test_src, TensorSplit):
        test_src = resize_split(test_src, spec.image_size)
        return TensorEvalLoader(test_src, spec, data_cfg.eval_batch_size, device, channels_last, rank, world)
    return FolderEvalLoader(test_src, spec, data_cfg, device, channels_last, rank, world)


def build_loaders(spec: DatasetSpec | str, data_cfg, views: int, seed: int, device: torch.device, channels_last: bool,
                  rank: int = 0, world: int = 1):
    """(train loader, eval loader, spec with its mean/std) of a dataset (a `dataset_spec`); sharded over
    `world` ranks."""
    spec = dataset_spec(spec, data_cfg) if isinstance(spec, str) else spec
    train_src = spec.load(data_cfg, True)
    spec = with_statistics(spec, data_cfg, train_src)
    if isinstance(train_src, TensorSplit):
        train_src = resize_split(train_src, spec.image_size)
        train = TensorTrainLoader(train_src, spec, data_cfg.batch_size, views, seed, device, channels_last, rank,
                                  world)
    else:
        train = FolderTrainLoader(train_src, spec, data_cfg, views, seed, device, channels_last, rank, world)
    return train, build_eval_loader(spec, data_cfg, device, channels_last, rank, world), spec
