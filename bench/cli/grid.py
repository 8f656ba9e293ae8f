"""The sweep the command line asks for: preset, config file, flags and `key=value` overrides, in that order of
precedence."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.errors import UsageError


def parse_names(text: str, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",")]
    if not text.strip() or any(not x for x in items):
        raise UsageError(f"--{what} '{text}': expected a comma-separated list without empty items")
    return items


def parse_seeds(text: str) -> list[int]:
    seeds = []
    for item in parse_names(text, "seeds"):
        if not item.isdigit():
            raise UsageError(f"--seeds '{text}': '{item}' is not a non-negative integer (e.g. --seeds 0,1,2)")
        seeds.append(int(item))
    return seeds


def default_preset(datasets: list[str] | None) -> str:
    """Without --preset: the protocol that fits the data (digits: demo, CIFAR: paper, ImageNet: imagenet)."""
    if not datasets or all(d == "digits" for d in datasets):
        return "demo"
    return "imagenet" if "imagenet" in datasets else "paper"


def plugin_specs(args: argparse.Namespace, from_config: list[str] | None = None,
                 config_dir: Path | None = None) -> list[str]:
    """The config file's `plugins:` (relative to its folder), then --plugin ones (relative to the working
    directory), resolved, each once."""
    from bench import plugins

    specs = [plugins.resolve_spec(s, config_dir) for s in from_config or []]
    specs += [plugins.resolve_spec(s) for s in getattr(args, "plugin", []) or []]
    return list(dict.fromkeys(specs))


def load_cli_plugins(args: argparse.Namespace, from_config: list[str] | None = None,
                     config_dir: Path | None = None) -> list[str]:
    """Installed plug-ins (entry points), then `plugin_specs`, imported in that order; returns the specs."""
    from bench import plugins

    specs = plugin_specs(args, from_config, config_dir)
    plugins.load_plugins(specs)
    return specs


def build_sweep(args: argparse.Namespace, light: bool = False):
    """The sweep the command line asks for. `light`: without importing plug-ins or methods (a `key=value` whose
    first part is not a setting is taken as a method's option), for the quick check of a finished sweep."""
    from bench.config import SweepConfig, from_dict, load_yaml
    from bench.sweep.settings import load_preset, parse_override, split_dataset_sources

    for flag in ("methods", "datasets", "backbones", "seeds", "out", "preset", "data_root", "device", "config"):
        value = getattr(args, flag)
        if value is not None and not str(value).strip():  # an empty value is a mistake, never "use the default"
            raise UsageError(f"--{flag.replace('_', '-')} is empty; leave the flag out for the default")
    datasets = parse_names(args.datasets, "datasets") if args.datasets is not None else None
    preset = args.preset or default_preset(datasets)
    sweep = from_dict(SweepConfig, load_preset(preset), where=f"preset '{preset}'")
    given: set[str] = set()  # methods whose options the user set (a preset's options for others are dropped)
    if args.config:
        data = load_yaml(args.config)
        given |= set(data.get("options") or {}) if isinstance(data.get("options"), dict) else set()
        sweep = from_dict(SweepConfig, data, where=str(args.config), base=sweep)
    config_dir = Path(args.config).parent if args.config else None
    if light:
        sweep.plugins = plugin_specs(args, sweep.plugins, config_dir)
        method_names = None
    else:
        sweep.plugins = load_cli_plugins(args, sweep.plugins, config_dir)
        from methods import METHODS

        method_names = METHODS.names()
    flags: dict = {}
    if args.methods is not None:
        from bench.sweep.variants import split_top_level

        flags["methods"] = split_top_level(args.methods) if args.methods.strip() else parse_names(args.methods,
                                                                                                  "methods")
    if datasets is not None:
        flags["datasets"] = datasets
    if args.backbones is not None:
        flags["backbones"] = parse_names(args.backbones, "backbones")
    if args.seeds is not None:
        flags["seeds"] = parse_seeds(args.seeds)
    if args.epochs is not None:
        flags["epochs"] = args.epochs
    if args.out is not None:
        flags["out"] = args.out
    data = {}
    if args.data_root is not None:
        data["root"] = args.data_root
    if args.download:
        data["download"] = True
    if args.batch_size is not None:
        data["batch_size"] = args.batch_size
    if data:
        flags["data"] = data
    if args.device is not None:
        flags["compute"] = {"device": args.device}
    sweep = from_dict(SweepConfig, flags, where="command line", base=sweep)
    for text in args.overrides:
        if text.split("=", 1)[0].strip() == "plugins":
            raise UsageError(f"override '{text}': plug-ins are loaded before overrides are read; use --plugin FILE "
                             "or plugins: in a --config file")
        override = parse_override(text, method_names)
        given |= set(override.get("options") or {}) if isinstance(override.get("options"), dict) else set()
        sweep = from_dict(SweepConfig, override, where=f"override '{text}'", base=sweep)
    from bench.sweep.variants import method_names as names_in

    in_sweep = names_in(sweep.methods)
    sweep.options = {m: o for m, o in sweep.options.items() if m in in_sweep or m in given}
    return split_dataset_sources(sweep), preset


def preset_notes(args: argparse.Namespace, preset: str, datasets: list[str]) -> list[str]:
    """A preset made for other data (`--preset imagenet --datasets digits`) runs, with one note saying so."""
    from bench.config import SweepConfig, from_dict
    from bench.sweep.settings import load_preset

    made = from_dict(SweepConfig, load_preset(preset))
    made_for = [d for d in made.datasets if d != "digits"]
    if not args.preset or args.datasets is None or not made_for or set(datasets) & set(made_for):
        return []
    return [f"note: preset '{preset}' is made for {', '.join(made_for)} ({made.epochs} epochs, batch "
            f"{made.data.batch_size}, backbones {', '.join(made.backbones)}); it runs here on {', '.join(datasets)} "
            "as asked"]


def finished_sweep_output(args: argparse.Namespace) -> str | None:
    """What `bench run` printed when this very sweep last completed, if nothing it depends on changed since (see
    bench.sweep.stamp); None sends it down the normal path, which also reports any error properly."""
    from bench.config import to_dict
    from bench.store import runs
    from bench.sweep import stamp

    if args.force:
        return None
    try:
        sweep, preset = build_sweep(args, light=True)
        out = Path(sweep.out)
        from bench.sweep.variants import expand

        keys = [v.key for v in expand(sweep.methods, sweep.options)]
        folders = [runs.run_dir(out, d, b, k, s) for d in sweep.datasets for b in sweep.backbones
                   for k in keys for s in sweep.seeds]
        printed = stamp.done_output(out, stamp.sweep_key(to_dict(sweep), sweep.plugins), folders)
    except Exception:
        return None
    if printed is None:
        return None
    runs.remove_stale_sweep_temp_files(out, folders)
    n = len(folders)
    return (f"sweep: {n} runs, 0 to run ({n} done: skipped) -> {out}  [preset: {preset}, launcher: {args.launcher}]"
            f"\n{printed}")
