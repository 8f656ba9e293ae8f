"""The checks a sweep makes before any run starts that build or touch something: every method built with its backbone
and a tiny batch, the compute choices, the data, the results folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.config import SweepConfig
from bench.errors import UsageError

IMAGE_SIZES = (8, 1024)


def check_image_size(value: Any, where: str = "data.image_size") -> None:
    """data.image_size: 0 (each dataset's own size) or one integer, the side of the square images."""
    lo, hi = IMAGE_SIZES
    if isinstance(value, int) and not isinstance(value, bool) and (value == 0 or lo <= value <= hi):
        return
    if isinstance(value, (list, tuple)) or (isinstance(value, str) and "x" in value.lower()):
        raise UsageError(f"{where} must be one integer, the side of square images (e.g. {where}=64), got "
                         f"{value!r}: non-square sizes are not supported")
    raise UsageError(f"{where} must be 0 (each dataset's own size) or an integer from {lo} to {hi}, got {value!r}")


def check_builds(specs: list[Any]) -> None:
    """Build every distinct (method, options, backbone, dataset) of the runs about to start, on the CPU, and push
    a tiny batch through one training forward: every constructor check (branch points, peer counts, ...) and
    every backbone that cannot run on the dataset's images fails here, before any run starts, naming the
    `data.image_size` that fixes it."""
    import torch

    from backbones import network_factory, smallest_input_size
    from bench.data import check_sampler, run_dataset, view_recipes
    from methods import build_method
    from methods.base import Progress

    seen = set()
    state = torch.get_rng_state()
    try:
        for spec in specs:
            c = spec.config
            key = (c.method, repr(sorted(c.options.items())), c.backbone, tuple(c.partners), c.dataset,
                   repr(c.backbone_options), repr(c.pretrained))
            if key in seen:
                continue
            seen.add(key)
            data = run_dataset(c)
            size = data.image_size
            factory = network_factory(c.backbone, c.partners, data.num_classes, size, c.pretrained,
                                      **c.backbone_options)
            check_sampler(c.data, data.num_classes, c.dataset)
            try:
                method = build_method(c.method, factory, data.num_classes, c.options)
                type(method).check_inputs(method.opts, factory)
                type(method).check_settings(method.opts, c)
                if not isinstance(method.views, int) or isinstance(method.views, bool) or method.views < 1:
                    raise MethodDefinitionError(f"method {c.method}: views must be a positive integer (augmented "
                                                f"views per image), got {method.views!r}")
                views = [torch.zeros(2, 3, size, size) for _ in range(method.views)]
                with torch.no_grad():
                    method.train().losses(views, torch.zeros(2, dtype=torch.long), Progress(0.0, 0, c.rampup_epochs))
            except MethodDefinitionError:
                raise
            except (RuntimeError, ValueError, AssertionError, UsageError, TypeError) as err:
                smallest = smallest_input_size(c.backbone, data.num_classes, **c.backbone_options)
                if smallest is not None and smallest > size:
                    raise UsageError(f"{c.backbone} cannot take the {size}x{size} images of {c.dataset}: it needs at "
                                     f"least {smallest}x{smallest}; set data.image_size={smallest} (or larger) to "
                                     "resize the images once") from None
                if c.backbone_options and "unexpected keyword argument" in str(err):
                    unexpected = str(err).split("unexpected keyword argument")[-1].strip()
                    raise UsageError(f"backbone_options {c.backbone_options} do not fit {c.backbone}: it takes no "
                                     f"argument {unexpected}") from None
                if isinstance(err, UsageError):
                    raise UsageError(f"{c.method} on {c.backbone}: {err}") from None
                raise UsageError(f"{c.method} with {c.backbone} cannot train on {c.dataset} "
                                 f"({size}x{size} images): {str(err).splitlines()[0]}") from None
            own = method.view_augment()
            view_recipes(own or c.data.view_augment, method.views,
                         where=f"{c.method}'s view_augment" if own else f"data.view_augment ({c.method})",
                         image_size=size)
            pad = getattr(c.dataset_source, "pad", -1) if c.dataset_source is not None else -1
            if pad > size:
                raise UsageError(f"dataset_sources.{c.dataset}.pad must be at most the image side ({size} px), got "
                                 f"{pad}")
            if not isinstance(method.headline, str) or method.headline not in method.eval_names():
                raise UsageError(f"method {c.method}: its headline {method.headline!r} is not one of its eval models "
                                 f"({', '.join(method.eval_names())}); set headline to the one the paper reports")
    finally:
        torch.set_rng_state(state)


class MethodDefinitionError(UsageError):
    """A method class that builds but does not define what the trainer needs (views, headline)."""


def check_compute(compute) -> None:
    """compute.amp and compute.optimizer_impl name a known choice, compute.device a torch device (resolving
    them for the CPU checks the names; whether the device is present is for the machine that runs)."""
    import torch

    from bench.train.compute import (
        CUDA_GRAPHS,
        CUDNN_BENCHMARK,
        autocast_dtype,
        branch_streams_asked,
        choice,
        optimizer_impl,
        parse_device,
    )

    autocast_dtype(compute.amp, torch.device("cpu"))
    optimizer_impl(compute.optimizer_impl, torch.device("cpu"))
    parse_device(compute.device, "compute.device")
    choice("compute.cuda_graphs", compute.cuda_graphs, CUDA_GRAPHS)  # (whether it applies: on the running machine)
    choice("compute.cudnn_benchmark", compute.cudnn_benchmark, CUDNN_BENCHMARK)
    branch_streams_asked(compute.branch_streams, compute.compile)
    if not (isinstance(compute.threads, int) and 0 <= compute.threads <= 4096):
        raise UsageError(f"compute.threads must be 0 (the cores divided by the runs sharing them) or a number of "
                         f"threads from 1 to 4096, got {compute.threads!r}")


def check_device_here(compute) -> None:
    """For runs on this machine: the device exists here (CUDA asked for where there is none fails now), and
    what needs CUDA gets it."""
    from bench.train.compute import resolve_device, use_branch_streams

    use_branch_streams(compute.branch_streams, resolve_device(compute.device), compute.compile)


def check_data(sweep: SweepConfig) -> None:
    """Each dataset's files are there and readable (or --download was given): one clear line otherwise."""
    from bench.data import check_dataset, dataset_spec

    for d in sweep.datasets:
        source = sweep.dataset_sources.get(d)
        check_dataset(dataset_spec(d, sweep.data, source), sweep.data, source)


def check_writable(out: Path) -> None:
    """The results folder can be created and written to (nothing is created yet)."""
    from bench.files import check_output_folder

    check_output_folder(Path(out), "results folder")
