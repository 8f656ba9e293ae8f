"""Run a prepared sweep locally, one run after another, skipping runs that are already done."""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

from bench import runs
from bench.config import SweepConfig
from bench.sweep import RunSpec, prepare


def run_one(spec: RunSpec, force: bool = False, progress_bar: bool = True) -> dict:
    from bench.train import train_run

    return train_run(spec.config, spec.folder, progress_bar=progress_bar, force=force)


def run_sweep(sweep: SweepConfig, preset: str, force: bool = False, progress_bar: bool = True) -> int:
    specs = prepare(sweep, force=force)
    todo = [s for s in specs if force or runs.run_status(s.folder) != "done"]
    print(f"sweep: {len(specs)} runs ({len(specs) - len(todo)} already done) -> {sweep.out}  [preset: {preset}]")
    failed = 0
    for i, spec in enumerate(todo, 1):
        t0 = time.perf_counter()
        try:
            summary = run_one(spec, force=force, progress_bar=progress_bar)
        except Exception as err:  # one run failing must not stop the sweep
            failed += 1
            last = traceback.format_exception_only(type(err), err)[-1].strip()
            print(f"[{i}/{len(todo)}] {spec.label}: failed: {last}", file=sys.stderr)
            continue
        headline = summary["headline_model"]
        err = summary["final"].get(headline, {}).get("top1_error")
        status = summary["status"]
        failed += status != "done"
        shown = f"top-1 error {err:.2f}% ({headline})" if err is not None else summary.get("divergence", "")
        print(f"[{i}/{len(todo)}] {spec.label}: {status}, {shown}, {time.perf_counter() - t0:.1f}s")
    report(Path(sweep.out))
    return 1 if failed else 0


def report(out: Path) -> None:
    """Print the sweep's table; write its tables and plots into the sweep folder."""
    from bench.aggregate import TableSpec, load_runs, render, write_tables
    from bench.plots import write_plots

    collection = load_runs([out])
    for note in collection.warnings:
        print(f"warning: {note}", file=sys.stderr)
    if collection.models.empty:
        return
    print()
    print(render(collection, TableSpec(), "md"))
    tables = write_tables(collection, out / "tables")
    plots = write_plots(collection, out / "plots")
    print(f"tables: {out / 'tables'} ({', '.join(p.name for p in tables)})")
    print(f"plots:  {out / 'plots'} ({len(plots)} files: {', '.join(sorted({p.stem for p in plots}))})")
