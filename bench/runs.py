"""Run folders: where a run lives, atomic writes, and reading a run's state back."""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.errors import UsageError

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
CONFIG = "config.yaml"
CHECKPOINT = "last.pt"

_SAFE = re.compile(r"[^A-Za-z0-9_.+-]")


def safe_part(part: str) -> str:
    """A path component that cannot escape its parent: no separators, no '..', no empty name."""
    cleaned = _SAFE.sub("_", str(part)).strip(".")
    if not cleaned:
        raise UsageError(f"'{part}' cannot name a run folder")
    return cleaned


def run_dir(out: Path, dataset: str, backbone: str, method: str, seed: int) -> Path:
    """`<out>/<dataset>/<backbone>/<method>/seed<k>`, each part sanitised."""
    return Path(out).joinpath(safe_part(dataset), safe_part(backbone), safe_part(method), f"seed{int(seed)}")


# Fault-injection aid for the tests: seconds to pause inside every write, before the rename.
_SLOW_WRITE_S = float(os.environ.get("OKD_BENCH_SLOW_WRITE_S", "0") or 0)


def atomic_write(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Write through a temp file in the same folder, fsync, then rename over `path`: a reader sees the
    old file or the new one, never a partial one, whenever the writer is killed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            write(f)
            f.flush()
            if _SLOW_WRITE_S:
                time.sleep(_SLOW_WRITE_S)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: Path, records: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def read_json(path: Path) -> Any | None:
    """The parsed file, or None when it is missing, empty or not valid JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict]:
    """Every valid JSON object line of the file; a truncated last line is dropped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


RUN_FILES = (SUMMARY, METRICS, CONFIG, CHECKPOINT)


def find_run_folders(root: Path, markers: tuple[str, ...] = RUN_FILES) -> set[Path]:
    """Folders under `root` (itself included) holding any of `markers`; submitit's log folders are skipped."""
    found: set[Path] = set()
    for name in markers:
        found.update(p.parent for p in Path(root).rglob(name) if p.is_file() and ".submitit" not in p.parts)
    return found


def run_status(path: Path) -> str:
    """'done', 'failed', 'diverged' (from summary.json), 'partial' (started) or 'missing'."""
    summary = read_json(Path(path) / SUMMARY)
    if isinstance(summary, dict) and summary.get("status") in ("done", "failed", "diverged"):
        return summary["status"]
    return "partial" if Path(path).exists() else "missing"


# ---------------------------------------------------------------------------------------------
# a run's lock: one live copy of a run at a time


LOCK = "running.json"
HEARTBEAT_S = 15.0
STALE_S = 120.0


class AlreadyRunning(Exception):
    """Another live process holds this run's lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_holder(folder: Path) -> dict | None:
    """The record of a live process holding the run's lock, or None (no lock, or a stale one).

    A lock is live when its process runs on this host, or, from another host, when its heartbeat is
    recent. A requeued SLURM job (same job id, new process) is not another holder.
    """
    record = read_json(Path(folder) / LOCK)
    if not isinstance(record, dict):
        return None
    if record.get("host") == socket.gethostname():
        return record if _pid_alive(int(record.get("pid", -1))) else None
    return record if time.time() - float(record.get("heartbeat", 0)) < STALE_S else None


class RunLock:
    """Held while a run trains: `running.json` with host, pid, job id and a heartbeat every 15 s."""

    def __init__(self, folder: Path, job_id: str | None = None) -> None:
        self.folder, self.job_id = Path(folder), job_id
        self._stop = None
        self._thread = None

    def _record(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "job_id": self.job_id,
                "started": self.started, "heartbeat": time.time()}

    def __enter__(self) -> RunLock:
        holder = lock_holder(self.folder)
        if holder is not None and holder.get("pid") != os.getpid() and (
                self.job_id is None or holder.get("job_id") != self.job_id):
            raise AlreadyRunning(f"{self.folder} is already running (pid {holder.get('pid')} on "
                                 f"{holder.get('host')}, job {holder.get('job_id')})")
        self.started = time.time()
        write_json(self.folder / LOCK, self._record())
        self._stop = threading.Event()

        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    write_json(self.folder / LOCK, self._record())
                except OSError:
                    pass

        self._thread = threading.Thread(target=beat, daemon=True, name="run-heartbeat")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        (self.folder / LOCK).unlink(missing_ok=True)


def remove_stale_temp_files(folder: Path) -> None:
    """Temp files left by a writer that was killed mid-write (the real files are intact)."""
    for path in Path(folder).glob(".*.tmp"):
        path.unlink(missing_ok=True)


def reset_run_folder(folder: Path) -> None:
    """Remove a run's files (for --force), leaving the folder itself."""
    for name in (SUMMARY, METRICS, CONFIG, CHECKPOINT, "job.json"):
        (Path(folder) / name).unlink(missing_ok=True)
