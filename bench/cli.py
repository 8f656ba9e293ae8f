"""The `bench` command: subcommands only; each hands over to the module that does the work."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.errors import NoResults, UsageError, did_you_mean, unknown


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments as one-line UsageErrors instead of exiting with usage text, and reads the
    command line as written: a long flag only by its full name (`--epoch` is not `--epochs`)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")

    def flags(self) -> list[str]:
        return [s for a in self._actions for s in a.option_strings if s.startswith("--")]


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The arguments as written: `key=value` overrides anywhere among a command's options (argparse takes only the
    first group as its positional list; the rest joins it, in order); anything else it does not know is one line with
    the closest flag."""
    args, extra = parser.parse_known_args(argv)
    command = getattr(args, "_parser", parser)
    for item in extra:
        if hasattr(args, "overrides") and not item.startswith("-") and "=" in item:
            args.overrides.append(item)
            continue
        name = item.split("=", 1)[0]
        hint = did_you_mean(name, command.flags()) if name.startswith("--") else ""
        raise UsageError(f"unrecognized argument '{item}'{hint} (see '{command.prog} --help')")
    return args


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


def add_grid_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("the grid (stable interface)")
    g.add_argument("--methods", help="comma-separated, e.g. pcl,one (see 'bench list')")
    g.add_argument("--datasets", help="comma-separated: digits, cifar10, cifar100, svhn, stl10, tinyimagenet, "
                                      "imagenet, or NAME=imagefolder:ROOT for your own images")
    g.add_argument("--backbones", help="comma-separated timm names, e.g. cifar_resnet32,resnet18")
    g.add_argument("--seeds", help="comma-separated non-negative integers, e.g. 0,1,2")
    g.add_argument("--epochs", type=int, help="training epochs of every run")
    g.add_argument("--out", help="results folder of the sweep (default: the preset's, e.g. results/demo)")
    from bench.config import preset_names

    g.add_argument("--preset", help=f"{', '.join(preset_names())} (default: from the datasets: digits -> demo, "
                                    "ImageNet -> imagenet, any other -> paper)")
    o = p.add_argument_group("more")
    o.add_argument("--config", help="a YAML file of settings (same keys as the presets)")
    add_plugin_flag(o)
    o.add_argument("--data-root", help="folder holding the datasets (default: data)")
    o.add_argument("--download", action="store_true", help="download CIFAR when missing (needs network)")
    o.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    o.add_argument("--batch-size", type=int, help="training batch size")
    o.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. optim.lr=0.05 pcl.temperature=4 compute.amp=off")


def add_plugin_flag(p) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE_OR_FILE.py",
                   help="import a plug-in that registers methods, backbones or datasets (repeatable)")


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
    from bench.config import SweepConfig, from_dict, load_preset, load_yaml, parse_override, split_dataset_sources

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
        from bench.variants import split_top_level

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
    from bench.variants import method_names as names_in

    in_sweep = names_in(sweep.methods)
    sweep.options = {m: o for m, o in sweep.options.items() if m in in_sweep or m in given}
    return split_dataset_sources(sweep), preset


def preset_notes(args: argparse.Namespace, preset: str, datasets: list[str]) -> list[str]:
    """A preset made for other data (`--preset imagenet --datasets digits`) runs, with one note saying so."""
    from bench.config import SweepConfig, from_dict, load_preset

    made = from_dict(SweepConfig, load_preset(preset))
    made_for = [d for d in made.datasets if d != "digits"]
    if not args.preset or args.datasets is None or not made_for or set(datasets) & set(made_for):
        return []
    return [f"note: preset '{preset}' is made for {', '.join(made_for)} ({made.epochs} epochs, batch "
            f"{made.data.batch_size}, backbones {', '.join(made.backbones)}); it runs here on {', '.join(datasets)} "
            "as asked"]


def finished_sweep_output(args: argparse.Namespace) -> str | None:
    """What `bench run` printed when this very sweep last completed, if nothing it depends on changed since (see
    bench.stamp); None sends it down the normal path, which also reports any error properly."""
    from bench import runs, stamp
    from bench.config import to_dict

    if args.force:
        return None
    try:
        sweep, preset = build_sweep(args, light=True)
        out = Path(sweep.out)
        from bench.variants import expand

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


