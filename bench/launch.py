"""Launching a sweep's runs: `inline` (this process, for debugging), `local` (submitit subprocesses,
`--max-parallel` at a time) or `slurm` (one submitit job array per sweep, from a cluster profile).

Every launched run is a `RunJob`, a submitit `Checkpointable`: on preemption or time-out submitit calls
`checkpoint()`, which requeues the same job; the requeued job resumes from the run's last checkpoint
(epoch boundary). A run holds a lock (`running.json`, with a heartbeat) while it trains, so no second
copy of it ever starts; resubmitting a sweep skips done runs and, without `--retry-failed`, failed ones.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from bench import runs
from bench.config import SweepConfig
from bench.errors import UsageError, did_you_mean, unknown
from bench.jobs import (  # noqa: F401  (RunJob, RunGroupJob: the names jobs queued by older versions pickled)
    ALREADY_RUNNING,
    RunGroupJob,
    RunJob,
    execute_run,
    sigint_ignored,
)
from bench.sweep import (
    RunSpec,
    check_builds,
    check_device_here,
    check_run_folders,
    outside_runs,
    prepare,
    schedule_line,
    warn_outside,
)

LAUNCHERS = ("local", "inline", "slurm")
MANIFEST = "sweep.json"
MANIFEST_LOCK = ".sweep.lock"
JOB_RECORD = "job.json"


@dataclass
class LaunchOptions:
    launcher: str = "local"
    cluster: Path | None = None
    max_parallel: int = 1
    tasks_per_node: int = 1
    runs_per_device: int = 1
    wait: bool = True
    retry_failed: bool = False
    force: bool = False
    progress_bar: bool = True


# ---------------------------------------------------------------------------------------------
# cluster profiles


def valid_profile_keys() -> list[str]:
    generic = sorted(submitit.AutoExecutor._valid_parameters())
    slurm = sorted("slurm_" + k for k in submitit.SlurmExecutor._valid_parameters())
    return generic + slurm


def load_profile(path: Path) -> dict[str, Any]:
    """A SLURM profile: YAML with submitit's parameter names (timeout_min, gpus_per_node,
    slurm_partition, slurm_setup, ...); unknown keys are errors with a close match."""
    from bench.config import load_yaml

    if not Path(path).exists():
        raise UsageError(f"cluster profile not found: {path} (see slurm/*.yaml)")
    profile = load_yaml(path)
    valid = valid_profile_keys()
    for key in profile:
        if key not in valid:
            raise UsageError(f"{path}: unknown key '{key}'{did_you_mean(key, valid)} (valid: submitit's "
                             f"parameters, e.g. timeout_min, gpus_per_node, cpus_per_task, mem_gb, "
                             f"slurm_partition, slurm_account, slurm_qos, slurm_setup)")
    try:
        submitit.AutoExecutor(folder="/tmp/okd-bench-profile-check", cluster="local").update_parameters(
            **{k: v for k, v in profile.items() if not k.startswith("slurm_")})
    except (AssertionError, NameError, TypeError, ValueError) as err:
        raise UsageError(f"{path}: {str(err).splitlines()[0]}") from None
    return profile


# ---------------------------------------------------------------------------------------------
# the sweep manifest and queue state


def read_manifest(out: Path, notes: list[str] | None = None) -> dict[str, Any]:
    """sweep.json, validated; a malformed one reads as empty, named in `notes` (or printed as a warning)."""
    from bench.records import Malformed, load_manifest

    try:
        return load_manifest(out)
    except Malformed as err:
        note = f"{err}; read as empty"
        if notes is None:
            print(f"warning: {note}", file=sys.stderr)
        else:
            notes.append(note)
        return {"runs": {}}


def update_manifest(out: Path, **changes: Any) -> dict[str, Any]:
    """Read-modify-write of sweep.json under the sweep's flock, so that concurrent launchers lose no update; a
    malformed manifest is kept aside (sweep.json.rejected-<time>), not overwritten."""
    from bench.records import Malformed, load_manifest

    out = Path(out)
    with runs.FileLock(out / MANIFEST_LOCK):
        try:
            manifest = load_manifest(out)
        except Malformed as err:
            aside = out / f"{MANIFEST}.rejected-{int(time.time())}"
            (out / MANIFEST).replace(aside)
            print(f"warning: {err}; kept as {aside.name}", file=sys.stderr)
            manifest = {"runs": {}}
        run_changes = changes.pop("runs", {})
        manifest.setdefault("runs", {})
        for key, value in run_changes.items():
            manifest["runs"][key] = {**manifest["runs"].get(key, {}), **value}
        manifest.update(changes)
        runs.write_json(out / MANIFEST, manifest)
    return manifest


def slurm_queue(job_ids: list[str]) -> dict[str, str]:
    """{job id: state} of the given jobs still in the SLURM queue ({} without SLURM)."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(sorted(set(job_ids)))],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return {}
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def rel(spec: RunSpec, out: Path) -> str:
    return spec.folder.relative_to(out).as_posix()


