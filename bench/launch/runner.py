"""Launching a sweep: check it, decide which runs to start, hand them to a launcher (`inline` and `local`:
bench.launch.local; `slurm`: bench.launch.slurm), then print and write its tables and plots."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from bench.config import SweepConfig
from bench.errors import UsageError, unknown
from bench.launch.local import launch_inline, launch_local
from bench.launch.options import LAUNCHERS, LaunchOptions
from bench.launch.slurm import launch_slurm, load_profile
from bench.store import runs
from bench.sweep.checks import check_builds, check_device_here
from bench.sweep.grid import RunSpec, check_run_folders, prepare, schedule_line
from bench.sweep.manifest import (
    read_manifest,
    rel,
    rel_folder,
    slurm_queue,
    update_manifest,
)

# ---------------------------------------------------------------------------------------------
# cluster profiles






# ---------------------------------------------------------------------------------------------
# the sweep manifest and queue state












# ---------------------------------------------------------------------------------------------
# the sweep


def classify(specs: list[RunSpec], out: Path, opts: LaunchOptions) -> tuple[list[RunSpec], dict[str, int]]:
    """Which runs to launch now, and counts of those skipped by reason."""
    manifest = read_manifest(out)
    queued = slurm_queue([r["job_id"] for r in manifest["runs"].values()
                          if r.get("job_id") and r.get("launcher") == "slurm"])
    todo, skipped = [], {"done": 0, "failed": 0, "running": 0, "machine": 0}
    for spec in specs:
        status = runs.run_status(spec.folder)
        job_id = manifest["runs"].get(rel(spec, out), {}).get("job_id")
        if runs.lock_holder(spec.folder) is not None or job_id in queued:
            skipped["running"] += 1
        elif opts.force:
            todo.append(spec)
        elif status == "done":
            skipped["done"] += 1
        elif status == "failed" and not opts.retry_failed and machine_failed(spec.folder):
            skipped["machine"] += 1  # not skipped: the machine failed it (no space, ...); it resumes now
            todo.append(spec)
        elif status in ("failed", "diverged") and not opts.retry_failed:
            skipped["failed"] += 1
        else:
            todo.append(spec)
    return todo, skipped


def machine_failed(folder: Path) -> bool:
    """Whether the run in `folder` failed because of the machine (its summary says so; an unreadable one does not)."""
    from bench.store.records import Malformed, failed_by_machine, load_summary

    try:
        return failed_by_machine(load_summary(folder))
    except Malformed:
        return False


def sweep_line(n_runs: int, n_todo: int, notes: list[str], out: Path, preset: str, launcher: str) -> str:
    retry = "; --retry-failed reruns failed runs" if any(n.endswith(" failed") for n in notes) else ""
    return (f"sweep: {n_runs} runs, {n_todo} to run" + (f" ({', '.join(notes)}: skipped{retry})" if notes else "")
            + f" -> {out}  [preset: {preset}, launcher: {launcher}]")


def run_sweep(sweep: SweepConfig, preset: str, opts: LaunchOptions, stamp_key: str | None = None,
              notes: list[str] | None = None) -> int:
    """Check the sweep, launch the runs it still needs, print and draw its tables. `notes`: lines printed (to stderr)
    once every check has passed, before the sweep line."""
    if opts.launcher not in LAUNCHERS:
        raise unknown("launcher", opts.launcher, LAUNCHERS)
    if opts.max_parallel < 1:
        raise UsageError(f"--max-parallel must be at least 1, got {opts.max_parallel}")
    if opts.runs_per_device < 1 or (opts.runs_per_device > 1 and opts.launcher == "inline"):
        raise UsageError(f"--runs-per-device must be at least 1 and needs --launcher local or slurm, got "
                         f"{opts.runs_per_device} with --launcher {opts.launcher}")
    if opts.runs_per_device > 1 and opts.tasks_per_node > 1:
        raise UsageError("--runs-per-device packs single-process runs: it does not combine with --tasks-per-node")
    if opts.tasks_per_node < 1 or (opts.tasks_per_node > 1 and opts.launcher != "local"):
        raise UsageError("--tasks-per-node N (>= 1) is for --launcher local; on SLURM set tasks_per_node in the "
                         "cluster profile")
    if opts.launcher == "slurm":
        if opts.cluster is None:
            raise UsageError("--launcher slurm needs --cluster slurm/<profile>.yaml")
        profile = load_profile(opts.cluster)
        if shutil.which("sbatch") is None:
            raise UsageError("--launcher slurm: sbatch not found on this machine (is SLURM installed?)")
    out = Path(sweep.out)
    specs = prepare(sweep)
    if opts.launcher != "slurm":  # SLURM runs find their devices on the cluster's nodes
        check_device_here(sweep.compute)
    check_builds(specs)  # a bad value is its own error, never "a different config"
    check_run_folders(specs, opts.force, sweep)
    todo, skipped = classify(specs, out, opts)
    for note in [*(notes or []), *start_notes(specs)]:
        print(note, file=sys.stderr)
    skips = [f"{n} {k}" for k, n in skipped.items() if n and k != "machine"]
    print(sweep_line(len(specs), len(todo), skips, out, preset, opts.launcher))
    print(schedule_line(sweep, [s.config.method for s in specs]))
    if skipped["machine"]:
        n = skipped["machine"]
        print(f"  {n} run{'s' if n > 1 else ''} that failed because of the machine (no space, permission, memory) "
              f"{'resume' if n > 1 else 'resumes'} from {'their' if n > 1 else 'its'} last epoch")
    if opts.force:
        for spec in todo:
            runs.reset_run_folder(spec.folder)
    runs.remove_stale_sweep_temp_files(out, [s.folder for s in specs])
    me = runs.process_identity() if opts.wait else None
    update_manifest(out, launcher=opts.launcher, cancelled=False, launcher_process=me,
                    runs={rel(s, out): {"label": s.label, "depends_on": [rel_folder(d, out) for d in s.depends_on]}
                          for s in specs})
    try:
        failed = False
        if todo:
            if opts.launcher == "inline":
                failed = launch_inline(todo, opts)
            elif opts.launcher == "local":
                failed = launch_local(todo, out, opts)
            else:
                failed = launch_slurm(todo, out, opts, profile)
                if failed is None:
                    return 0
        printed = report(out)
        if stamp_key and not failed and not any(skipped[k] for k in skipped if k != "done"):
            from bench.sweep.stamp import write_done

            write_done(out, stamp_key, [s.folder for s in specs], printed)
        return 1 if failed else 0
    finally:
        if me is not None:  # this launcher is done: nothing left for 'bench cancel' to signal by its identity
            clear_launcher(out, me)


def start_notes(specs: list[RunSpec]) -> list[str]:
    """What the sweep's start says once about its runs: each budget-matched run's epochs, and starting weights whose
    classifier is new."""
    from bench.data import run_dataset
    from bench.sweep.budget import budget_line
    from bench.sweep.pretrained import pretrained_notes

    lines = list(dict.fromkeys(budget_line(s.label.split("/")[2], "/".join(s.label.split("/")[:2]), s.config.budget)
                               for s in specs if getattr(s.config, "budget", None)))
    sources = {b: r for s in specs for b, r in (s.config.pretrained or {}).items()}
    if not sources:
        return lines
    classes = {s.config.dataset: run_dataset(s.config).num_classes for s in specs}
    return lines + pretrained_notes(sources, classes)


def clear_launcher(out: Path, me: dict) -> None:
    try:
        if read_manifest(out, notes=[]).get("launcher_process") == me:
            update_manifest(out, launcher_process=None)
    except OSError:
        pass


























def report(out: Path) -> str:
    """Print the sweep's table; write its tables and plots into the sweep folder, unless they were drawn from
    these very run records already. Returns what it printed."""
    from bench.results.aggregate import TableSpec, load_runs, render, write_tables
    from bench.results.plots import write_plots
    from bench.sweep import stamp

    runs.remove_stale_sweep_temp_files(out)  # temp files of writers killed mid-write
    collection = load_runs([out])
    if collection.models.empty:
        return ""
    current, fingerprint, drawn = stamp.drawn_is_current(out, runs.find_run_folders(out))
    if current:
        tables = [out / f for f in drawn if f.startswith("tables/")]
        plots = [out / f for f in drawn if f.startswith("plots/")]
        fresh = " (unchanged since drawn)"
    else:
        tables = write_tables(collection, out / "tables")
        plots = write_plots(collection, out / "plots")
        stamp.write_drawn(out, fingerprint, [*tables, *plots])
        fresh = ""
    text = (f"\n{render(collection, TableSpec(), 'md')}\n"
            f"tables: {out / 'tables'} ({', '.join(p.name for p in tables)}){fresh}\n"
            f"plots:  {out / 'plots'} ({len(plots)} files: {', '.join(sorted({p.stem for p in plots}))}){fresh}\n")
    sys.stdout.write(text)
    return text
