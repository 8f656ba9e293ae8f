"""Datasets and loaders.

Small datasets (digits, CIFAR) are held whole on the training device as uint8 and augmented there,
batched: random crop with zero padding, horizontal flip, normalisation, m independent views at once
(PCL's multiple input augmentation), reshuffled each epoch from a generator seeded by (seed, epoch),
so a run resumed at an epoch boundary sees exactly the batches it would have seen.
ImageNet is an ImageFolder tree read by a multi-worker DataLoader.

Every training loader yields `(views, target)`: a list of `views` augmented batches and the labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
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
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int  # zero padding of the random crop (0: no crop)
    flip: bool
    load: Callable[..., TensorSplit | Path]  # (data config, train?) -> a split or an ImageFolder root
    description: str = ""


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def _register(spec: DatasetSpec) -> DatasetSpec:
    DATASETS.register(spec.name)(spec)
    return spec


# ---------------------------------------------------------------------------------------------
# loading


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


def load_imagenet(data_cfg, train: bool) -> Path:
    folder = Path(data_cfg.root).expanduser() / ("train" if train else "val")
    if not folder.is_dir():
        raise UsageError(
            f"ImageNet not found: expected an ImageFolder tree at {folder}/ (one sub-folder per class); "
            "set --data-root to the folder holding train/ and val/ (downloading ImageNet is manual)"
        )
    return folder


_register(DatasetSpec("digits", 10, 8, DIGITS_MEAN, DIGITS_STD, pad=1, flip=False, load=load_digits,
                      description="scikit-learn's bundled 8x8 digits; offline, CPU-sized (the demo)"))
_register(DatasetSpec("cifar10", 10, 32, CIFAR10_MEAN, CIFAR10_STD, pad=4, flip=True,
                      load=_cifar_loader("CIFAR10", "cifar-10-batches-py", "CIFAR-10"),
                      description="CIFAR-10 via torchvision (--data-root, --download)"))
_register(DatasetSpec("cifar100", 100, 32, CIFAR100_MEAN, CIFAR100_STD, pad=4, flip=True,
                      load=_cifar_loader("CIFAR100", "cifar-100-python", "CIFAR-100"),
                      description="CIFAR-100 via torchvision (--data-root, --download)"))
_register(DatasetSpec("imagenet", 1000, 224, IMAGENET_MEAN, IMAGENET_STD, pad=0, flip=True, load=load_imagenet,
                      description="ImageFolder tree <data-root>/{train,val}/<class>/*.JPEG"))


# ---------------------------------------------------------------------------------------------
# device-resident loader for tensor datasets


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator whose stream depends only on (seed, epoch): exact replay after a resume, and the same
    permutation, crops and flips whatever device the batches are made on (draws are moved there, a few bytes
    per image)."""
    gen = torch.Generator()
    gen.manual_seed((int(seed) * 1_000_003 + int(epoch) * 7_919 + 17) % (2**63))
    return gen


def crop_flip_nhwc(padded: Tensor, index: Tensor, size: tuple[int, int], pad: int, flip: bool,
                   gen: torch.Generator) -> Tensor:
    """Batched RandomCrop(size, padding=pad) then RandomHorizontalFlip of images `index` of a zero-padded
    NHWC store [N, H+2p, W+2p, C] (any dtype): one index_select of pixels, whose crop offsets shift the row
    and column grids and whose flip reverses the columns. Returns [B, H, W, C]."""
    b, (h, w) = len(index), size
    dev = padded.device
    hp, wp, c = padded.shape[1:]
    draw = gen.device
    off_y = torch.randint(0, 2 * pad + 1, (b,), device=draw, generator=gen).to(dev, non_blocking=True)
    off_x = torch.randint(0, 2 * pad + 1, (b,), device=draw, generator=gen).to(dev, non_blocking=True)
    rows = off_y[:, None] + torch.arange(h, device=dev)
    cols = off_x[:, None] + torch.arange(w, device=dev)
    if flip:
        flipped = (torch.rand(b, device=draw, generator=gen) < 0.5).to(dev, non_blocking=True)
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    pixel = (index[:, None, None] * hp + rows[:, :, None]) * wp + cols[:, None, :]  # [B, H, W]
    return padded.view(-1, c).index_select(0, pixel.view(-1)).view(b, h, w, c)