def rel_folder(folder: Path, out: Path) -> str:
    return folder.relative_to(out).as_posix() if folder.is_relative_to(out) else str(folder)


# ---------------------------------------------------------------------------------------------
# the sweep


def classify(specs: list[RunSpec], out: Path, opts: LaunchOptions) -> tuple[list[RunSpec], dict[str, int]]:
    """Which runs to launch now, and counts of those skipped by reason."""
    manifest = read_manifest(out)
    queued = slurm_queue([r["job_id"] for r in manifest["runs"].values()
                          if r.get("job_id") and r.get("launcher") == "slurm"])
    todo, skipped = [], {"done": 0, "failed": 0, "running": 0}
    for spec in specs:
        status = runs.run_status(spec.folder)
        job_id = manifest["runs"].get(rel(spec, out), {}).get("job_id")
        if runs.lock_holder(spec.folder) is not None or job_id in queued:
            skipped["running"] += 1
        elif opts.force:
            todo.append(spec)
        elif status == "done":
            skipped["done"] += 1
        elif status in ("failed", "diverged") and not opts.retry_failed:
            skipped["failed"] += 1
        else:
            todo.append(spec)
    return todo, skipped


def sweep_line(n_runs: int, n_todo: int, notes: list[str], out: Path, preset: str, launcher: str) -> str:
    return (f"sweep: {n_runs} runs, {n_todo} to run" + (f" ({', '.join(notes)}: skipped)" if notes else "")
            + f" -> {out}  [preset: {preset}, launcher: {launcher}]")


def run_sweep(sweep: SweepConfig, preset: str, opts: LaunchOptions, stamp_key: str | None = None) -> int:
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
    check_builds(specs + outside_runs(sweep))  # a bad value is its own error, never "a different config"
    check_run_folders(specs, opts.force, sweep)
    warn_outside(sweep)
    todo, skipped = classify(specs, out, opts)
    notes = [f"{n} {k}" for k, n in skipped.items() if n]
    print(sweep_line(len(specs), len(todo), notes, out, preset, opts.launcher))
    print(schedule_line(sweep))
    if skipped["failed"]:
        print("  failed runs are not rerun without --retry-failed")
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
            from bench.stamp import write_done

            write_done(out, stamp_key, [s.folder for s in specs], printed)
        return 1 if failed else 0
    finally:
        if me is not None:  # this launcher is done: nothing left for 'bench cancel' to signal by its identity
            clear_launcher(out, me)


def clear_launcher(out: Path, me: dict) -> None:
    try:
        if read_manifest(out, notes=[]).get("launcher_process") == me:
            update_manifest(out, launcher_process=None)
    except OSError:
        pass


def already_running(result: Any) -> bool:
    """Whether a job's result says another process holds its run."""
    return isinstance(result, dict) and result.get("status") == ALREADY_RUNNING


def finish_job(out: Path, i: int, n: int, spec: RunSpec, seconds: float, result: Any) -> bool:
    """A launched job has ended: point the run's records back at the holder where the job found its run held,
    and print its line; True when the run did not end `done`."""
    if already_running(result):
        restore_holder(out, spec, result)
    state, dep = dependency_state(spec, set())
    if state == "blocked" and runs.run_status(spec.folder) in ("missing", "partial"):  # SLURM cancelled it
        return print_blocked(i, n, spec, dep, out)
    return _print_result(i, n, spec, seconds, result)


def _print_result(i: int, n: int, spec: RunSpec, seconds: float, result: Any = None) -> bool:
    """One line per finished run; True when the run did not end `done`. `result`: what the job returned."""
    if already_running(result):
        holder = result.get("holder") or {}
        print(f"[{i}/{n}] {spec.label}: skipped, already running elsewhere (pid {holder.get('pid')} on "
              f"{holder.get('host')}, job {holder.get('job_id')})", file=sys.stderr)
        return False
    from bench.records import Malformed, load_summary

    try:
        summary = load_summary(spec.folder) or {}
    except Malformed as err:
        summary = {"status": "failed", "error": str(err)}
    if not summary and isinstance(result, BaseException):  # no summary could be written (e.g. a full disk)
        summary = {"status": "failed", "error": str(result).strip()}
    status = summary.get("status", "failed")
    if status == "done":
        head = summary["headline_model"]
        shown = f"top-1 error {summary['final'][head]['top1_error']:.2f}% ({head})"
    else:
        shown = (summary.get("error") or (summary.get("divergence") or {}).get("message") or "no summary").strip()
        shown = shown.splitlines()[-1] if shown else shown
    stream = sys.stdout if status == "done" else sys.stderr
    print(f"[{i}/{n}] {spec.label}: {status}, {shown} ({seconds:.1f}s)", file=stream)
    return status != "done"


