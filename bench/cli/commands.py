"""`bench run`, `status`, `cancel` and `list`."""

from __future__ import annotations

import argparse
import sys

from bench.cli.grid import build_sweep, finished_sweep_output, load_cli_plugins, preset_notes


def cmd_run(args: argparse.Namespace) -> int:
    quick = finished_sweep_output(args)
    if quick is not None:
        sys.stdout.write(quick)
        return 0
    from bench.config import to_dict
    from bench.launch.options import LaunchOptions
    from bench.launch.runner import run_sweep
    from bench.sweep import stamp

    sweep, preset = build_sweep(args)
    key = stamp.sweep_key(to_dict(sweep), sweep.plugins)
    opts = LaunchOptions(launcher=args.launcher, cluster=args.cluster, max_parallel=args.max_parallel,
                         tasks_per_node=args.tasks_per_node, runs_per_device=args.runs_per_device,
                         wait=not args.no_wait, retry_failed=args.retry_failed, force=args.force,
                         progress_bar=not args.no_progress)
    return run_sweep(sweep, preset, opts, stamp_key=key, notes=preset_notes(args, preset, sweep.datasets))


def cmd_status(args: argparse.Namespace) -> int:
    from bench.results.status import print_status

    return print_status(args.out, args.watch)


def cmd_cancel(args: argparse.Namespace) -> int:
    from bench.results.status import cancel

    return cancel(args.out)


def cmd_list(args: argparse.Namespace) -> int:
    import dataclasses

    import backbones
    from bench import plugins
    from bench.data import DATASETS
    from bench.sweep.settings import preset_names
    from methods import METHODS, PAPER_ORDER

    load_cli_plugins(args)
    for rec in plugins.loaded():
        print(f"plug-in {rec['name']} ({rec['source']}: {rec['file'] or '-'})")
    print("methods (options and defaults; set with <method>.<option>=value):")
    for name in sorted(METHODS.names(), key=lambda n: PAPER_ORDER.index(n) if n in PAPER_ORDER else 99):
        cls = METHODS.get(name)
        opts = ", ".join(f"{f.name}={getattr(cls.Options(), f.name)!r}" for f in dataclasses.fields(cls.Options))
        print(f"  {name:<9} headline: {cls.headline or '-':<14} {opts}")
    others = [n for n in backbones.list_backbones() if n not in backbones.CIFAR_BACKBONES + backbones.PLUGIN_BACKBONES]
    print("backbones (CIFAR networks first; any timm model name works):")
    print("  " + ", ".join(backbones.CIFAR_BACKBONES + backbones.PLUGIN_BACKBONES))
    if args.all:
        print("  " + ", ".join(others))
    else:
        print(f"  ... and {len(others)} more timm models (bench list --all)")
    print("datasets:")
    for name in DATASETS.names():
        spec = DATASETS.get(name)
        print(f"  {name:<12} {spec.num_classes:>4} classes  {spec.description}")
    print("  NAME=imagefolder:ROOT   your images: ROOT/train/<class>/*, ROOT/val/<class>/* (any format Pillow reads)")
    print("  NAME=tinyimagenet:ROOT  Tiny-ImageNet as distributed (val/ labelled by val_annotations.txt)")
    print("presets: " + ", ".join(preset_names()))
    return 0
