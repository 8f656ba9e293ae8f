"""`bench speed`: both paths timed side by side in one process, packed runs, the paper table's GPU-hours, printed and
written as CSV."""

from __future__ import annotations

import contextlib
import csv
import statistics
import time
from pathlib import Path

import torch

from bench.errors import UsageError
from bench.speed.paths import (
    COLUMNS,
    TrainPath,
    _params,
    harness_data_rate,
    harness_path,
    reference_data_rate,
    reference_loader,
    synthetic_cifar,
    train_flops_per_image,
)
from methods.base import build_method


def measure(method_name: str, backbone: str, device: torch.device, batch_size: int = 128, amp: str = "auto",
            channels_last: bool = True, optimizer: str = "auto", rounds: int = 3, steps: int = 4, warmup: int = 2,
            workers: int = 2, seed: int = 0, data_batches: int = 24, cuda_graphs: str = "auto",
            branch_streams: str = "off") -> dict:
    """Images/s of the harness and the reference-style path (and, with `branch_streams` on, the harness with its
    branches on concurrent CUDA streams), alternating in rounds after warm-up; data rates, FLOPs, peak memory."""
    from backbones import create_backbone
    from bench.config import OptimConfig
    from bench.train.compute import amp_name, autocast_dtype, optimizer_impl

    amp_dtype = autocast_dtype(amp, device)
    optim, impl = OptimConfig(), optimizer_impl(optimizer, device)
    images, labels = synthetic_cifar(batch_size, seed)
    harness, harness_batches = harness_path(method_name, backbone, device, batch_size, amp, channels_last, optimizer,
                                            cuda_graphs, seed, (images, labels))
    harness_method, harness_autocast = harness.method, harness.autocast
    torch.manual_seed(seed)
    ref_opts = {"batch_views": "off"} if method_name == "pcl" else {}
    reference_method = build_method(method_name, lambda: create_backbone(backbone, 100), 100, ref_opts).to(device)
    ref_loader = reference_loader(images, labels, harness_method.views, batch_size, workers, steps, seed)
    streamed = []
    if branch_streams == "on":
        streamed = [harness_path(method_name, backbone, device, batch_size, amp, channels_last, optimizer, cuda_graphs,
                                 seed, (images, labels), "on", "streams")[0]]
    paths = [
        harness,
        *streamed,
        TrainPath("reference", reference_method.train(), torch.optim.SGD(  # torch's default implementation
                      _params(reference_method), lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov,
                      weight_decay=optim.weight_decay),
                  lambda: iter(ref_loader), contextlib.nullcontext, device),
    ]
    seconds = {p.name: 0.0 for p in paths}
    peak = {p.name: None for p in paths}
    for _ in range(warmup):
        for p in paths:
            p.train_round(steps)
    for _ in range(rounds):
        for p in paths:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds[p.name] += p.train_round(steps)
            if device.type == "cuda":
                peak[p.name] = max(peak[p.name] or 0, torch.cuda.max_memory_allocated(device) / 2**20)
    img_s = {name: rounds * steps * batch_size / s for name, s in seconds.items()}
    data = {"harness": harness_data_rate(harness_batches, device, batch_size, data_batches),
            "reference": reference_data_rate(ref_loader, device, batch_size, data_batches)}

    x, target = next(harness_batches)
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
        "amp": amp_name(amp_dtype), "channels_last": channels_last,
        "optimizer_impl": impl, "cuda_graphs": harness.cuda_graphs,
        "peak_tflop_s": peak_tflops(device, amp_dtype),
        **({"streams_img_s": img_s["streams"], "streams_speedup": img_s["streams"] / img_s["harness"]}
           if streamed else {}),
    }


# dense tensor-core peaks (TFLOP/s) from the vendors' data sheets: bf16, and fp32 inputs run as TF32 by cuDNN
PEAK_TFLOPS = {"H100": {"bf16": 989.0, "fp32": 494.0}, "H200": {"bf16": 989.0, "fp32": 494.0},
               "A100": {"bf16": 312.0, "fp32": 156.0}, "L40S": {"bf16": 362.0, "fp32": 183.0}}


