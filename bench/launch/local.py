"""The launchers on this machine: `inline` (in this process, one run after another) and `local` (each run in a
submitit subprocess, `--max-parallel` at a time or K per device; a run that depends on others starts once they are
done). Stopping the local launcher (Ctrl-C, SIGTERM, SIGHUP) stops its jobs and their workers."""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import submitit

from bench.launch.jobs import ALREADY_RUNNING, RunJob, execute_run, sigint_ignored, sigint_live
from bench.launch.outcomes import _job_result, _print_result, dependency_state, finish_job, print_blocked
from bench.store import runs
from bench.sweep.grid import RunSpec
from bench.sweep.manifest import JOB_RECORD, rel, update_manifest

if TYPE_CHECKING:  # annotations only: bench.launch imports this module
    from bench.launch.options import LaunchOptions


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
    live = sigint_live()  # read before any submit ignores SIGINT for a moment
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
                    job = executor.submit(RunJob(threads, slots[slot], k, sigint=live), spec)
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

    from bench.store.processes import stop

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