def cmd_run(args: argparse.Namespace) -> int:
    quick = finished_sweep_output(args)
    if quick is not None:
        sys.stdout.write(quick)
        return 0
    from bench import stamp
    from bench.config import to_dict
    from bench.launch import LaunchOptions, run_sweep

    sweep, preset = build_sweep(args)
    key = stamp.sweep_key(to_dict(sweep), sweep.plugins)
    opts = LaunchOptions(launcher=args.launcher, cluster=args.cluster, max_parallel=args.max_parallel,
                         tasks_per_node=args.tasks_per_node, runs_per_device=args.runs_per_device,
                         wait=not args.no_wait, retry_failed=args.retry_failed, force=args.force,
                         progress_bar=not args.no_progress)
    return run_sweep(sweep, preset, opts, stamp_key=key, notes=preset_notes(args, preset, sweep.datasets))


def cmd_status(args: argparse.Namespace) -> int:
    from bench.status import print_status

    return print_status(args.out, args.watch)


def cmd_cancel(args: argparse.Namespace) -> int:
    from bench.status import cancel

    return cancel(args.out)


def cmd_list(args: argparse.Namespace) -> int:
    import dataclasses

    import backbones
    from bench import plugins
    from bench.config import preset_names
    from bench.data import DATASETS
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


def add_results_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="*", type=Path, help="results folders (default: results)")


def add_table_flags(p: argparse.ArgumentParser) -> None:
    add_results_arg(p)
    p.add_argument("--metric", default="top1", help="top1 (default), top5, ece, nll or disagreement (of the members); "
                                                    "final/best still name the epoch, as --epoch does")
    p.add_argument("--epoch", choices=["final", "best"], default=None, help="final (default) or best epoch")
    p.add_argument("--measure", choices=["error", "accuracy"], default="error")
    p.add_argument("--top", type=int, choices=[1, 5], default=1)
    p.add_argument("--model", default="headline", help="headline (plus -E ensemble rows), ensemble, peer0, ...")
    p.add_argument("--no-reference", action="store_true", help="leave out the paper's published numbers")
    p.add_argument("--significance", action="store_true", help="mark methods that differ from vanilla "
                                                                 "(Welch's t-test over seeds, p < 0.05)")


def _collect(args: argparse.Namespace):
    from bench.aggregate import TableSpec, load_runs

    roots = args.results or [Path("results")]
    missing = [str(r) for r in roots if not Path(r).exists()]
    if missing:
        raise UsageError(f"results folder not found: {', '.join(missing)}")
    collection = load_runs(roots)
    for note in collection.warnings:
        print(f"warning: {note}", file=sys.stderr)
    if not hasattr(args, "metric"):  # bench plot: no table options
        return roots, collection, TableSpec()
    known = list(dict.fromkeys(["headline", "ensemble", *sorted(set(collection.models.get("eval_model", [])))]))
    if args.model not in known and not collection.models.empty:
        raise unknown("--model", args.model, known)
    spec = TableSpec(metric=args.epoch or "final", measure=args.measure, top=args.top, model=args.model,
                     reference=not args.no_reference, significance=args.significance)
    apply_metric(spec, args.metric, args.epoch)
    return roots, collection, spec


def apply_metric(spec, metric: str, epoch: str | None) -> None:
    """`--metric`: top1, top5, ece, nll or disagreement; `final`/`best` (its meaning before --epoch) name the epoch."""
    from bench.aggregate import QUANTITIES

    if metric in ("final", "best"):
        if epoch is not None and epoch != metric:
            raise UsageError(f"--metric {metric} and --epoch {epoch} name two epochs; give --epoch only")
        spec.metric = metric
        return
    if metric not in QUANTITIES:
        raise unknown("--metric", metric, QUANTITIES)
    if metric in ("top1", "top5"):
        spec.top = int(metric[-1])
    else:
        spec.quantity = metric


def cmd_table(args: argparse.Namespace) -> int:
    from bench import runs
    from bench.aggregate import cost_markdown, cost_table, render, select_models, write_tables
    from bench.files import check_output_folder

    if args.csv and args.csv != "-":
        runs.check_output_file(Path(args.csv), None, "--csv")
    if args.write:
        check_output_folder(Path(args.write), "--write")
    roots, collection, spec = _collect(args)
    if collection.models.empty:
        raise NoResults(f"no finished runs under {', '.join(map(str, roots))} ('bench status' shows where runs stand)")
    if not args.csv and select_models(collection.models, spec).empty:
        raise NoResults(f"no finished run under {', '.join(map(str, roots))} has {args.metric} for the {spec.model} "
                        "model (runs made before okd-bench measured it show it as missing)")
    if args.csv:
        text = collection.models.to_csv(index=False)
        if args.csv == "-":
            sys.stdout.write(text)
        else:
            runs.write_text(Path(args.csv), text)
            print(f"runs written to {args.csv}", file=sys.stderr)
        return 0
    print(render(collection, spec, args.format))
    if args.costs:
        print(cost_markdown(cost_table(collection)))
    if args.write:
        paths = write_tables(collection, Path(args.write), spec)
        print(f"tables written to {args.write}: {', '.join(p.name for p in paths)}", file=sys.stderr)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from bench.files import check_output_folder
    from bench.plots import write_plots

    if args.write:
        check_output_folder(Path(args.write), "--write")
    roots, collection, _ = _collect(args)
    folder = Path(args.write) if args.write else Path(roots[0]) / "plots"
    check_output_folder(folder, "plots folder")
    if collection.models.empty:
        raise NoResults(f"no finished runs under {', '.join(map(str, roots))} to plot ('bench status' shows where "
                        "runs stand)")
    paths = write_plots(collection, folder)
    print(f"{len(paths)} plot files written to {folder}")
    return 0


