"""Datasets beyond CIFAR: image folders named on the command line, Tiny-ImageNet's own layout, SVHN and STL-10
through torchvision, cached statistics, and `data.image_size` with the up-front input-size check."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.cli import main
from bench.config import DataConfig, DatasetSource
from bench.data import FolderTrainLoader, TensorTrainLoader, build_loaders, cache_dir, dataset_spec

CPU = torch.device("cpu")
COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 230), (200, 200, 30)]


def coloured(label: int, size: int, rng) -> np.ndarray:
    """An image whose colour says its class, with noise."""
    base = np.array(COLOURS[label], dtype=np.int16)
    return np.clip(base + rng.integers(-40, 41, (size, size, 3)), 0, 255).astype(np.uint8)


def write_folder(root: Path, classes: int = 3, train: int = 80, val: int = 20, size: int = 16, ext: str = "png"):
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(coloured(c, size, rng)).save(folder / f"{i}.{ext}")
    return root


def write_tinyimagenet(root: Path, wnids=("n01", "n02", "n03"), train: int = 6, val: int = 4) -> Path:
    rng = np.random.default_rng(1)
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for c, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for i in range(train):
            Image.fromarray(coloured(c, 64, rng)).save(folder / f"{wnid}_{i}.JPEG", quality=95)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    lines, labels = [], []
    for i in range(val * len(wnids)):
        c = int(rng.integers(0, len(wnids)))
        Image.fromarray(coloured(c, 64, rng)).save(root / "val" / "images" / f"val_{i}.JPEG", quality=95)
        lines.append(f"val_{i}.JPEG\t{wnids[c]}\t0\t0\t63\t63")
        labels.append(c)
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root, labels


def test_image_folder_trains_with_pcl_and_is_labelled_by_its_name(tmp_path, capsys):
    root = write_folder(tmp_path / "my images")  # 300 PNGs, and a space in the path
    out = tmp_path / "sweep"
    assert main(["run", "--methods", "pcl", "--datasets", f"shapes={root}".replace("=", "=imagefolder:", 1),
                 "--backbones", "cifar_resnet8", "--seeds", "0", "--epochs", "1", "--out", str(out),
                 "--launcher", "inline", "--no-progress", "data.batch_size=32"]) == 0
    printed = capsys.readouterr().out
    assert "shapes / cifar_resnet8" in printed and "| PCL |" in printed
    run = out / "shapes" / "cifar_resnet8" / "pcl" / "seed0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done" and summary["dataset"] == "shapes" and summary["image_size"] == 16
    # mean/std computed from the training split, by hand here from the PNG files
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) / 255
                       for p in sorted((root / "train").rglob("*.png"))])
    assert np.allclose(summary["mean"], pixels.mean(axis=(0, 1, 2)), atol=1e-5)
    assert np.allclose(summary["std"], pixels.std(axis=(0, 1, 2)), atol=1e-5)
    assert list((cache_dir() / "stats").glob("*.json"))  # computed once, cached
    deployed = json.loads((run / "deployed.json").read_text())
    assert deployed["num_classes"] == 3 and deployed["input_size"] == [3, 16, 16]


def bad_tree(kind: str, root: Path) -> Path:
    write_folder(root, classes=2, train=3, val=2, size=8)
    if kind == "no_images":
        for p in root.rglob("*.png"):
            p.unlink()
    elif kind == "classes_differ":
        (root / "val" / "class_1").rename(root / "val" / "class_9")
    elif kind == "unreadable":
        (root / "train" / "class_0" / "1.png").write_bytes(b"not a png at all")
    elif kind == "no_train":
        (root / "train").rename(root / "training")
    elif kind == "tiny_images":
        Image.fromarray(np.zeros((1, 1, 3), dtype=np.uint8)).save(root / "train" / "class_1" / "2.png")
    elif kind == "empty_train_class":
        (root / "train" / "class_2").mkdir()
        (root / "val" / "class_2").mkdir()
        Image.fromarray(coloured(2, 8, np.random.default_rng(0))).save(root / "val" / "class_2" / "0.png")
    elif kind == "empty_val_class":
        for p in (root / "val" / "class_0").iterdir():
            p.unlink()
    elif kind == "truncated":
        path = root / "val" / "class_1" / "1.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # the header reads, the pixels do not
    return root


@pytest.mark.parametrize("kind, expected", [
    ("no_images", "no images under"), ("classes_differ", "class folders differ between train and val"),
    ("unreadable", "1.png is not a readable image"), ("no_train", "train/ not found"),
    ("tiny_images", "2.png is 1x1 pixels; images need at least 8x8"),
    ("empty_train_class", "class class_2 has no image in"), ("empty_val_class", "class class_0 has no image in"),
    ("truncated", "val/class_1/1.png is not a readable image (image file is truncated"),
])
def test_bad_image_folder_is_one_line_before_any_run(kind, expected, tmp_path, capsys):
    root = bad_tree(kind, tmp_path / "data")
    out = tmp_path / "sweep"
    assert main(["run", "--datasets", f"mine=imagefolder:{root}", "--methods", "vanilla", "--backbones",
                 "cifar_resnet8", "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not out.exists()


@pytest.mark.parametrize("value, expected", [
    ("32x64", "non-square sizes are not supported"), ("[32,64]", "one integer"), ("4", "from 8 to 1024"),
    ("big", "an integer from 8 to 1024"),
])
def test_bad_image_size_is_one_line(value, expected, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["run", "--datasets", "digits", "--methods", "vanilla", "--out", str(out),
                 f"data.image_size={value}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not out.exists()


@pytest.mark.parametrize("entry, expected", [
    ("mine=imgfolder:/x", "did you mean 'imagefolder'"), ("mine=imagefolder", "NAME=KIND:ROOT"),
    ("digits=imagefolder:/x", "taken by a registered dataset"),
])
def test_bad_dataset_entry_is_one_line(entry, expected, tmp_path, capsys):
    assert main(["run", "--datasets", entry, "--methods", "vanilla", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err


def test_tinyimagenet_layout_resident_and_streamed(tmp_path):
    root, val_labels = write_tinyimagenet(tmp_path / "tiny-imagenet-200")
    source = DatasetSource(kind="tinyimagenet", root=str(root))
    cfg = DataConfig(root=str(tmp_path), batch_size=6, eval_batch_size=4, workers=0)
    spec = dataset_spec("tiny", cfg, source)
    assert (spec.num_classes, spec.image_size, spec.pad) == (3, 64, 8)
    train, test, spec = build_loaders(spec, cfg, views=2, seed=0, device=CPU, channels_last=False)
    assert isinstance(train, TensorTrainLoader) and train.num_samples == 18
    assert torch.cat([y for _, y in test]).tolist() == val_labels  # val_annotations.txt, in file order
    # the colour of each test image says its class: the loader kept images and labels together
    for x, y in test:
        channel = (x * torch.tensor(spec.std).view(1, 3, 1, 1) + torch.tensor(spec.mean).view(1, 3, 1, 1)).mean((2, 3))
        assert channel.argmax(1).tolist() == y.tolist()
    streamed = DataConfig(root=str(tmp_path), batch_size=6, eval_batch_size=4, workers=0, resident_gb=0)
    train2, test2, _ = build_loaders(dataset_spec("tiny", streamed, source), streamed, views=2, seed=0, device=CPU,
                                     channels_last=False)
    assert isinstance(train2, FolderTrainLoader) and train2.num_samples == 18
    views, target = next(iter(train2.epoch(0)))
    assert len(views) == 2 and views[0].shape == (6, 3, 64, 64)
    assert torch.cat([y for _, y in test2]).tolist() == val_labels
    # the registered name reads <data-root>/tiny-imagenet-200
    registered = dataset_spec("tinyimagenet", cfg)
    assert len(registered.load(cfg, False).labels) == len(val_labels)


def test_svhn_and_stl10_through_torchvision_on_tiny_files(tmp_path, monkeypatch):
    import scipy.io
    import torchvision.datasets.stl10
    import torchvision.datasets.svhn

    for module in (torchvision.datasets.svhn, torchvision.datasets.stl10):
        monkeypatch.setattr(module, "check_integrity", lambda path, md5=None: os.path.isfile(path), raising=False)
    monkeypatch.setattr(torchvision.datasets.STL10, "_check_integrity", lambda self: True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 6)):  # SVHN's .mat: X [32, 32, 3, N], y in 1..10 (10 is digit 0)
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                                                          "y": np.arange(n).reshape(-1, 1) % 10 + 1})
    stl = tmp_path / "stl10_binary"
    stl.mkdir()
    for split, n in (("train", 10), ("test", 5)):  # STL-10's binary: uint8 N x 3 x 96 x 96 column-major, labels 1..10
        rng.integers(0, 256, n * 3 * 96 * 96, dtype=np.uint8).tofile(stl / f"{split}_X.bin")
        (np.arange(n, dtype=np.uint8) % 10 + 1).tofile(stl / f"{split}_y.bin")
    (stl / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    cfg = DataConfig(root=str(tmp_path), batch_size=4, eval_batch_size=4)
    svhn_train, svhn_test, svhn = build_loaders("svhn", cfg, views=1, seed=0, device=CPU, channels_last=False)
    assert svhn_train.num_samples == 12 and not svhn.flip and len(svhn.mean) == 3
    assert sorted(torch.cat([y for _, y in svhn_test]).tolist()) == [1, 2, 3, 4, 5, 6]
    stl_train, _, stl_spec = build_loaders("stl10", cfg, views=1, seed=0, device=CPU, channels_last=False)
    (views, _), *_ = list(stl_train.epoch(0))
    assert stl_train.num_samples == 10 and views[0].shape == (4, 3, 96, 96) and stl_spec.pad == 12
    resized = DataConfig(root=str(tmp_path), batch_size=4, eval_batch_size=4, image_size=32)
    small, _, small_spec = build_loaders("stl10", resized, views=1, seed=0, device=CPU, channels_last=False)
    assert small_spec.image_size == 32 and small_spec.pad == 4 and small.store.shape[1:] == (40, 40, 3)


def test_image_size_resizes_digits_once_and_scales_the_padding():
    cfg = DataConfig(batch_size=16, eval_batch_size=64, image_size=16)
    train, test, spec = build_loaders("digits", cfg, views=1, seed=0, device=CPU, channels_last=False)
    assert spec.image_size == 16 and spec.pad == 2 and train.store.shape[1:] == (20, 20, 3)
    x, _ = next(iter(test))
    assert x.shape[1:] == (3, 16, 16)


def test_backbone_too_big_for_the_images_is_refused_up_front_then_runs_resized(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["run", "--methods", "vanilla", "--datasets", "digits", "--backbones", "convnext_atto", "--seeds", "0",
            "--epochs", "1", "--out", str(out), "--launcher", "inline", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs at least 32x32" in err and "data.image_size=32" in err
    assert not out.exists()
    assert main([*args, "data.image_size=32"]) == 0
    summary = json.loads((out / "digits" / "convnext_atto" / "vanilla" / "seed0" / "summary.json").read_text())
    assert summary["status"] == "done" and summary["image_size"] == 32


def test_deployed_json_describes_the_eval_transform_so_timm_reproduces_the_run(tmp_path):
    """PNGs of another size than the model's input: timm's create_transform(resolve_data_config(pretrained_cfg)) on
    the original files gives the logits the run evaluated (so its error), and another interpolation does not."""
    import safetensors.torch
    import timm
    import timm.data

    import backbones  # noqa: F401  (registers cifar_* into timm)
    from bench.data import build_eval_loader, run_dataset, with_statistics
    from bench.store import records

    root = tmp_path / "noise"
    rng = np.random.default_rng(3)
    for split in ("train", "val"):
        for c in range(3):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(8):
                Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / split / f"c{c}/{i}.png")
    out = tmp_path / "sweep"
    assert main(["run", "--methods", "vanilla", "--datasets", f"noise=imagefolder:{root}", "--backbones",
                 "cifar_resnet8", "--seeds", "0", "--epochs", "1", "--out", str(out), "--launcher", "inline",
                 "--no-progress", "data.image_size=16", "data.batch_size=8"]) == 0
    run = out / "noise" / "cifar_resnet8" / "vanilla" / "seed0"
    meta = json.loads((run / "deployed.json").read_text())
    cfg = meta["pretrained_cfg"]
    assert cfg["input_size"] == [3, 16, 16] and cfg["interpolation"] == "bilinear" and cfg["crop_pct"] == 1.0
    model = timm.create_model(meta["backbone"], **meta["timm_kwargs"]).eval()
    model.load_state_dict(safetensors.torch.load_file(run / "deployed.safetensors"))
    files = sorted((root / "val").rglob("*.png"))
    labels = torch.tensor([int(p.parent.name[1:]) for p in files])

    def logits(interpolation: str) -> torch.Tensor:
        transform = timm.data.create_transform(**timm.data.resolve_data_config(
            pretrained_cfg={**cfg, "interpolation": interpolation}))
        with torch.no_grad():
            return model(torch.stack([transform(Image.open(p).convert("RGB")) for p in files]))

    spec = with_statistics(run_dataset(records.load_config(run)), records.load_config(run).data)
    with torch.no_grad():
        harness = torch.cat([model(x) for x, _ in build_eval_loader(spec, records.load_config(run).data, CPU,
                                                                        channels_last=False)])
    assert torch.allclose(logits("bilinear"), harness, atol=1e-4)
    error = 100.0 * float((logits("bilinear").argmax(1) != labels).float().mean())
    assert error == pytest.approx(meta["top1_error"])
    assert not torch.allclose(logits("bicubic"), harness, atol=1e-3)
