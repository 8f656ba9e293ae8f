"""The SLURM launcher: cluster profiles (YAML with submitit's parameter names), one job array per sweep, and a job of
its own for each run that waits on runs of the same submission (`afterok`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import submitit

from bench.errors import UsageError, did_you_mean
from bench.launch.jobs import RunGroupJob, RunJob
from bench.launch.outcomes import _job_result, dependency_state, finish_job, print_blocked
from bench.store import runs
from bench.sweep.grid import RunSpec
from bench.sweep.manifest import JOB_RECORD, rel, update_manifest

if TYPE_CHECKING:  # annotations only: bench.launch imports this module
    from bench.launch.options import LaunchOptions


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