def cmd_speed(args: argparse.Namespace) -> int:
    import backbones
    from bench.speed import run_speed
    from methods import METHODS

    load_cli_plugins(args)
    methods = parse_names(args.methods, "methods")
    for m in methods:
        METHODS.get(m)
    names = parse_names(args.backbones, "backbones")
    for b in names:
        backbones.check_backbone(b)
    if args.csv is not None:
        from bench.runs import check_output_file

        check_output_file(args.csv, None, "--csv")
    pack = None
    if args.pack is not None:
        pack = []
        for item in parse_names(args.pack, "pack"):
            if not item.isdigit() or int(item) < 1:
                raise UsageError(f"--pack '{args.pack}': '{item}' is not a positive integer (e.g. --pack 1,2,4)")
            pack.append(int(item))
    return run_speed(methods, names, args.device, args.batch_size, args.amp, not args.no_channels_last,
                     args.csv, args.rounds, args.steps, args.workers, args.optimizer, args.cuda_graphs, pack,
                     args.paper_table, args.cudnn_benchmark, args.branch_streams)


def cmd_report(args: argparse.Namespace) -> int:
    from bench.report import write_report

    return write_report(args.results, args.out)


def cmd_export(args: argparse.Namespace) -> int:
    from bench.export import export_run

    return export_run(args.run, args.model, args.format, args.out)


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bench", description="okd-bench: train and compare online knowledge distillation "
                                               "methods, and turn the runs into tables and plots.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the grid methods x backbones x datasets x seeds")
    add_grid_flags(p)
    launch = p.add_argument_group("launching")
    launch.add_argument("--launcher", default="local", help="local (default: submitit subprocesses), inline "
                                                            "(this process, for debugging) or slurm")
    launch.add_argument("--cluster", type=Path, help="SLURM profile, e.g. slurm/local.yaml (with --launcher slurm)")
    launch.add_argument("--max-parallel", type=int, default=1, help="local launcher: runs at a time")
    launch.add_argument("--tasks-per-node", type=int, default=1,
                        help="local: processes per run with torch.distributed (one per GPU; gloo on CPU)")
    launch.add_argument("--runs-per-device", type=int, default=1,
                        help="local/slurm: train K runs at once on each GPU (K processes; with NVIDIA MPS they run "
                             "concurrently), recorded in summary.json so cost tables divide GPU-hours by K")
    launch.add_argument("--no-wait", action="store_true", help="slurm: return once the job array is submitted")
    launch.add_argument("--retry-failed", action="store_true", help="rerun failed and diverged runs too")
    launch.add_argument("--force", action="store_true", help="rerun every run from scratch, even done ones "
                                                             "or ones made by a different config")
    launch.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_run, _parser=p)

    p = sub.add_parser("status", help="state of a sweep's runs (pending, running, done, failed, ...)")
    p.add_argument("out", nargs="?", type=Path, default=Path("results/demo"), help="the sweep folder")
    p.add_argument("--watch", type=float, nargs="?", const=5.0, metavar="SECONDS",
                   help="redraw every SECONDS (default 5) until every run has finished")
    p.set_defaults(func=cmd_status, _parser=p)

    p = sub.add_parser("cancel", help="cancel a sweep's queued and running jobs")
    p.add_argument("out", type=Path, help="the sweep folder")
    p.set_defaults(func=cmd_cancel, _parser=p)

    p = sub.add_parser("table", help="paper-style results table of finished runs (Markdown, LaTeX, CSV)")
    add_table_flags(p)
    p.add_argument("--format", choices=["md", "latex", "csv"], default="md")
    p.add_argument("--costs", action="store_true", help="also print the cost table")
    p.add_argument("--csv", metavar="PATH", help="export one row per run and eval model as CSV ('-': stdout)")
    p.add_argument("--write", metavar="DIR", help="also write results.{md,tex,csv}, costs.{md,csv}, runs.csv there")
    p.set_defaults(func=cmd_table, _parser=p)

    p = sub.add_parser("plot", help="plots of finished runs (PNG and PDF)")
    add_results_arg(p)
    p.add_argument("--write", metavar="DIR", help="output folder (default: <first results folder>/plots)")
    p.set_defaults(func=cmd_plot, _parser=p)

    p = sub.add_parser("report", help="one self-contained HTML page of finished runs: tables, plots, setup")
    add_results_arg(p)
    p.add_argument("--out", type=Path, help="the page to write (default: <first results folder>/report.html)")
    p.set_defaults(func=cmd_report, _parser=p)

    p = sub.add_parser("speed", help="benchmark: harness vs reference-style training path, side by side")
    p.add_argument("--methods", default="vanilla,dml,cl,one,okddip,pcl,mcl,okdph")
    p.add_argument("--backbones", default="cifar_resnet32")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--amp", default="auto", help="harness autocast: auto (bf16 on CUDA), bf16, off")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--optimizer", default="auto", help="harness SGD: auto (fused on CUDA, foreach elsewhere), "
                                                       "fused, foreach, loop")
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds per method")
    p.add_argument("--steps", type=int, default=4, help="training steps per path per round")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference path")
    p.add_argument("--cuda-graphs", default="auto", help="harness step as CUDA graphs: auto (on with CUDA), on, off")
    p.add_argument("--cudnn-benchmark", default="auto", help="cuDNN algorithm autotuning: auto (on with CUDA), on, "
                                                             "off")
    p.add_argument("--branch-streams", default="off",
                   help="on: also time the harness with each method's independent branches on concurrent CUDA "
                        "streams (compute.branch_streams), side by side")
    p.add_argument("--pack", help="also measure K runs packed on the device, aggregate images/s (default on CUDA: "
                                  "1,2,4)")
    p.add_argument("--paper-table", action="store_true",
                   help="also estimate the GPU-hours of the PCL paper's CIFAR-100 table from measured rates")
    p.add_argument("--csv", type=Path, help="write the results as CSV")
    add_plugin_flag(p)
    p.set_defaults(func=cmd_speed, _parser=p)

    p = sub.add_parser("export", help="a finished run's eval model as a plain timm network (safetensors, "
                                      "TorchScript, ONNX)")
    p.add_argument("run", type=Path, help="a run folder, e.g. results/demo/digits/cifar_resnet8/pcl/seed0")
    p.add_argument("--model", help="eval model (default: the headline one, e.g. PCL's mean_teacher0)")
    p.add_argument("--format", default="safetensors", help="safetensors (default), torchscript or onnx")
    p.add_argument("--out", type=Path, help="output file (default: <run>/deployed[_<model>].<ext>)")
    p.set_defaults(func=cmd_export, _parser=p)

    p = sub.add_parser("list", help="registered methods, backbones, datasets and presets")
    p.add_argument("--all", action="store_true", help="list every timm backbone")
    add_plugin_flag(p)
    p.set_defaults(func=cmd_list, _parser=p)
    return parser


