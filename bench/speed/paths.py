"""`bench speed`'s two training paths: the harness as configured and a reference-style path (torchvision transforms in a
DataLoader, fp32, eager), with their data pipelines."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from bench.data import DATASETS, MultiView, TensorSplit, TensorTrainLoader
from methods.base import Progress, build_method

COLUMNS = ["method", "backbone", "device", "batch_size", "harness_img_s", "reference_img_s", "speedup",
           "harness_data_img_s", "reference_data_img_s", "data_speedup", "harness_peak_mb", "reference_peak_mb",
           "train_gflop_per_img", "harness_tflop_s", "amp", "channels_last", "optimizer_impl", "cuda_graphs",
           "peak_tflop_s"]


class PILDataset(torch.utils.data.Dataset):
    """uint8 HWC images served as PIL images, the way torchvision's CIFAR datasets serve them."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


class RoundSampler(torch.utils.data.Sampler):
    """Random batches of indices, `batches` of them per pass: each timed round is one pass, so the reference
    path's workers are handed exactly the batches that round consumes (no work left over to run in the
    other path's round, no batches prefetched during it)."""

    def __init__(self, n: int, batch_size: int, batches: int, seed: int) -> None:
        self.n, self.batch_size, self.batches = n, batch_size, batches
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        for _ in range(self.batches):
            yield torch.randint(0, self.n, (self.batch_size,), generator=self.gen).tolist()


def reference_loader(images: np.ndarray, labels: np.ndarray, views: int, batch_size: int, workers: int,
                     batches_per_pass: int, seed: int = 0):
    """torchvision's CIFAR transforms on PIL images in a DataLoader (persistent workers, default prefetch)."""
    from torchvision import transforms

    spec = DATASETS.get("cifar100")
    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)])
    return torch.utils.data.DataLoader(
        PILDataset(images, labels, MultiView(tf, views)), num_workers=workers, persistent_workers=workers > 0,
        batch_sampler=RoundSampler(len(labels), batch_size, batches_per_pass, seed))


def _forever(make_epoch):
    epoch = 0
    while True:
        yield from make_epoch(epoch)
        epoch += 1


@dataclass
class TrainPath:
    """One training path; `round_batches()` gives the batches of the next timed round."""

    name: str
    method: torch.nn.Module
    optimizer: torch.optim.Optimizer
    round_batches: Callable[[], Iterator]
    autocast: Callable
    device: torch.device
    cuda_graphs: bool = False
    branch_streams: bool = False
    step: int = 0

    def __post_init__(self) -> None:
        from bench.train.compute import make_step

        self.step_fn = make_step(self.method, self.optimizer, self.autocast, self.device, self.cuda_graphs,
                                 self.branch_streams)

    def train_step(self, batches: Iterator) -> None:
        views, target = next(batches)
        views = [v.to(self.device, non_blocking=True) for v in views]
        target = target.to(self.device, non_blocking=True)
        self.step_fn(views, target, Progress(100.0, self.step))
        self.step += 1
        self.method.after_step(self.step)

    def train_round(self, steps: int) -> float:
        """Seconds for `steps` steps, data included, the device synchronised at both ends."""
        _sync(self.device)
        t0 = time.perf_counter()
        batches = self.round_batches()
        for _ in range(steps):
            self.train_step(batches)
        _sync(self.device)
        return time.perf_counter() - t0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _params(method: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in method.parameters() if p.requires_grad]


def train_flops_per_image(method: torch.nn.Module, views: list[torch.Tensor], target: torch.Tensor) -> float:
    """FLOPs of one training step (forward + backward) per image (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        sum(method(views, target, Progress(100.0, 0)).values()).backward()
    method.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(target)


def harness_data_rate(batches: Iterator, device: torch.device, batch_size: int, data_batches: int,
                      repeats: int = 5) -> float:
    """Images/s of the harness's batches alone (median of `repeats` passes of `data_batches`)."""
    rates = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(data_batches):
            next(batches)
        _sync(device)
        rates.append(data_batches * batch_size / (time.perf_counter() - t0))
    return statistics.median(rates)


def reference_data_rate(loader: torch.utils.data.DataLoader, device: torch.device, batch_size: int,
                        data_batches: int, repeats: int = 3) -> float:
    """Images/s of the reference DataLoader alone (its workers already started): median of `repeats` passes of
    `data_batches`, each timed from handing out the work to its last batch, so no pass gets prefetched batches
    for free."""
    sampler = loader.batch_sampler
    per_round, sampler.batches = sampler.batches, data_batches
    rates = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for vs, _target in loader:
            vs = [v.to(device) for v in vs]
        _sync(device)
        rates.append(data_batches * batch_size / (time.perf_counter() - t0))
    sampler.batches = per_round
    return statistics.median(rates)


def synthetic_cifar(batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random CIFAR-size uint8 images (HWC) and labels of 100 classes: 16 batches' worth."""
    rng = np.random.default_rng(seed)
    n = batch_size * 16
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 100, n)


def harness_path(method_name: str, backbone: str, device: torch.device, batch_size: int, amp: str,
                 channels_last: bool, optimizer: str, cuda_graphs: str, seed: int,
                 data: tuple[np.ndarray, np.ndarray], branch_streams: str = "off",
                 name: str = "harness") -> tuple[TrainPath, Iterator]:
    """The harness's training path as the trainer builds it (device-resident data, AMP, memory format, SGD
    implementation, CUDA graphs, branch streams); returns it and its endless batch iterator."""
    from backbones import create_backbone
    from bench.config import OptimConfig
    from bench.train.compute import (
        autocast_context,
        autocast_dtype,
        build_optimizer,
        optimizer_impl,
        use_branch_streams,
        use_cuda_graphs,
    )

    amp_dtype = autocast_dtype(amp, device)
    images, labels = data
    torch.manual_seed(seed)
    method = build_method(method_name, lambda: create_backbone(backbone, 100), 100, {}).to(
        device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    split = TensorSplit(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels))
    loader = TensorTrainLoader(split, DATASETS.get("cifar100"), batch_size, method.views, seed, device, channels_last)
    batches = _forever(loader.epoch)
    optim = build_optimizer(_params(method), OptimConfig(), optimizer_impl(optimizer, device))

    def autocast():
        return autocast_context(device, amp_dtype)

    graphs = use_cuda_graphs(cuda_graphs, device) and type(method).graphable  # as the trainer decides
    streams = use_branch_streams(branch_streams, device)
    return TrainPath(name, method.train(), optim, lambda: batches, autocast, device, graphs, streams), batches
