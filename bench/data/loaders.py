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
from bench.data.recipes import Recipe, apply_extras, torchvision_transform, view_recipes
from bench.data.samplers import ClassBalancedBatches, batches_per_epoch, rank_batches
from bench.data.sources import dataset_spec, resize_split, with_statistics
from bench.data.spec import DatasetSpec, ImageList, TensorSplit
from bench.errors import UsageError


class TensorTrainLoader:
    """Shuffled, augmented batches of a split held on `device`, `views` augmentations per image, view i through
    `recipes[i]` (default: crop + flip for every view); `sampler` "random" (a permutation) or "class_balanced"
    (`per_class` images of each class of a batch, bench.data.samplers).

    With `world` > 1 processes, every rank draws the same order and takes its own 1/world of it (`batch_size` stays
    the global batch), with its own augmentation stream."""

    def __init__(self, split: TensorSplit, spec: DatasetSpec, batch_size: int, views: int, seed: int,
                 device: torch.device, channels_last: bool, rank: int = 0, world: int = 1,
                 recipes: list[Recipe] | None = None, sampler: str = "random", per_class: int = 2) -> None:
        self.normalize = Normalize(spec.mean, spec.std, device, channels_last)
        # the split, zero-padded and normalised once, float32 NHWC: a batch is then one gather of pixels
        # (4x the memory of uint8: 0.96 GB for CIFAR's 50,000 training images)
        self.store = self.normalize.nhwc(pad_nhwc(split.images.to(device), spec.pad))
        self.size = tuple(split.images.shape[2:])
        self.labels = split.labels.to(device)
        self.labels_cpu = split.labels.cpu()
        self.spec, self.views, self.seed, self.device = spec, views, seed, device
        self.rank, self.world = rank, world
        self.global_batch = batch_size
        self.batch_size = max(1, batch_size // world)
        self.recipes = recipes or view_recipes(None, views)
        self.sampler, self.per_class = sampler, per_class
        self.balanced_batches = (batches_per_epoch(self.labels_cpu, per_class, batch_size)
                                 if sampler == "class_balanced" else 0)

    @property
    def num_samples(self) -> int:
        """Samples per epoch on this rank."""
        if self.sampler == "class_balanced":
            return self.balanced_batches * self.batch_size
        return len(self.labels) // self.world

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def order(self, gen: torch.Generator) -> Tensor:
        """This rank's indices of the epoch, batch after batch."""
        if self.sampler == "class_balanced":
            batches = rank_batches(self.labels_cpu, self.per_class, self.global_batch, gen, self.rank, self.world)
            return (torch.cat(batches) if batches else torch.zeros(0, dtype=torch.long)).to(self.device)
        order = torch.randperm(len(self.labels), generator=gen).to(self.device)
        return order[self.rank::self.world][: self.num_samples] if self.world > 1 else order

    def epoch(self, epoch: int) -> Iterator[tuple[list[Tensor], Tensor]]:
        gen = epoch_generator(self.seed, epoch)
        order = self.order(gen)
        if self.world > 1:
            gen = epoch_generator(self.seed + 104_729 * (self.rank + 1), epoch)
        shared = len({(r.crop, r.flip) for r in self.recipes}) == 1  # one gather serves every view
        for start in range(0, self.num_samples, self.batch_size):
            idx = order[start:start + self.batch_size]
            if shared:
                many = idx.repeat(self.views) if self.views > 1 else idx
                views = list(self.normalize.layout(self.gather(many, self.recipes[0], gen)).chunk(self.views))
            else:
                views = [self.normalize.layout(self.gather(idx, r, gen)) for r in self.recipes]
            yield [self.extras(v, r, gen) for v, r in zip(views, self.recipes)], self.labels[idx]

    def gather(self, idx: Tensor, recipe: Recipe, gen: torch.Generator) -> Tensor:
        return crop_flip_nhwc(self.store, idx, self.size, self.spec.pad, self.spec.flip and recipe.flip, gen,
                              crop=recipe.crop)

    def extras(self, x: Tensor, recipe: Recipe, gen: torch.Generator) -> Tensor:
        """A view's ops after crop and flip (none for the default recipe: the batch as gathered)."""
        if not recipe.extras:
            return x
        memory_format = torch.channels_last if self.normalize.channels_last else torch.contiguous_format
        mean, std = self.normalize.mean, self.normalize.std
        return apply_extras(x, recipe, mean, std, gen).contiguous(memory_format=memory_format)


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
    """A torchvision transform applied `views` times independently (PCL's multiple augmentation), or a list of
    transforms, one per view (per-view recipes)."""

    def __init__(self, transform: Callable | list[Callable], views: int) -> None:
        self.transforms = list(transform) if isinstance(transform, list) else [transform] * views
        self.views = views

    def __call__(self, img):
        return [tf(img) for tf in self.transforms]


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
    """Streamed training batches (a DataLoader over image files), view i through `recipes[i]`; the order from a
    DistributedSampler (random) or ClassBalancedBatches, both set by (seed, epoch)."""

    def __init__(self, root: Path | ImageList, spec: DatasetSpec, data_cfg, views: int, seed: int,
                 device: torch.device, channels_last: bool, rank: int = 0, world: int = 1,
                 recipes: list[Recipe] | None = None) -> None:
        recipes = recipes or view_recipes(None, views)
        transforms = [torchvision_transform(r, spec, spec.image_size) for r in recipes]
        self.dataset = _folder_dataset(root, spec, MultiView(transforms, views))
        self.seed, self.device = seed, device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        workers = data_cfg.workers
        batch = dict(batch_size=max(1, data_cfg.batch_size // world), drop_last=False)
        if getattr(data_cfg, "sampler", "random") == "class_balanced":
            labels = torch.tensor([label for _, label in self.dataset.samples], dtype=torch.long)
            self.sampler = ClassBalancedBatches(labels, data_cfg.per_class, data_cfg.batch_size, seed, rank, world)
            batch = dict(batch_sampler=self.sampler)
            self.samples = len(self.sampler) * max(1, data_cfg.batch_size // world)
        else:
            self.sampler = torch.utils.data.DistributedSampler(self.dataset, num_replicas=world, rank=rank,
                                                               shuffle=True, seed=seed, drop_last=True)
            batch["sampler"] = self.sampler
            self.samples = len(self.sampler)
        self.loader = torch.utils.data.DataLoader(
            self.dataset, **batch, num_workers=workers, pin_memory=device.type == "cuda",
            persistent_workers=workers > 0)

    @property
    def num_samples(self) -> int:
        return self.samples

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
                  rank: int = 0, world: int = 1, recipes: list[str] | None = None):
    """(train loader, eval loader, spec with its mean/std) of a dataset (a `dataset_spec`); sharded over
    `world` ranks. `recipes`: the views' augmentation recipes (None: `data.view_augment`, else crop + flip)."""
    parsed = view_recipes(recipes if recipes is not None else getattr(data_cfg, "view_augment", None), views)
    spec = dataset_spec(spec, data_cfg) if isinstance(spec, str) else spec
    train_src = spec.load(data_cfg, True)
    spec = with_statistics(spec, data_cfg, train_src)
    if isinstance(train_src, TensorSplit):
        train_src = resize_split(train_src, spec.image_size)
        train = TensorTrainLoader(train_src, spec, data_cfg.batch_size, views, seed, device, channels_last, rank,
                                  world, recipes=parsed, sampler=getattr(data_cfg, "sampler", "random"),
                                  per_class=getattr(data_cfg, "per_class", 2))
    else:
        train = FolderTrainLoader(train_src, spec, data_cfg, views, seed, device, channels_last, rank, world,
                                  recipes=parsed)
    return train, build_eval_loader(spec, data_cfg, device, channels_last, rank, world), spec
