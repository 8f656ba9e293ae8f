"""How a launched run ended, as the launchers report it: one line per run (done with its error, failed with its
reason, skipped because another process trains it, not started because its teacher did not finish)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bench.launch.jobs import ALREADY_RUNNING
from bench.store import runs
from bench.sweep.grid import RunSpec
from bench.sweep.manifest import restore_holder


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
    from bench.store.records import Malformed, load_summary

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


def _job_result(job) -> Any:
    """What the job returned, or the exception it ended with (its run's failure is also in its summary)."""
    try:
        return job.result()
    except Exception as err:
        return err
