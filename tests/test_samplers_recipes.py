"""Class-balanced batches and per-view augmentation recipes (bench.data.samplers, bench.data.recipes)."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from bench.cli import main
from bench.data import (
    DATASETS,
    FolderTrainLoader,
    TensorSplit,
    TensorTrainLoader,
    build_loaders,
    class_balanced_order,
    dataset_spec,
    epoch_generator,
    load_digits,
    parse_recipe,
)
from bench.data.recipes import RANDAUGMENT_OPS, _randaugment_op, apply_extras, cutout, randaugment, rotate
from bench.errors import UsageError
from bench.store import runs
from tests.conftest import write_image_folder

CPU = torch.device("cpu")


def digits_loader(**kwargs) -> TensorTrainLoader:
    spec = DATASETS.get("digits")
    return TensorTrainLoader(load_digits(None, True), spec, kwargs.pop("batch_size", 40), kwargs.pop("views", 1), 3,
                             CPU, False, **kwargs)


def check_balanced(labels: torch.Tensor, k: int, classes: int) -> None:
    counts = Counter(labels.tolist())
    assert len(counts) == classes and set(counts.values()) == {k}, counts


# ---------------------------------------------------------------------------------------------
# class-balanced batches


def test_every_class_balanced_batch_holds_k_images_of_each_of_its_classes_and_no_image_twice():
    loader = digits_loader(sampler="class_balanced", per_class=4)  # 40 = 10 classes x 4
    for epoch in (0, 1):
        order = loader.order(epoch_generator(3, epoch))
        assert len(order) == len(set(order.tolist())) == len(loader) * 40  # each image at most once
        batches = list(loader.epoch(epoch))
        assert len(batches) == len(loader) == loader.num_samples // 40
        for (_, target), idx in zip(batches, order.split(40)):
            check_balanced(target, 4, 10)
            assert torch.equal(target, loader.labels[idx])


def test_class_balanced_batches_with_uneven_classes_and_fewer_classes_per_batch():
    labels = torch.tensor([c for c, n in enumerate([3, 9, 20, 5, 12, 2]) for _ in range(n)])
    for epoch in range(3):
        order = class_balanced_order(labels, 2, 6, epoch_generator(0, epoch))
        assert len(order) == len(set(order.tolist()))
        for batch in order.split(6):
            check_balanced(labels[batch], 2, 3)
        # as many batches as the counts allow: pairs per class 1, 4, 10, 2, 6, 1; R batches of 3 distinct classes
        # need sum_c min(pairs_c, R) >= 3R, which holds up to R = 7 (21 >= 21) and not at 8 (22 < 24)
        assert len(order) // 6 == 7


def test_class_balanced_batches_replay_after_a_resume_and_change_with_the_epoch():
    first = [t for _, t in digits_loader(sampler="class_balanced", per_class=4).epoch(5)]
    again = [t for _, t in digits_loader(sampler="class_balanced", per_class=4).epoch(5)]  # a new process
    other = [t for _, t in digits_loader(sampler="class_balanced", per_class=4).epoch(6)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_two_ranks_share_each_class_balanced_batch_by_classes():
    ranks = [digits_loader(sampler="class_balanced", per_class=4, rank=r, world=2) for r in (0, 1)]
    whole = digits_loader(sampler="class_balanced", per_class=4)
    for (_, t0), (_, t1), (_, t) in zip(ranks[0].epoch(0), ranks[1].epoch(0), whole.epoch(0)):
        check_balanced(t0, 4, 5)
        check_balanced(t1, 4, 5)
        assert not set(t0.tolist()) & set(t1.tolist())
        assert sorted(torch.cat([t0, t1]).tolist()) == sorted(t.tolist())


def test_streamed_image_folders_take_class_balanced_batches_too(tmp_path):
    root = write_image_folder(tmp_path / "images", classes=4, per_class=6, size=16)
    cfg = dataclasses.replace(_data_cfg(), sampler="class_balanced", per_class=3, batch_size=6, workers=0,
                              resident_gb=0.0)
    from bench.config import DatasetSource

    spec = dataset_spec("tiny", cfg, DatasetSource(kind="imagefolder", root=str(root)))
    train, _, _ = build_loaders(spec, cfg, 1, 0, CPU, False)
    assert isinstance(train, FolderTrainLoader)
    first = [t for _, t in train.epoch(2)]
    assert len(first) == len(train) == 4  # 24 images: 8 groups of 3, two classes per batch
    for target in first:
        check_balanced(target, 3, 2)
    again = [t for _, t in build_loaders(spec, cfg, 1, 0, CPU, False)[0].epoch(2)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def _data_cfg():
    from bench.config import DataConfig

    return DataConfig()


def test_a_class_balanced_run_resumes_to_the_uninterrupted_result(tmp_path):
    from bench.config import SweepConfig, from_dict
    from bench.sweep.settings import load_preset, run_config
    from bench.train.trainer import train_run
    from tests.conftest import train_until_interrupted

    sweep = from_dict(SweepConfig, load_preset("demo"))
    sweep.epochs = 2
    sweep.data.sampler, sweep.data.per_class, sweep.data.batch_size = "class_balanced", 8, 64
    cfg = run_config(sweep, "mcl", "cifar_resnet8", "digits", 0, {})
    train_until_interrupted(cfg, tmp_path / "cut", epoch=1)
    resumed = train_run(cfg, tmp_path / "cut", progress_bar=False)
    clean = train_run(cfg, tmp_path / "clean", progress_bar=False)
    assert resumed["resumes"][0]["epoch"] == 1
    assert resumed["final"] == clean["final"]
    history = [json.loads(line) for line in (tmp_path / "clean" / runs.METRICS).read_text().splitlines()]
    assert history[-1]["step"] == 2 * 22  # 1,437 digits: 22 batches of 8 classes x 8 images per epoch


# ---------------------------------------------------------------------------------------------
# augmentation recipes


def test_rotation_by_90_degrees_of_a_known_image():
    image = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    out = rotate(image, torch.tensor([90.0, -90.0]), torch.zeros(3))
    assert torch.equal(out[0], torch.rot90(image[0], 1, dims=(1, 2)))  # counter-clockwise, as torchvision
    assert torch.equal(out[1], torch.rot90(image[1], -1, dims=(1, 2)))
    odd = torch.rand(1, 3, 6, 9)
    assert torch.equal(rotate(odd, torch.tensor([20.0]), torch.zeros(3)), TF.rotate(odd, 20.0))


def test_cutout_square_at_a_fixed_position():
    x = torch.ones(2, 3, 8, 8)
    out = cutout(x, 4, torch.tensor([3, 0]), torch.tensor([5, 7]))
    expected0 = torch.ones(8, 8)
    expected0[1:5, 3:7] = 0  # centre (3, 5): rows 1..4, columns 3..6
    expected1 = torch.ones(8, 8)
    expected1[0:2, 5:8] = 0  # centre (0, 7): clipped at the top and right
    assert torch.equal(out[0, 0], expected0) and torch.equal(out[0, 2], expected0)
    assert torch.equal(out[1, 1], expected1)
    per_channel = cutout(x, 4, torch.tensor([3, 0]), torch.tensor([5, 7]), torch.tensor([-1.0, -2.0, -3.0]))
    assert torch.equal(per_channel[0, 2], torch.where(expected0 == 0, -3.0, 1.0))


def test_recipes_parse_with_defaults_and_name_a_close_match():
    recipe = parse_recipe("crop+flip+rotate:15+cutout+randaugment:3:7")
    assert (recipe.crop, recipe.flip) == (True, True)
    assert recipe.extras == (("rotate", (15,)), ("cutout", ()), ("randaugment", (3, 7)))
    with pytest.raises(UsageError, match="did you mean 'rotate'"):
        parse_recipe("crop+rotat")
    with pytest.raises(UsageError, match="magnitude is 0..30"):
        parse_recipe("randaugment:2:31")


def test_each_view_goes_through_its_own_recipe_on_the_device():
    spec = DATASETS.get("digits")
    split = load_digits(None, True)
    recipes = [parse_recipe(t) for t in ("crop+flip", "flip", "cutout:16", "randaugment")]
    loader = TensorTrainLoader(split, spec, 16, 4, 0, CPU, False, recipes=recipes)
    views, target = next(loader.epoch(0))
    idx = loader.order(epoch_generator(0, 0))[:16]
    plain = loader.normalize(split.images[idx])
    assert torch.equal(views[1], plain)  # digits do not flip: neither crop nor flip leaves the image as it is
    black = loader.normalize(torch.zeros_like(split.images[idx]))
    assert torch.equal(views[2], black)  # a 16-px square over 8x8 images: all cut out, to black
    assert views[0].shape == views[3].shape == plain.shape and not torch.equal(views[3], plain)


def test_the_default_recipe_is_the_common_crop_and_flip():
    spec = DATASETS.get("cifar10")
    split = TensorSplit(torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8), torch.arange(64) % 10)
    default = TensorTrainLoader(split, spec, 32, 2, 0, CPU, False)
    explicit = TensorTrainLoader(split, spec, 32, 2, 0, CPU, False, recipes=[parse_recipe("crop+flip")] * 2)
    for (a, _), (b, _) in zip(default.epoch(1), explicit.epoch(1)):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_every_randaugment_op_keeps_images_in_range():
    x01 = torch.rand(4, 3, 16, 16)
    for op in RANDAUGMENT_OPS:
        for signed in (False, True):
            out = _randaugment_op(x01.clone(), op, 9, signed)
            assert out.shape == x01.shape and out.min() >= 0 and out.max() <= 1, op
    mean, std = torch.tensor([0.5] * 3), torch.tensor([0.25] * 3)
    x = (x01 - 0.5) / 0.25
    a = randaugment(x, 2, 9, mean, std, torch.Generator().manual_seed(1))
    b = randaugment(x, 2, 9, mean, std, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, x)
    rotated = apply_extras(x, parse_recipe("rotate:0"), mean, std, torch.Generator())
    assert torch.equal(rotated, x)


def test_bad_sampler_and_recipe_settings_are_one_line_before_any_run(tmp_path, capsys):
    args = ["run", "--methods", "mcl", "--datasets", "digits", "--backbones", "cifar_resnet8", "--seeds", "0",
            "--epochs", "1", "--out", str(tmp_path / "out"), "--launcher", "inline", "--no-progress"]
    for extra, message in ((["data.sampler=class_balanced", "data.per_class=1", "data.batch_size=8"],
                            "at least 2 images of a class"),
                           (["data.sampler=class_balanced", "data.batch_size=30", "data.per_class=4"],
                            "not divisible"),
                           (["data.view_augment=[crop+flipp]"], "did you mean 'flip'")):
        assert main([*args, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_streamed_views_go_through_their_recipes_as_torchvision_transforms(tmp_path):
    from PIL import Image

    from bench.config import DatasetSource
    from bench.data import torchvision_transform

    spec = dataset_spec("cifar10", _data_cfg())
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    torch.manual_seed(0)
    out = torchvision_transform(parse_recipe("crop+flip+rotate+cutout:8+randaugment"), spec, 32)(white)
    assert out.shape == (3, 32, 32)
    black = torch.tensor([-m / s for m, s in zip(spec.mean, spec.std)]).view(3, 1, 1)
    assert int(torch.isclose(out, black.expand_as(out)).all(0).sum()) >= 16  # the Cutout square (or its quarter)
    root = write_image_folder(tmp_path / "images", classes=2, per_class=4, size=16)
    cfg = dataclasses.replace(_data_cfg(), batch_size=4, workers=0, resident_gb=0.0,
                              view_augment=["crop+flip", "cutout:32"])
    folder_spec = dataset_spec("tiny", cfg, DatasetSource(kind="imagefolder", root=str(root)))
    train, _, folder_spec = build_loaders(folder_spec, cfg, 2, 0, CPU, False)
    views, _ = next(train.epoch(0))
    assert isinstance(train, FolderTrainLoader) and len(views) == 2
    black = torch.tensor([-m / s for m, s in zip(folder_spec.mean, folder_spec.std)]).view(1, 3, 1, 1)
    assert torch.allclose(views[1], black.expand_as(views[1])) and not torch.equal(views[0], views[1])