def dependency_state(spec: RunSpec, in_flight: set[Path]) -> tuple[str, Path | None]:
    """('ready', None) when every run `spec` depends on is done; ('wait', dep) while one is still queued or training
    (in this launch, or held by another process); ('blocked', dep) when one ended otherwise (failed, diverged) or will
    not run: `spec` then never starts."""
    for dep in spec.depends_on:
        if runs.run_status(dep) == "done":
            continue
        if dep in in_flight or runs.lock_holder(dep) is not None:
            return "wait", dep
        return "blocked", dep
    return "ready", None


def print_blocked(i: int, n: int, spec: RunSpec, dep: Path, out: Path | None = None) -> bool:
    where = dep.relative_to(out).as_posix() if out is not None and dep.is_relative_to(out) else str(dep)
    state = runs.run_status(dep)
    why = "still running elsewhere; run the sweep again once it is done" if runs.lock_holder(dep) else state
    print(f"[{i}/{n}] {spec.label}: not started, its teacher {where} is {why}", file=sys.stderr)
    return True


def launch_inline(todo: list[RunSpec], opts: LaunchOptions) -> int:
    failed = 0
    for i, spec in enumerate(todo, 1):
        state, dep = dependency_state(spec, set())
        if state != "ready":
            failed += print_blocked(i, len(todo), spec, dep)
            continue
        t0 = time.perf_counter()
        result: Any = None
        try:
            execute_run(spec, progress_bar=opts.progress_bar)
        except runs.AlreadyRunning as busy:
            result = {"status": ALREADY_RUNNING, "holder": busy.holder}
        except Exception as err:  # recorded in the run's summary where it could be written; the sweep goes on
            result = err
            if os.environ.get("OKD_BENCH_DEBUG"):
                traceback.print_exc(file=sys.stderr)
        failed += _print_result(i, len(todo), spec, time.perf_counter() - t0, result)
    return failed


def launch_local(todo: list[RunSpec], out: Path, opts: LaunchOptions) -> int:
    """Each run in its own submitit subprocess, at most `max_parallel` at a time; with `--runs-per-device K`,
    K at a time on each visible GPU (or K on the CPU), each packed run pinned to its slot's GPU."""
    executor = submitit.LocalExecutor(folder=out / ".submitit" / "%j")
    executor.update_parameters(timeout_min=60 * 24 * 30, tasks_per_node=opts.tasks_per_node)
    k = opts.runs_per_device
    gpus = local_gpus() if k > 1 else 0
    slots = [i % gpus if gpus else None for i in range(k * max(gpus, 1))] if k > 1 else [None] * opts.max_parallel
    threads = max(1, (os.cpu_count() or 1) // (len(slots) * opts.tasks_per_node))
    pending, running, failed, finished = list(todo), {}, 0, 0
    t0, free = {}, list(range(len(slots)))
    try:
        while pending or running:
            in_flight = {spec.folder for spec in pending} | {entry[1].folder for entry in running.values()}
            ready = []
            for spec in list(pending):
                state, dep = dependency_state(spec, in_flight - {spec.folder})
                if state == "blocked":  # its teacher failed: it never starts
                    pending.remove(spec)
                    finished += 1
                    failed += print_blocked(finished, len(todo), spec, dep, out)
                elif state == "ready":
                    ready.append(spec)
            while ready and free:
                spec, slot = ready.pop(0), free.pop(0)
                pending.remove(spec)
                with sigint_ignored():
                    job = executor.submit(RunJob(threads, slots[slot], k), spec)
                record = {"launcher": "local", "job_id": job.job_id,
                          "process": runs.process_identity(int(job.job_id))}
                running[job.job_id] = (job, spec, slot, record["process"])
                t0[job.job_id] = time.perf_counter()
                runs.write_json(spec.folder / JOB_RECORD, record)
                update_manifest(out, runs={rel(spec, out): record})
            time.sleep(0.5)
            for job_id, (job, spec, slot, _) in list(running.items()):
                if job.done():
                    del running[job_id]
                    free.append(slot)
                    finished += 1
                    failed += finish_job(out, finished, len(todo), spec, time.perf_counter() - t0[job_id],
                                         _job_result(job))
    except BaseException as stop:  # Ctrl-C, SIGTERM, SIGHUP: this launcher's jobs and their workers stop with it
        stop.stopped_jobs = stop_local_jobs([process for *_, process in running.values()])  # type: ignore[attr-defined]
        raise
    return failed


def stop_local_jobs(controllers: list[dict]) -> int:
    """Stop local jobs (their submitit controllers, training workers and data workers), deaf to a second Ctrl-C
    meanwhile; returns how many jobs were running."""
    import signal
    import threading

    from bench.processes import stop

    live = [c for c in controllers if runs.is_same_process(c)]
    main = threading.current_thread() is threading.main_thread()
    previous = [signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)] if main else []
    try:
        stop(live)
    finally:
        for sig, handler in zip((signal.SIGINT, signal.SIGTERM), previous):
            signal.signal(sig, handler)
    return len(live)


