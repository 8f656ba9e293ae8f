"""The `bench` argument parser: every subcommand and flag, read as written (no abbreviations)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.cli.commands import cmd_cancel, cmd_list, cmd_run, cmd_status
from bench.cli.results import cmd_export, cmd_plot, cmd_report, cmd_speed, cmd_table
from bench.errors import UsageError, did_you_mean


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


def add_grid_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("the grid (stable interface)")
    g.add_argument("--methods", help="comma-separated, e.g. pcl,one (see 'bench list')")
    g.add_argument("--datasets", help="comma-separated: digits, cifar10, cifar100, svhn, stl10, tinyimagenet, "
                                      "imagenet, or NAME=imagefolder:ROOT for your own images")
    g.add_argument("--backbones", help="comma-separated timm names, e.g. cifar_resnet32,resnet18")
    g.add_argument("--seeds", help="comma-separated non-negative integers, e.g. 0,1,2")
    g.add_argument("--epochs", type=int, help="training epochs of every run")
    g.add_argument("--out", help="results folder of the sweep (default: the preset's, e.g. results/demo)")
    from bench.sweep.settings import preset_names

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
    p.add_argument("--costs", action="store_true", help="also print the cost table (with training compute)")
    p.add_argument("--budget", action="store_true", help="also print each method against a baseline given its "
                                                          "training compute (runs such as vanilla[budget=pcl])")
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