def peak_tflops(device: torch.device, amp_dtype) -> float | None:
    """The device's dense peak for the step's precision, where its name is in PEAK_TFLOPS."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks["bf16" if amp_dtype is not None else "fp32"]
    return None


# ---------------------------------------------------------------------------------------------
# several runs packed on one device


def _packed_worker(index: int, args: tuple, barrier, results) -> None:
    """One of K processes training the same method side by side on one device: warm up, meet the others at the
    barrier, then time `steps` steps; reports its (start, end) wall-clock times."""
    from bench.train.compute import set_cudnn_benchmark

    method_name, backbone, device_name, batch_size, amp, channels_last, optimizer, cuda_graphs, cudnn, steps = args
    device = torch.device(device_name)
    torch.set_num_threads(1)
    set_cudnn_benchmark(cudnn, device)
    path, _ = harness_path(method_name, backbone, device, batch_size, amp, channels_last, optimizer, cuda_graphs,
                           index, synthetic_cifar(batch_size, index))
    path.train_round(max(4, steps // 2))  # warm-up (and CUDA graph capture)
    barrier.wait(timeout=600)
    start = time.time()
    path.train_round(steps)
    results.put((start, time.time()))


def measure_packed(method_name: str, backbone: str, device: torch.device, k: int, batch_size: int = 128,
                   amp: str = "auto", channels_last: bool = True, optimizer: str = "auto", cuda_graphs: str = "auto",
                   cudnn_benchmark: str = "auto", steps: int = 40) -> float:
    """Aggregate images/s of `k` processes training at once on `device` (what --runs-per-device K buys)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(k), ctx.Queue()
    args = (method_name, backbone, str(device), batch_size, amp, channels_last, optimizer, cuda_graphs,
            cudnn_benchmark, steps)
    procs = [ctx.Process(target=_packed_worker, args=(i, args, barrier, results)) for i in range(k)]
    for p in procs:
        p.start()
    times = [results.get(timeout=900) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    wall = max(end for _, end in times) - min(start for start, _ in times)
    return k * steps * batch_size / wall


# the PCL paper's CIFAR-100 table: 5 backbones x 8 methods x 3 seeds x 300 epochs of 50,000 images
PAPER_TABLE = {"backbones": ["cifar_resnet32", "cifar_resnet110", "cifar_vgg16", "cifar_densenet40_12",
                             "cifar_wrn_20_8"],
               "methods": ["vanilla", "dml", "cl", "one", "okddip", "kdcl", "ffl_s", "pcl"],
               "seeds": 3, "epochs": 300, "images": 50_000}


def paper_table_hours(rates: dict[tuple[str, str], float], packing: float = 1.0) -> float:
    """GPU-hours of the whole table from measured images/s per (method, backbone) of one run, divided by the
    aggregate speed-up that packing runs per GPU gives."""
    t = PAPER_TABLE
    seconds = sum(t["seeds"] * t["epochs"] * t["images"] / rates[(m, b)] for m in t["methods"] for b in t["backbones"])
    return seconds / 3600.0 / packing


def harness_rate(method_name: str, backbone: str, device: torch.device, batch_size: int, amp: str,
                 channels_last: bool, optimizer: str, cuda_graphs: str, steps: int = 30) -> float:
    """Images/s of the harness path alone (one run), after a warm-up round."""
    path, _ = harness_path(method_name, backbone, device, batch_size, amp, channels_last, optimizer, cuda_graphs, 0,
                           synthetic_cifar(batch_size, 0))
    path.train_round(max(4, steps // 3))
    return steps * batch_size / path.train_round(steps)


def run_speed(methods: list[str], backbones: list[str], device_name: str, batch_size: int, amp: str,
              channels_last: bool, csv_path: Path | None, rounds: int, steps: int, workers: int,
              optimizer: str = "auto", cuda_graphs: str = "auto", pack: list[int] | None = None,
              paper_table: bool = False, cudnn_benchmark: str = "auto", branch_streams: str = "off") -> int:
    from bench.train.compute import (
        amp_name,
        autocast_dtype,
        optimizer_impl,
        resolve_device,
        set_cudnn_benchmark,
        use_branch_streams,
        use_cuda_graphs,
    )

    device = resolve_device(device_name)
    streams = use_branch_streams(branch_streams, device)
    benchmark = set_cudnn_benchmark(cudnn_benchmark, device)
    if batch_size < 2:
        raise UsageError(f"--batch-size must be at least 2, got {batch_size}")
    for flag, value, least in (("--rounds", rounds, 1), ("--steps", steps, 1), ("--workers", workers, 0)):
        if value < least:
            raise UsageError(f"{flag} must be at least {least}, got {value}")
    amp_dtype, impl = autocast_dtype(amp, device), optimizer_impl(optimizer, device)
    graphs = use_cuda_graphs(cuda_graphs, device)
    pack = [k for k in (pack if pack is not None else ([1, 2, 4] if device.type == "cuda" else [])) if k > 1]
    rows = []
    header = (f"{'method':<8} {'backbone':<16} {'harness img/s':>13} {'reference img/s':>15} {'speedup':>7} "
              f"{'data x':>7} {'GFLOP/img':>9} {'TFLOP/s':>8} {'% peak':>6} {'peak MB (h/r)':>14}"
              + (f" {'streams img/s':>13} {'x':>5}" if streams else "")
              + "".join(f" {f'K={k} img/s':>11} {'xK=1':>5}" for k in pack))
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}"
          f"{torch.get_num_threads()} threads), batch {batch_size}, rounds {rounds} x {steps} steps; harness: amp "
          f"{amp_name(amp_dtype)}, channels_last {channels_last}, optimizer {impl}, cuda graphs {graphs}, cudnn "
          f"benchmark {benchmark}")
    print(header)
    for backbone in backbones:
        for method in methods:
            row = measure(method, backbone, device, batch_size, amp, channels_last, optimizer, rounds, steps,
                          workers=workers, cuda_graphs=cuda_graphs, branch_streams=branch_streams)
            for k in pack:
                row[f"packed{k}_img_s"] = measure_packed(method, backbone, device, k, batch_size, amp, channels_last,
                                                         optimizer, cuda_graphs, cudnn_benchmark)
            rows.append(row)
            mem = ("-" if row["harness_peak_mb"] is None
                   else f"{row['harness_peak_mb']:.0f}/{row['reference_peak_mb']:.0f}")
            peak = row["peak_tflop_s"]
            share = "-" if not peak else f"{100 * row['harness_tflop_s'] / peak:.1f}"
            print(f"{method:<8} {backbone:<16} {row['harness_img_s']:>13.0f} {row['reference_img_s']:>15.0f} "
                  f"{row['speedup']:>6.2f}x {row['data_speedup']:>6.1f}x {row['train_gflop_per_img']:>9.3f} "
                  f"{row['harness_tflop_s']:>8.3f} {share:>6} {mem:>14}"
                  + (f" {row['streams_img_s']:>13.0f} {row['streams_speedup']:>4.2f}x" if streams else "")
                  + "".join(f" {row[f'packed{k}_img_s']:>11.0f} {row[f'packed{k}_img_s'] / row['harness_img_s']:>4.2f}x"
                            for k in pack), flush=True)
    if paper_table:
        print_paper_table(device, batch_size, amp, channels_last, optimizer, cuda_graphs, rows, pack)
    if csv_path:
        from bench.store import runs

        columns = COLUMNS + (["streams_img_s", "streams_speedup"] if streams else []) + [
            f"packed{k}_img_s" for k in pack]

        def write(f):
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

        runs.atomic_write(Path(csv_path), write)
        print(f"written to {csv_path}")
    return 0


def print_paper_table(device, batch_size, amp, channels_last, optimizer, cuda_graphs, rows, pack) -> None:
    """Measure one run's images/s for every cell of the PCL paper's CIFAR-100 table and print its GPU-hours,
    alone and with the best measured packing speed-up (per method, from the rows measured above)."""
    t = PAPER_TABLE
    rates = {}
    print(f"\nPCL paper CIFAR-100 table: {len(t['backbones'])} backbones x {len(t['methods'])} methods x "
          f"{t['seeds']} seeds x {t['epochs']} epochs (one run's images/s, then hours per run)")
    for backbone in t["backbones"]:
        cells = []
        for method in t["methods"]:
            rates[(method, backbone)] = harness_rate(method, backbone, device, batch_size, amp, channels_last,
                                                     optimizer, cuda_graphs)
            hours = t["epochs"] * t["images"] / rates[(method, backbone)] / 3600
            cells.append(f"{method} {rates[(method, backbone)]:.0f} ({hours:.2f} h)")
        print(f"  {backbone:<20} " + ", ".join(cells), flush=True)
    alone = paper_table_hours(rates)
    print(f"whole table, one run per GPU: {alone:.1f} GPU-hours")
    gains = [row[f"packed{k}_img_s"] / row["harness_img_s"] for row in rows for k in pack]
    if gains:
        factor = statistics.median([max(row[f"packed{k}_img_s"] for k in pack) / row["harness_img_s"]
                                    for row in rows])
        print(f"with runs packed per GPU (median best speed-up {factor:.2f}x over the methods measured above): "
              f"{alone / factor:.1f} GPU-hours")