def pad_nhwc(images: Tensor, pad: int) -> Tensor:
    """uint8 NCHW -> zero-padded NHWC store for `crop_flip_nhwc`."""
    return F.pad(images, (pad, pad, pad, pad)).permute(0, 2, 3, 1).contiguous()


def crop_flip(images: Tensor, pad: int, flip: bool, gen: torch.Generator) -> Tensor:
    """RandomCrop(size, padding=pad) (zero fill) then RandomHorizontalFlip, batched, on uint8 [B,C,H,W]."""
    b, _, h, w = images.shape
    out = crop_flip_nhwc(pad_nhwc(images, pad), torch.arange(b, device=images.device), (h, w), pad, flip, gen)
    return out.permute(0, 3, 1, 2)


class Normalize:
    """uint8 images -> float, (x/255 - mean) / std; NHWC input comes out as NCHW with channels_last strides
    (no copy), or contiguous NCHW when `channels_last` is off."""

    def __init__(self, mean, std, device: torch.device, channels_last: bool) -> None:
        self.scale = 1.0 / (255.0 * torch.tensor(std, device=device))
        self.shift = torch.tensor(mean, device=device) / torch.tensor(std, device=device)
        self.channels_last = channels_last

    def nhwc(self, images: Tensor) -> Tensor:
        """uint8 NHWC -> normalised float32 NHWC."""
        return images.float().mul_(self.scale).sub_(self.shift)

    def layout(self, x: Tensor) -> Tensor:
        """float NHWC -> NCHW in the configured memory format."""
        x = x.permute(0, 3, 1, 2)
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def __call__(self, images: Tensor) -> Tensor:
        """uint8 NCHW -> normalised float NCHW."""
        return self.layout(self.nhwc(images.permute(0, 2, 3, 1)))


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


class FolderTrainLoader:
    def __init__(self, root: Path, spec: DatasetSpec, data_cfg, views: int, seed: int, device: torch.device,
                 channels_last: bool, rank: int = 0, world: int = 1) -> None:
        from torchvision import datasets, transforms

        tf = transforms.Compose([
            transforms.RandomResizedCrop(spec.image_size), transforms.RandomHorizontalFlip(),
            transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std),
        ])
        self.dataset = datasets.ImageFolder(str(root), transform=MultiView(tf, views))
        _check_classes(self.dataset, spec)
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
    def __init__(self, root: Path, spec: DatasetSpec, data_cfg, device: torch.device, channels_last: bool,
                 rank: int = 0, world: int = 1) -> None:
        from torchvision import datasets, transforms

        resize = int(round(spec.image_size / 0.875))
        tf = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(spec.image_size),
                                 transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)])
        self.dataset = datasets.ImageFolder(str(root), transform=tf)
        _check_classes(self.dataset, spec)
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


def build_eval_loader(dataset: str, data_cfg, device: torch.device, channels_last: bool, rank: int = 0,
                      world: int = 1):
    """The test split of a registered dataset, in order; sharded over `world` ranks."""
    spec = DATASETS.get(dataset)
    test_src = spec.load(data_cfg, False)
    if isinstance(test_src, TensorSplit):
        return TensorEvalLoader(test_src, spec, data_cfg.eval_batch_size, device, channels_last, rank, world)
    return FolderEvalLoader(test_src, spec, data_cfg, device, channels_last, rank, world)


def build_loaders(dataset: str, data_cfg, views: int, seed: int, device: torch.device, channels_last: bool,
                  rank: int = 0, world: int = 1):
    """(train loader, eval loader, spec) for a registered dataset; sharded over `world` ranks."""
    spec = DATASETS.get(dataset)
    train_src = spec.load(data_cfg, True)
    if isinstance(train_src, TensorSplit):
        train = TensorTrainLoader(train_src, spec, data_cfg.batch_size, views, seed, device, channels_last, rank,
                                  world)
    else:
        train = FolderTrainLoader(train_src, spec, data_cfg, views, seed, device, channels_last, rank, world)
    return train, build_eval_loader(dataset, data_cfg, device, channels_last, rank, world), spec
