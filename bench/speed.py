"""`bench speed`: the harness's training path against a reference-style path, side by side in one process.

Reference path (what older online-KD code bases do): torchvision PIL transforms (RandomCrop(32, 4),
RandomHorizontalFlip, ToTensor, Normalize; m independent views for PCL) in a DataLoader, fp32, NCHW, one
trunk call per view. Harness path: the split held on the device as uint8 and augmented there, batched;
the config's AMP and channels_last; PCL's views batched through the trunk (per-view BatchNorm). Both train
the same method on the same synthetic CIFAR-size data (random 32x32 images, 100 classes); after warm-up
they alternate in rounds, so drift in machine load hits both.
"""

from __future__ import annotations

import contextlib
import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.data import DATASETS, MultiView, TensorSplit, TensorTrainLoader
from bench.errors import UsageError
from methods.base import Progress, build_method

COLUMNS = ["method", "backbone", "device", "batch_size", "harness_img_s", "reference_img_s", "speedup",
           "harness_data_img_s", "reference_data_img_s", "data_speedup", "harness_peak_mb", "reference_peak_mb",
           "train_gflop_per_img", "harness_tflop_s", "amp", "channels_last"]


class PILDataset(torch.utils.data.Dataset):
    """uint8 HWC images served as PIL images, the way torchvision's CIFAR datasets serve them."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def reference_loader(images: np.ndarray, labels: np.ndarray, views: int, batch_size: int, workers: int):
    from torchvision import transforms

    spec = DATASETS.get("cifar100")
    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)])
    return torch.utils.data.DataLoader(PILDataset(images, labels, MultiView(tf, views)), batch_size=batch_size,
                                       shuffle=True, num_workers=workers, drop_last=True,
                                       persistent_workers=workers > 0)


def _forever(make_epoch):
    epoch = 0
    while True:
        yield from make_epoch(epoch)
        epoch += 1


@dataclass
class TrainPath:
    name: str
    method: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batches: object
    autocast: object
    device: torch.device
    step: int = 0

    def train_step(self) -> None:
        views, target = next(self.batches)
        views = [v.to(self.device, non_blocking=True) for v in views]
        target = target.to(self.device, non_blocking=True)
        with self.autocast():
            terms = self.method(views, target, Progress(100.0, self.step))
        loss = sum(terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        self.method.after_step(self.step)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _optimizer(method: torch.nn.Module, device: torch.device, fast: bool) -> torch.optim.Optimizer:
    params = [p for p in method.parameters() if p.requires_grad]
    kwargs = {"fused": True} if fast and device.type == "cuda" else {"foreach": fast or None}
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, **kwargs)


def train_flops_per_image(method: torch.nn.Module, views: list[torch.Tensor], target: torch.Tensor) -> float:
    """FLOPs of one training step (forward + backward) per image (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        sum(method(views, target, Progress(100.0, 0)).values()).backward()
    method.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(target)


def measure(method_name: str, backbone: str, device: torch.device, batch_size: int = 128, amp: str = "auto",
            channels_last: bool = True, rounds: int = 3, steps: int = 4, warmup: int = 2, workers: int = 2,
            seed: int = 0, data_batches: int = 16) -> dict:
    from backbones import create_backbone
    from bench.train import autocast_context, autocast_dtype

    amp_dtype = autocast_dtype(amp, device)
    rng = np.random.default_rng(seed)
    n = batch_size * 16
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 100, n)
    spec = DATASETS.get("cifar100")

    def factory():
        return create_backbone(backbone, 100)

    torch.manual_seed(seed)
    harness_method = build_method(method_name, factory, 100, {}).to(
        device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.manual_seed(seed)
    ref_opts = {"batch_views": "off"} if method_name == "pcl" else {}
    reference_method = build_method(method_name, factory, 100, ref_opts).to(device)
    views = harness_method.views
    split = TensorSplit(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels))
    harness_loader = TensorTrainLoader(split, spec, batch_size, views, seed, device, channels_last)
    ref_loader = reference_loader(images, labels, views, batch_size, workers)

    def harness_autocast():
        return autocast_context(device, amp_dtype)

    def reference_epoch(epoch: int):
        return iter(ref_loader)

    paths = [
        TrainPath("harness", harness_method.train(), _optimizer(harness_method, device, True),
              _forever(harness_loader.epoch), harness_autocast, device),
        TrainPath("reference", reference_method.train(), _optimizer(reference_method, device, False),
              _forever(reference_epoch), contextlib.nullcontext, device),
    ]
    seconds = {p.name: 0.0 for p in paths}
    peak = {p.name: None for p in paths}
    for p in paths:
        for _ in range(warmup):
            p.train_step()
    _sync(device)
    for _ in range(rounds):
        for p in paths:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                p.train_step()
            _sync(device)
            seconds[p.name] += time.perf_counter() - t0
            if device.type == "cuda":
                peak[p.name] = max(peak[p.name] or 0, torch.cuda.max_memory_allocated(device) / 2**20)
    img_s = {name: rounds * steps * batch_size / s for name, s in seconds.items()}

    data = {}  # the data pipelines alone: batches on the device, after the prefetched ones are drained
    sources = {"harness": _forever(harness_loader.epoch), "reference": _forever(reference_epoch)}
    for name, batches in sources.items():
        for _ in range(2 + 2 * workers):
            next(batches)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(data_batches):
            vs, target = next(batches)
            vs = [v.to(device) for v in vs]
        _sync(device)
        data[name] = data_batches * batch_size / (time.perf_counter() - t0)

    x, target = next(_forever(harness_loader.epoch))
    with harness_autocast():
        flops = train_flops_per_image(harness_method, x, target)
    return {
        "method": method_name, "backbone": backbone, "device": str(device), "batch_size": batch_size,
        "harness_img_s": img_s["harness"], "reference_img_s": img_s["reference"],
        "speedup": img_s["harness"] / img_s["reference"],
        "harness_data_img_s": data["harness"], "reference_data_img_s": data["reference"],
        "data_speedup": data["harness"] / data["reference"],
        "harness_peak_mb": peak["harness"], "reference_peak_mb": peak["reference"],
        "train_gflop_per_img": flops / 1e9, "harness_tflop_s": flops * img_s["harness"] / 1e12,
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "off", "channels_last": channels_last,
    }


