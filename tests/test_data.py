"""Datasets and the device-resident augmentation: real torchvision loaders on tiny real files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.config import DataConfig
from bench.data import DATASETS, Normalize, TensorSplit, TensorTrainLoader, build_loaders, crop_flip, load_digits
from bench.errors import UsageError
from tests.conftest import write_cifar, write_image_folder

CPU = torch.device("cpu")


def test_digits_fixed_stratified_split():
    train, test = load_digits(DataConfig(), True), load_digits(DataConfig(), False)
    assert train.images.shape == (1437, 3, 8, 8) and test.images.shape == (360, 3, 8, 8)
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255
    assert torch.equal(train.images[:, 0], train.images[:, 2])
    counts = torch.bincount(test.labels, minlength=10).float()
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 per class
    again = load_digits(DataConfig(), False)
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)


def windows(padded: torch.Tensor, h: int, w: int) -> list[torch.Tensor]:
    return [padded[:, y:y + h, x:x + w] for y in range(padded.shape[1] - h + 1) for x in range(padded.shape[2] - w + 1)]


def test_crop_flip_outputs_are_padded_windows_possibly_flipped():
    images = torch.randint(1, 256, (64, 3, 6, 6), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    out = crop_flip(images, pad=2, flip=True, gen=gen)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for img, pad_img in zip(out, padded):
        candidates = windows(pad_img, 6, 6)
        candidates += [c.flip(-1) for c in candidates]
        assert any(torch.equal(img, c) for c in candidates)


def test_crop_flip_identity_without_padding_or_flip():
    images = torch.randint(0, 256, (8, 3, 5, 5), dtype=torch.uint8)
    assert torch.equal(crop_flip(images, 0, False, torch.Generator().manual_seed(1)), images)


def test_crop_flip_distribution_matches_torchvision():
    """Offsets uniform over the 2p+1 positions per axis and flips with p=0.5, like RandomCrop + Flip."""
    n, pad = 18000, 4
    cols = (torch.arange(32) + 1).to(torch.uint8).expand(32, 32)  # pixel = its column + 1 (padding: 0)
    images = torch.stack([cols, cols.T], 0).repeat(n, 1, 1, 1)  # channel 1: its row + 1
    out = crop_flip(images, pad, True, torch.Generator().manual_seed(0)).long()
    flipped = out[:, 0, 16, 15] > out[:, 0, 16, 16]
    off_x = torch.where(flipped, out[:, 0, 16, 16] - 16, out[:, 0, 16, 16] - 17) + pad
    off_y = out[:, 1, 16, 16] - 17 + pad
    expected = n / (2 * pad + 1)
    for offsets in (off_x, off_y):
        counts = torch.bincount(offsets, minlength=2 * pad + 1).float()
        assert len(counts) == 2 * pad + 1
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 26.1  # chi-square with 8 degrees of freedom, p = 0.001
    assert abs(float(flipped.float().mean()) - 0.5) < 0.02
    steps = out[:, 0, 16, 5:28].diff(dim=1)  # columns that are never padding: +1 apart, -1 when flipped
    assert (steps[flipped] == -1).all() and (steps[~flipped] == 1).all()


def test_views_are_independent_and_epochs_replay_exactly():
    split = TensorSplit(torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8), torch.arange(50) % 10)
    spec = DATASETS.get("cifar10")
    loader = TensorTrainLoader(split, spec, 16, views=3, seed=0, device=CPU, channels_last=False)
    (views, target), *_ = list(loader.epoch(0))
    assert len(views) == 3 and views[0].shape == (16, 3, 8, 8)
    assert not torch.equal(views[0], views[1])
    again, _ = next(iter(loader.epoch(0)))
    assert all(torch.equal(a, b) for a, b in zip(views, again))
    other, other_target = next(iter(loader.epoch(1)))
    assert not torch.equal(target, other_target)
    assert sum(len(t) for _, t in loader.epoch(0)) == 50 and len(loader) == 4


def test_normalize_matches_torchvision():
    from torchvision.transforms import functional as TF

    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    ours = Normalize((0.5, 0.4, 0.3), (0.2, 0.25, 0.3), CPU, channels_last=True)(images)
    ref = TF.normalize(images.float() / 255, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    assert torch.allclose(ours, ref, atol=1e-6) and ours.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_through_torchvision_on_tiny_files(kind, tmp_path, skip_cifar_md5):
    write_cifar(tmp_path, kind, n_train=40, n_test=20)
    cfg = DataConfig(root=str(tmp_path), batch_size=8, eval_batch_size=8)
    train, test, spec = build_loaders(kind, cfg, views=2, seed=0, device=CPU, channels_last=False)
    assert spec.num_classes == (10 if kind == "cifar10" else 100)
    assert train.num_samples == 40 and train.store.shape == (40, 40, 40, 3)
    views, target = next(iter(train.epoch(0)))
    assert len(views) == 2 and views[0].shape == (8, 3, 32, 32)
    assert sum(len(y) for _, y in test) == 20


def test_cifar_pixels_keep_their_layout(tmp_path, skip_cifar_md5):
    import pickle

    write_cifar(tmp_path, "cifar10", n_train=5, n_test=5)
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes())
    test = DATASETS.get("cifar10").load(DataConfig(root=str(tmp_path)), False)
    expected = torch.from_numpy(np.asarray(raw["data"][0]).reshape(3, 32, 32))
    assert torch.equal(test.images[0], expected)


def test_missing_cifar_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(UsageError, match=r"cifar-100-python.*--download"):
        DATASETS.get("cifar100").load(DataConfig(root=str(tmp_path)), True)


def test_imagenet_image_folder_gives_views(tmp_path):
    write_image_folder(tmp_path, classes=3, per_class=4)
    cfg = DataConfig(root=str(tmp_path), batch_size=4, eval_batch_size=6, workers=0)
    train, test, spec = build_loaders("imagenet", cfg, views=2, seed=0, device=CPU, channels_last=True)
    views, target = next(iter(train.epoch(0)))
    assert len(views) == 2 and views[0].shape == (4, 3, 224, 224) and target.shape == (4,)
    x, y = next(iter(test))
    assert x.shape == (6, 3, 224, 224)


def test_missing_imagenet_is_one_clear_error(tmp_path):
    with pytest.raises(UsageError, match="ImageFolder tree"):
        DATASETS.get("imagenet").load(DataConfig(root=str(tmp_path)), True)


def test_ranks_take_disjoint_shares_of_one_permutation():
    split = TensorSplit(torch.arange(41, dtype=torch.uint8).view(41, 1, 1, 1).repeat(1, 3, 4, 4), torch.arange(41))
    spec = DATASETS.get("digits")
    shards = [TensorTrainLoader(split, spec, 8, views=1, seed=3, device=CPU, channels_last=False, rank=r, world=2)
              for r in range(2)]
    seen = [torch.cat([t for _, t in loader.epoch(0)]) for loader in shards]
    assert len(seen[0]) == len(seen[1]) == 20 and shards[0].batch_size == 4
    assert not set(seen[0].tolist()) & set(seen[1].tolist())
    single = torch.cat([t for _, t in TensorTrainLoader(split, spec, 8, 1, 3, CPU, False).epoch(0)])
    assert torch.equal(torch.stack([seen[0], seen[1]], 1).flatten(), single[:40])


def test_loader_batches_equal_torchvision_math_on_the_same_crops():
    """The loader's pre-normalised store gives exactly Normalize(crop_flip(raw)) for the same random draws,
    i.e. torchvision's RandomCrop(padding) -> Flip -> ToTensor -> Normalize with zero padding."""
    from bench.data import epoch_generator

    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    spec = DATASETS.get("cifar10")
    loader = TensorTrainLoader(TensorSplit(images, torch.arange(20)), spec, 8, 1, seed=5, device=CPU,
                               channels_last=False)
    (batch,), target = next(iter(loader.epoch(2)))
    gen = epoch_generator(5, 2)
    order = torch.randperm(20, generator=gen)[:8]
    expected = Normalize(spec.mean, spec.std, CPU, False)(crop_flip(images[order], spec.pad, True, gen))
    assert torch.equal(target, order) and torch.allclose(batch, expected, atol=1e-6)
