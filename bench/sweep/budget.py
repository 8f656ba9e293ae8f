"""Budget-matched baselines (issue 32): `vanilla[budget=pcl]` (any method as the baseline, any method as the budget)
trains for the whole number of epochs that brings its training FLOPs closest to the named method's run on the same
backbone and dataset, never below one epoch; the schedule's fractions and ramp-up scale with those epochs as `--epochs`
does. The epochs come from the two methods' counted step FLOPs (bench.train.flops), so the sweep prints them at its
start, before anything trains. Each is its own run folder (`vanilla+budget=pcl`) and table row ("Vanilla at PCL's
compute (4.0x epochs)")."""

from __future__ import annotations

import dataclasses
from typing import Any

from bench.config import RunConfig, SweepConfig
from bench.errors import UsageError, unknown

BUDGET = "budget"  # the variant option every method takes: `<method>[budget=<method>]`


def check_budget(method: str, budget: Any, key: str) -> str:
    """The budget's method name: a registered method other than the baseline itself; UsageError otherwise."""
    from methods import METHODS

    name = str(budget).strip()
    if name not in METHODS:
        raise UsageError(f"{key}: budget={name}: {unknown('method', name, METHODS.names())}")
    if name == method:
        raise UsageError(f"{key}: budget={name} names the baseline itself; give another method's compute to match "
                         f"(e.g. {method}[budget=pcl])")
    return name


def step_flops(config: RunConfig) -> int | None:
    """The counted FLOPs of one training step of `config`'s method, backbone and dataset, on the CPU (the count a run
    of it makes at set-up, from the same per-process cache)."""
    from backbones import network_factory
    from bench.data import run_dataset
    from bench.train.flops import run_step_flops
    from methods import build_method

    spec = run_dataset(config)
    factory = network_factory(config.backbone, config.partners, spec.num_classes, spec.image_size,
                              **config.backbone_options)  # starting weights change no FLOPs
    method = build_method(config.method, factory, spec.num_classes, config.options)
    return run_step_flops(method, config, spec.image_size, spec.num_classes)


def matched_epochs(own: RunConfig, target: RunConfig, key: str) -> dict[str, Any]:
    """The budget record of `own` matched to `target`'s training compute: whole epochs (at least 1) whose FLOPs come
    closest to `target`'s run (same batches per epoch, so the ratio of step FLOPs times its epochs)."""
    from methods import METHODS

    mine, theirs = step_flops(own), step_flops(target)
    if not mine or not theirs:
        raise UsageError(f"{key}: the training FLOPs of {own.method if not mine else target.method} on "
                         f"{own.backbone} cannot be counted, so no budget can be matched to them")
    spend = target.epochs * theirs  # the budget: the named method's run, in step-FLOPs x epochs
    epochs = min(range(max(1, int(spend / mine)), int(spend / mine) + 2), key=lambda e: abs(e * mine - spend))
    cls = METHODS.get(target.method)
    return {"method": target.method, "display": cls.display_name or target.method, "epochs": epochs,
            "base_epochs": target.epochs, "ratio": round(epochs / target.epochs, 3), "step_flops": mine,
            "budget_step_flops": theirs}


def with_epochs(sweep: SweepConfig, epochs: int) -> SweepConfig:
    """The sweep's settings at another number of epochs (the schedule's fractions follow them)."""
    return dataclasses.replace(sweep, epochs=epochs)


def budget_label(record: dict[str, Any]) -> str:
    """'at PCL's compute (4.0x epochs)' for a budget-matched run's row."""
    return f"at {record.get('display') or record.get('method')}'s compute ({float(record.get('ratio', 0)):.1f}x epochs)"


def budget_line(label: str, where: str, record: dict[str, Any]) -> str:
    """What the sweep's start prints for one budget-matched run: its epochs and where they come from."""
    return (f"budget: {label} on {where}: {record['epochs']} epochs ({record['ratio']:g}x the {record['base_epochs']} "
            f"of {record['display']}, whose step is {record['budget_step_flops'] / 1e9:.3g} GFLOPs against "
            f"{record['step_flops'] / 1e9:.3g})")
