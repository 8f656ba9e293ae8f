"""`bench table`, `plot`, `report`, `export` and `speed`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.cli.grid import load_cli_plugins, parse_names
from bench.errors import NoResults, UsageError, unknown


def _collect(args: argparse.Namespace):
    from bench.results.aggregate import TableSpec, load_runs

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
    from bench.results.aggregate import QUANTITIES

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
    from bench.files import check_output_folder
    from bench.results.aggregate import cost_markdown, cost_table, render, select_models, write_tables
    from bench.store import runs

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
    if args.budget:
        from bench.results.compute import budget_markdown, budget_table

        print(budget_markdown(budget_table(collection)))
    if args.write:
        paths = write_tables(collection, Path(args.write), spec)
        print(f"tables written to {args.write}: {', '.join(p.name for p in paths)}", file=sys.stderr)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from bench.files import check_output_folder
    from bench.results.plots import write_plots

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
    from bench.speed.measure import run_speed
    from methods import METHODS

    load_cli_plugins(args)
    methods = parse_names(args.methods, "methods")
    for m in methods:
        METHODS.get(m)
    names = parse_names(args.backbones, "backbones")
    for b in names:
        backbones.check_backbone(b)
    if args.csv is not None:
        from bench.store.runs import check_output_file

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
    from bench.results.report import write_report

    return write_report(args.results, args.out)


def cmd_export(args: argparse.Namespace) -> int:
    from bench.results.export import export_run

    return export_run(args.run, args.model, args.format, args.out)