def local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _job_result(job) -> Any:
    """What the job returned, or the exception it ended with (its run's failure is also in its summary)."""
    try:
        return job.result()
    except Exception as err:
        return err


def restore_holder(out: Path, spec: RunSpec, result: dict) -> None:
    """A job that found its run held by another process recorded itself at submission: point the run's records
    back at the holder, so that status and cancel follow the process that really trains it."""
    holder = result.get("holder") or {}
    job_id = holder.get("job_id")
    launcher = "inline" if job_id is None else "local" if str(job_id) == str(holder.get("pid")) else "slurm"
    record = {"launcher": launcher, "job_id": job_id,
              "process": {k: holder.get(k) for k in ("host", "pid", "boot_id", "start_ticks")}}
    runs.write_json(spec.folder / JOB_RECORD, record)
    update_manifest(out, runs={rel(spec, out): record})


def launch_slurm(todo: list[RunSpec], out: Path, opts: LaunchOptions, profile: dict[str, Any]) -> int | None:
    """One job array for the sweep's runs that can start now; each run that depends on runs of this submission (a KD
    student on its teacher) is a job of its own that SLURM holds until they ended well (`afterok`, and cancelled
    if they did not: `kill-on-invalid-dep`), so no student holds a GPU while its teacher trains. Waits for all of
    them unless --no-wait (then returns None)."""
    executor = submitit.AutoExecutor(folder=out / ".submitit" / "%j", cluster="slurm")
    params = {"name": f"okd-{out.name}", "timeout_min": 60, "cpus_per_task": 1, **profile}
    folders = {spec.folder for spec in todo}
    later = [spec for spec in todo if any(dep in folders for dep in spec.depends_on)]
    now, blocked = [], 0
    for spec in todo:
        if spec in later:
            continue
        state, dep = dependency_state(spec, set())
        if state == "ready":
            now.append(spec)
        else:
            blocked += print_blocked(0, len(todo), spec, dep, out)
    todo = now + later
    params.setdefault("slurm_array_parallelism", max(1, len(now)))
    executor.update_parameters(**params)
    k = opts.runs_per_device
    groups = [now[i:i + k] for i in range(0, len(now), k)]  # one array task (one GPU) per K runs
    jobs = (executor.map_array(RunJob(), now) if k == 1 else executor.map_array(RunGroupJob(), groups)) if now else []
    task_of = {spec.folder: job.job_id for job, group in zip(jobs, groups) for spec in group}
    for spec in later:
        after = ":".join(task_of[dep] for dep in spec.depends_on if dep in task_of)
        executor.update_parameters(slurm_additional_parameters={
            **profile.get("slurm_additional_parameters", {}), "dependency": f"afterok:{after}",
            "kill-on-invalid-dep": "yes"})
        jobs.append(executor.submit(RunJob(), spec))
        groups.append([spec])
    if not jobs:
        return blocked
    for job, group in zip(jobs, groups):
        for spec in group:
            runs.write_json(spec.folder / JOB_RECORD, {"launcher": "slurm", "job_id": job.job_id})
    update_manifest(out, runs={rel(s, out): {"launcher": "slurm", "job_id": j.job_id}
                               for j, group in zip(jobs, groups) for s in group})
    print(f"submitted job array {jobs[0].job_id.split('_')[0]} ({len(now)} runs in {len(groups) - len(later)} tasks)"
          + (f" and {len(later)} jobs that wait on their teachers (afterok)" if later else "")
          + f"; 'bench status {out}' to follow, 'bench cancel {out}' to stop")
    if not opts.wait:
        return None
    failed, started, finished = blocked, time.perf_counter(), blocked
    by_id = {job.job_id: group for job, group in zip(jobs, groups)}
    for job in submitit.helpers.as_completed(jobs, poll_frequency=2):
        result = _job_result(job)
        group = by_id[job.job_id]
        results = result if isinstance(result, list) else [result] * len(group)
        for spec, one in zip(group, results):
            finished += 1
            failed += finish_job(out, finished, len(todo), spec, time.perf_counter() - started, one)
    return failed


def report(out: Path) -> str:
    """Print the sweep's table; write its tables and plots into the sweep folder, unless they were drawn from
    these very run records already. Returns what it printed."""
    from bench import stamp
    from bench.aggregate import TableSpec, load_runs, render, write_tables
    from bench.plots import write_plots

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