class Terminated(BaseException):
    """SIGTERM or SIGHUP (e.g. `kill`, `timeout`, a closed terminal, a scheduler ending the job): unwinds like
    Ctrl-C, so locks and temp files go and a local launcher stops its jobs."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(signum)
        self.signum, self.signame = signum, signal.Signals(signum).name


def _on_terminate(signum, frame) -> None:
    raise Terminated(signum)


def _stopped(err: BaseException) -> str:
    n = getattr(err, "stopped_jobs", 0)
    return f"; stopped {n} running job{'s' if n != 1 else ''} and their workers" if n else ""


RESUMES = "an interrupted run resumes from its last epoch on the next 'bench run'"


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    parser = make_parser()
    handled = (signal.SIGTERM, signal.SIGHUP)
    if threading.current_thread() is threading.main_thread():
        previous = [signal.signal(sig, _on_terminate) for sig in handled]
    else:
        previous = []
    try:
        args = parse_command_line(parser, argv)
        return int(args.func(args) or 0)
    except UsageError as err:
        print(f"bench: error: {err}", file=sys.stderr)
        return 2
    except NoResults as err:
        print(f"bench: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        print(f"bench: interrupted{_stopped(err)}; {RESUMES}", file=sys.stderr)
        return 130
    except Terminated as err:
        print(f"bench: terminated ({err.signame}){_stopped(err)}; {RESUMES}", file=sys.stderr)
        return 128 + err.signum
    except BrokenPipeError:  # e.g. `bench list | head`
        sys.stderr.close()
        return 0
    finally:
        for sig, handler in zip(handled, previous):
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
