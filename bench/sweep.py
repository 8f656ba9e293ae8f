"""A sweep: the grid methods x backbones x datasets x seeds resolved into runs, checked before any
run starts (names, options, data, the results folder), so bad input changes nothing on disk."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import runs
from bench.config import RunConfig, SweepConfig, run_config
from bench.errors import UsageError


@dataclass
class RunSpec:
    config: RunConfig
    folder: Path

    @property
    def label(self) -> str:
        c = self.config
        return f"{c.dataset}/{c.backbone}/{c.method}/seed{c.seed}"


def validate(sweep: SweepConfig) -> dict[str, dict[str, Any]]:
    """Check every name and number of the sweep; returns each method's resolved options."""
    import backbones
    from bench.data import DATASETS
    from methods import METHODS
    from methods.base import options_dict, resolve_options

    for kind, values in (("methods", sweep.methods), ("backbones", sweep.backbones),
                         ("datasets", sweep.datasets), ("seeds", sweep.seeds)):
        if not values:
            raise UsageError(f"no {kind} given")
        if len(set(values)) != len(values):
            raise UsageError(f"{kind} lists a value twice: {', '.join(map(str, values))}")
    for m in sweep.methods:
        METHODS.get(m)
    for b in sweep.backbones:
        backbones.check_backbone(b)
    for d in sweep.datasets:
        DATASETS.get(d)
    for s in sweep.seeds:
        if s < 0:
            raise UsageError(f"seeds must be non-negative integers, got {s}")
    if sweep.epochs < 1:
        raise UsageError(f"epochs must be at least 1, got {sweep.epochs}")
    for name in ("batch_size", "eval_batch_size"):
        if getattr(sweep.data, name) < 1:
            raise UsageError(f"data.{name} must be at least 1, got {getattr(sweep.data, name)}")
    if sweep.data.workers < 0:
        raise UsageError(f"data.workers must be >= 0, got {sweep.data.workers}")
    if sweep.optim.lr <= 0:
        raise UsageError(f"optim.lr must be positive, got {sweep.optim.lr}")
    check_compute(sweep.compute)
    for m, overrides in sweep.options.items():  # options of methods outside the grid are checked too
        resolve_options(m, overrides)
    return {m: options_dict(resolve_options(m, sweep.options.get(m))) for m in sweep.methods}


def check_compute(compute) -> None:
    """compute.amp and compute.optimizer_impl name a known choice, compute.device a torch device (resolving
    them for the CPU checks the names; whether the device is present is for the machine that runs)."""
    import torch

    from bench.train import autocast_dtype, optimizer_impl, parse_device

    autocast_dtype(compute.amp, torch.device("cpu"))
    optimizer_impl(compute.optimizer_impl, torch.device("cpu"))
    parse_device(compute.device, "compute.device")


def check_data(sweep: SweepConfig) -> None:
    """Each dataset's files are there (or --download was given): one clear line otherwise."""
    from bench.data import DATASETS

    for d in sweep.datasets:
        DATASETS.get(d).load(sweep.data, False)


def check_writable(out: Path) -> None:
    """The results folder can be created and written to."""
    out = Path(out)
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"results folder {out}: {probe} exists and is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"results folder {out} is not writable ({probe} denies writing)")
    if out.exists():
        try:
            with tempfile.TemporaryFile(dir=out):
                pass
        except OSError as err:
            raise UsageError(f"results folder {out} is not writable: {err.strerror}") from None


def expand(sweep: SweepConfig, options: dict[str, dict[str, Any]]) -> list[RunSpec]:
    """Every run of the grid, in a stable order (dataset, backbone, method, seed)."""
    out = Path(sweep.out)
    return [RunSpec(run_config(sweep, m, b, d, s, options[m]), runs.run_dir(out, d, b, m, s))
            for d in sweep.datasets for b in sweep.backbones for m in sweep.methods for s in sweep.seeds]


def prepare(sweep: SweepConfig, force: bool = False) -> list[RunSpec]:
    """Validate the sweep and everything it would touch; return its runs."""
    from bench.train import check_run_folder

    options = validate(sweep)
    check_writable(Path(sweep.out))
    check_data(sweep)
    specs = expand(sweep, options)
    for spec in specs:
        check_run_folder(spec.folder, spec.config, force)
    return specs