def run_speed(methods: list[str], backbones: list[str], device_name: str, batch_size: int, amp: str,
              channels_last: bool, csv_path: Path | None, rounds: int, steps: int, workers: int) -> int:
    from bench.train import resolve_device

    device = resolve_device(device_name)
    if batch_size < 2:
        raise UsageError(f"--batch-size must be at least 2, got {batch_size}")
    rows = []
    header = (f"{'method':<8} {'backbone':<16} {'harness img/s':>13} {'reference img/s':>15} {'speedup':>7} "
              f"{'data x':>7} {'GFLOP/img':>9} {'TFLOP/s':>8} {'peak MB (h/r)':>14}")
    print(f"device: {device} ({torch.get_num_threads()} threads), batch {batch_size}, rounds {rounds} x {steps} steps")
    print(header)
    for backbone in backbones:
        for method in methods:
            row = measure(method, backbone, device, batch_size, amp, channels_last, rounds, steps, workers=workers)
            rows.append(row)
            mem = ("-" if row["harness_peak_mb"] is None
                   else f"{row['harness_peak_mb']:.0f}/{row['reference_peak_mb']:.0f}")
            print(f"{method:<8} {backbone:<16} {row['harness_img_s']:>13.0f} {row['reference_img_s']:>15.0f} "
                  f"{row['speedup']:>6.2f}x {row['data_speedup']:>6.1f}x {row['train_gflop_per_img']:>9.3f} "
                  f"{row['harness_tflop_s']:>8.3f} {mem:>14}", flush=True)
    if csv_path:
        from bench import runs

        def write(f):
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

        runs.atomic_write(Path(csv_path), write)
        print(f"written to {csv_path}")
    return 0
