"""Shared fixtures: tiny datasets in the real on-disk formats, and fixed-logit stand-ins for branches."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import backbones  # noqa: F401  (registers the CIFAR backbones)
import methods  # noqa: F401  (registers the methods)


def write_cifar(root: Path, kind: str = "cifar10", n_train: int = 40, n_test: int = 20, seed: int = 0) -> Path:
    """Tiny CIFAR files in CIFAR's own python pickle format (what torchvision reads)."""
    rng = np.random.default_rng(seed)
    classes = 10 if kind == "cifar10" else 100
    label_key = "labels" if kind == "cifar10" else "fine_labels"

    def batch(n: int) -> dict:
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                label_key: rng.integers(0, classes, n).tolist(), "filenames": [f"{i}.png" for i in range(n)]}

    if kind == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        per = n_train // 5
        for i in range(1, 6):
            (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per)))
        (folder / "test_batch").write_bytes(pickle.dumps(batch(n_test)))
        (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        (folder / "train").write_bytes(pickle.dumps(batch(n_train)))
        (folder / "test").write_bytes(pickle.dumps(batch(n_test)))
        (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    return root


@pytest.fixture
def skip_cifar_md5(monkeypatch):
    """torchvision checks the real files' md5; tiny test files cannot match it: check existence only."""
    import os

    import torchvision.datasets.cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))


def exported_top1_error(weights: Path, folder: Path) -> float:
    """The top-1 error (%) on the run's test split of what `bench export` wrote to `weights` (safetensors beside its
    .json), loaded strictly into the plain timm model its json names."""
    import json

    import safetensors.torch
    import timm

    from bench.data import build_eval_loader, run_dataset, with_statistics
    from bench.store import records

    meta = json.loads(weights.with_suffix(".json").read_text())
    model = timm.create_model(meta["backbone"], **meta["timm_kwargs"]).eval()
    model.load_state_dict(safetensors.torch.load_file(weights))
    config = records.load_config(folder)
    spec = with_statistics(run_dataset(config), config.data)
    wrong = n = 0
    with torch.no_grad():
        for x, y in build_eval_loader(spec, config.data, torch.device("cpu"), channels_last=False):
            wrong += int((model(x).argmax(1) != y).sum())
            n += len(y)
    return 100.0 * wrong / n


def write_image_folder(root: Path, classes: int = 3, per_class: int = 4, size: int = 40) -> Path:
    """A tiny ImageFolder tree of real PNG files: root/{train,val}/<class>/<i>.png."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


class Interrupt(BaseException):
    """Stands for a kill at an epoch boundary (a BaseException, as KeyboardInterrupt: no failed summary)."""


def train_until_interrupted(cfg, folder: Path, epoch: int) -> None:
    """Train `cfg` into `folder` and stop it as the (0-based) `epoch` begins, leaving its checkpoint behind."""
    from bench.train.trainer import Trainer

    trainer = Trainer(cfg, folder, progress_bar=False)
    original = trainer.train_epoch

    def stop(e, bar):
        if e == epoch:
            raise Interrupt
        return original(e, bar)

    trainer.train_epoch = stop
    with pytest.raises(Interrupt):
        trainer.run()


class FixedBranch(nn.Module):
    """Returns fixed (logits, feature) whatever the input, as trainable parameters."""

    def __init__(self, logits: torch.Tensor, features: torch.Tensor | None = None) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())
        self.features = nn.Parameter(features.clone() if features is not None else torch.zeros(len(logits), 4))

    def forward(self, x: torch.Tensor):
        return self.logits, self.features


class FixedNet(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Dataset statistics and decoded image folders are cached under $OKD_BENCH_CACHE: a fresh folder per test
    session (inherited by every `bench` subprocess), never the user's ~/.cache."""
    import os

    os.environ["OKD_BENCH_CACHE"] = str(tmp_path_factory.mktemp("okd-bench-cache"))
