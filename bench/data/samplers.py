"""The order of an epoch's training images (`data.sampler`): `random` (a permutation, as always) or `class_balanced`
(every batch holds exactly `data.per_class` images of each of its batch_size / per_class classes; MCL's official
batches, 2 images of each of 64 classes at batch 128, main_cifar.py L99-101).

Both depend only on (seed, epoch), so a run resumed at an epoch boundary sees the batches it would have seen, and both
serve the device-resident and the streamed loaders.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from bench.errors import UsageError, unknown

SAMPLERS = ("random", "class_balanced")


def check_sampler(data_cfg, num_classes: int, dataset: str, world: int = 1) -> None:
    """Before any run: the sampler exists and a class-balanced batch can be made (one UsageError otherwise)."""
    name = getattr(data_cfg, "sampler", "random")
    if name not in SAMPLERS:
        raise unknown("data.sampler", name, SAMPLERS)
    if name != "class_balanced":
        return
    k, batch = int(data_cfg.per_class), int(data_cfg.batch_size)
    if k < 1:
        raise UsageError(f"data.per_class must be at least 1, got {k}")
    if batch % k:
        raise UsageError(f"data.sampler=class_balanced: data.batch_size {batch} is not divisible by data.per_class {k} "
                         f"(a batch holds {k} images of each of its classes); e.g. batch_size {batch - batch % k or k}")
    if batch // k > num_classes:
        raise UsageError(f"data.sampler=class_balanced: a batch of {batch} at {k} per class holds {batch // k} "
                         f"classes, more than {dataset}'s {num_classes}; raise data.per_class to "
                         f"{next(d for d in range(-(-batch // num_classes), batch + 1) if batch % d == 0)} "
                         "or lower data.batch_size")
    if (batch // k) % world:
        raise UsageError(f"data.sampler=class_balanced: the {batch // k} classes of a batch do not split over "
                         f"{world} processes")


def balanced_rounds(counts: np.ndarray, per_class: int, classes_per_batch: int,
                    gen: torch.Generator | None = None) -> list[np.ndarray]:
    """Which classes each batch takes: every batch the `classes_per_batch` classes with the most groups of
    `per_class` images left, ties broken at random (with `gen`; none: by class index). Taking the fullest classes
    first makes as many batches as the counts allow, a number that does not depend on the tie-breaks."""
    left = (np.asarray(counts) // per_class).astype(np.int64)
    rounds = []
    while (left > 0).sum() >= classes_per_batch:
        noise = torch.rand(len(left), generator=gen).numpy() if gen is not None else np.zeros(len(left))
        chosen = np.argsort(-(left + 0.5 * noise), kind="stable")[:classes_per_batch]
        rounds.append(chosen)
        left[chosen] -= 1
    return rounds


def class_balanced_order(labels: Tensor, per_class: int, batch_size: int, gen: torch.Generator) -> Tensor:
    """An epoch's image indices, batch after batch: each batch is `batch_size // per_class` distinct classes with
    `per_class` images each (consecutive), every image at most once; the images left over are not used this epoch."""
    labels = labels.cpu()
    counts = torch.bincount(labels) if len(labels) else torch.zeros(0, dtype=torch.long)
    grouped = torch.argsort(labels, stable=True)  # each class's images in index order, class after class
    by_class = [idx[torch.randperm(len(idx), generator=gen)] for idx in grouped.split(counts.tolist())]
    rounds = balanced_rounds(counts.numpy(), per_class, batch_size // per_class, gen)
    if not rounds:
        return torch.zeros(0, dtype=torch.long)
    chosen = torch.from_numpy(np.concatenate(rounds))  # the class of each group of `per_class`, in batch order
    # the how-many-th group of its class each one is: its rank among the earlier groups of the same class
    ranked = torch.argsort(chosen, stable=True)
    uses = torch.bincount(chosen, minlength=len(counts))
    starts = torch.cumsum(uses, 0) - uses
    nth = torch.empty_like(chosen)
    nth[ranked] = torch.arange(len(chosen)) - starts[chosen[ranked]]
    offsets = torch.cumsum(counts, 0) - counts  # where each class starts in the concatenated permutations
    first = offsets[chosen] + nth * per_class
    return torch.cat(by_class)[(first[:, None] + torch.arange(per_class)).reshape(-1)]


def batches_per_epoch(labels: Tensor, per_class: int, batch_size: int) -> int:
    """How many class-balanced batches an epoch has (the same every epoch)."""
    counts = np.bincount(labels.cpu().numpy(), minlength=int(labels.max()) + 1)
    return len(balanced_rounds(counts, per_class, batch_size // per_class))


def rank_batches(labels: Tensor, per_class: int, batch_size: int, gen: torch.Generator, rank: int = 0,
                 world: int = 1) -> list[Tensor]:
    """The epoch's class-balanced batches (`class_balanced_order`), each cut to this rank's part: its classes rank,
    rank + world, ... with all their images."""
    batches = class_balanced_order(labels, per_class, batch_size, gen).split(batch_size)
    if world == 1:
        return list(batches)
    return [batch.view(-1, per_class)[rank::world].reshape(-1) for batch in batches]


class ClassBalancedBatches(torch.utils.data.Sampler):
    """Class-balanced batches of indices for a DataLoader (`batch_sampler=`), this rank's share; `set_epoch` as
    DistributedSampler."""

    def __init__(self, labels: Tensor, per_class: int, batch_size: int, seed: int, rank: int = 0,
                 world: int = 1) -> None:
        self.labels, self.per_class, self.batch_size = labels, per_class, batch_size
        self.seed, self.rank, self.world, self.epoch = seed, rank, world, 0
        self.batches = batches_per_epoch(labels, per_class, batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        from bench.data.augment import epoch_generator

        for batch in rank_batches(self.labels, self.per_class, self.batch_size, epoch_generator(self.seed, self.epoch),
                                  self.rank, self.world):
            yield batch.tolist()
