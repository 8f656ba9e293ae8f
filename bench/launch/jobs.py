"""What runs where a run executes: the callables submitit pickles (`RunJob`: one run; `RunGroupJob`: K runs packed
on one GPU), each a `Checkpointable` that requeues itself on preemption or time-out, and `execute_run`, which trains one
run under its lock. (Jobs queued by an older okd-bench name `bench.launch.RunJob`, which still resolves here.)
"""

from __future__ import annotations

import contextlib
import os
import queue
from collections.abc import Iterator
from typing import Any

import submitit

from bench import plugins
from bench.store import runs
from bench.sweep.grid import RunSpec

ALREADY_RUNNING = "already running"  # what a job returns when another process holds its run


# ---------------------------------------------------------------------------------------------
# one run, wherever it executes


def execute_run(spec: RunSpec, progress_bar: bool = False, job_id: str | None = None,
                runs_per_device: int = 1) -> dict[str, Any]:
    """Train one run under its lock; a failure before training starts is recorded as a failed summary."""
    from bench.store.records import failure_kind, load_summary
    from bench.train.distributed import is_main
    from bench.train.trainer import train_run

    spec.folder.mkdir(parents=True, exist_ok=True)
    if runs.run_status(spec.folder) == "done":  # e.g. a job requeued after its run had finished
        return load_summary(spec.folder)
    lock = runs.RunLock(spec.folder, job_id) if is_main() else contextlib.nullcontext()
    with lock:
        if runs.run_status(spec.folder) == "done":  # finished by another process while this one waited
            return load_summary(spec.folder)
        try:
            # a job in a fresh process (local subprocess, SLURM task, requeue) imports the run's plug-ins again
            plugins.activate(spec.config.plugins, spec.config.loaded_plugins, spec.label)
            return train_run(spec.config, spec.folder, progress_bar=progress_bar, runs_per_device=runs_per_device)
        except Exception as err:
            if is_main() and runs.run_status(spec.folder) != "failed":
                c = spec.config
                runs.write_json(spec.folder / runs.SUMMARY, {
                    "method": c.method, "backbone": c.backbone, "dataset": c.dataset, "seed": c.seed,
                    "status": "failed", "error": f"{type(err).__name__}: {err}", "failure": failure_kind(err),
                    "final": {}, "best": {}})
            raise


def restore_sigint(live: bool = True) -> None:
    """In a job's process: SIGINT raises KeyboardInterrupt again (the local launcher starts jobs with it ignored, so
    that submitit's controller never prints a traceback), so a stop unwinds the run: lock released, trackers
    flushed. `live` False: the launcher itself ignores SIGINT (e.g. started as a background job, `bench run &`, whose
    shell ignores it there): the job keeps ignoring it too, so an interrupt meant for the foreground never kills the
    run while its launcher carries on."""
    import signal
    import threading

    if live and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def sigint_live() -> bool:
    """Whether SIGINT interrupts this process (False when it was started with SIGINT ignored, as a background job)."""
    import signal

    return signal.getsignal(signal.SIGINT) is not signal.SIG_IGN


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while a local job starts: its submitit controller inherits that, so a terminal's Ctrl-C reaches
    the launcher (which stops its jobs) and the training worker (which unwinds), never the controller."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class RunJob(submitit.helpers.Checkpointable):
    """The callable submitit runs for one run of a sweep; requeued as itself on preemption/time-out."""

    # class-level defaults: a job pickled by an older okd-bench, without an attribute added since, reads these
    threads: int | None = None
    gpu: int | None = None
    runs_per_device: int = 1
    sigint: bool = True  # whether SIGINT interrupts the launcher (and so the job)

    def __init__(self, threads: int | None = None, gpu: int | None = None, runs_per_device: int = 1,
                 sigint: bool = True) -> None:
        self.threads, self.gpu, self.runs_per_device, self.sigint = threads, gpu, runs_per_device, sigint

    def __call__(self, spec: RunSpec) -> dict[str, Any]:
        import torch

        restore_sigint(self.sigint)
        threads = self.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0"))  # compute.threads wins in setup
        if threads:
            torch.set_num_threads(threads)
        if self.gpu is not None:  # a packed local run: its slot's GPU
            torch.cuda.set_device(self.gpu)
        try:
            job_id = submitit.JobEnvironment().job_id
        except RuntimeError:
            job_id = None
        from bench.train.distributed import maybe_init_distributed

        with maybe_init_distributed():
            return run_or_skip(spec, job_id, self.runs_per_device)

    def checkpoint(self, spec: RunSpec) -> submitit.helpers.DelayedSubmission:
        # the trainer checkpoints at every epoch boundary: resubmitting the same run resumes from there
        return submitit.helpers.DelayedSubmission(RunJob(self.threads, self.gpu, self.runs_per_device, self.sigint),
                                                  spec)


def run_or_skip(spec: RunSpec, job_id: str | None, runs_per_device: int) -> dict[str, Any]:
    try:
        return execute_run(spec, progress_bar=False, job_id=job_id, runs_per_device=runs_per_device)
    except runs.AlreadyRunning as busy:  # another process trains this run: this job leaves it alone
        return {"status": ALREADY_RUNNING, "holder": busy.holder}


def _packed_member(spec: RunSpec, job_id: str | None, runs_per_device: int, threads: int, results) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        results.put((str(spec.folder), run_or_skip(spec, job_id, runs_per_device)))
    except Exception as err:  # recorded in the run's summary; reported to the group
        results.put((str(spec.folder), {"status": "failed", "error": f"{type(err).__name__}: {err}"}))


class RunGroupJob(submitit.helpers.Checkpointable):
    """One SLURM task (one GPU) training K runs of the sweep at once, each in its own process
    (`--runs-per-device K`): small networks leave a GPU mostly idle, and K runs fill it. Requeued as itself;
    each run resumes from its own checkpoint."""

    threads: int | None = None  # the default of a job pickled without it (see RunJob)

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    def __call__(self, specs: list[RunSpec]) -> list[dict[str, Any]]:
        import multiprocessing

        try:
            job_id = submitit.JobEnvironment().job_id
        except RuntimeError:
            job_id = None
        cpus = self.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0")) or (os.cpu_count() or 1)
        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()
        procs = [ctx.Process(target=_packed_member, args=(spec, job_id, len(specs), max(1, cpus // len(specs)),
                                                          results)) for spec in specs]
        for p in procs:
            p.start()
        by_folder: dict[str, dict] = {}
        while len(by_folder) < len(procs):  # a member killed outright (OOM, signal) never reports: stop waiting
            try:
                folder, result = results.get(timeout=5)
                by_folder[folder] = result
            except queue.Empty:
                if not any(p.is_alive() for p in procs):  # all gone: take what they sent before going
                    while True:
                        try:
                            folder, result = results.get(timeout=1)
                        except queue.Empty:
                            break
                        by_folder[folder] = result
                    break
        for p in procs:
            p.join()
        return [by_folder.get(str(spec.folder), {"status": "failed", "error": f"its process ended with exit code "
                                                                               f"{p.exitcode} before reporting"})
                for spec, p in zip(specs, procs)]

    def checkpoint(self, specs: list[RunSpec]) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(RunGroupJob(self.threads), specs)


