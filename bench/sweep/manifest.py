"""A sweep's records of its jobs: `sweep.json` (which run is which job, with which launcher, depending on which
runs), each run's `job.json`, and the SLURM queue's view of them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.store import runs
from bench.sweep.grid import RunSpec

MANIFEST = "sweep.json"
MANIFEST_LOCK = ".sweep.lock"
JOB_RECORD = "job.json"


def read_manifest(out: Path, notes: list[str] | None = None) -> dict[str, Any]:
    """sweep.json, validated; a malformed one reads as empty, named in `notes` (or printed as a warning)."""
    from bench.store.records import Malformed, load_manifest

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
    from bench.store.records import Malformed, load_manifest

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
