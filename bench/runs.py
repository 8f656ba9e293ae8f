"""Run folders: where a run lives, atomic writes, and reading a run's state back."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.errors import UsageError
from bench.processes import is_same_process, process_identity  # noqa: F401  (also used from here)

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
METRICS_CSV = "metrics.csv"  # the same, flat, for spreadsheets
LOGGERS_STATE = "loggers.json"  # the trackers' W&B run id and last epochs on disk (bench.loggers)
TENSORBOARD_DIR = "tensorboard"
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


class StorageError(UsageError):
    """A write that the file system refused (no space, no permission, read-only): names the path."""


def storage_error(err: BaseException, path: Path) -> StorageError | None:
    """The StorageError an exception from writing `path` amounts to, or None when it is something else. Some
    writers (torch.save's zip writer) report a full disk in their own words, so the free space is asked too."""
    code = getattr(err, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or (not isinstance(err, OSError) and _nearly_full(path.parent)):
        return StorageError(f"no space left on {path.parent} (writing {path.name})")
    if code in (errno.EACCES, errno.EPERM):
        return StorageError(f"permission denied writing {path}")
    if code == errno.EROFS:
        return StorageError(f"read-only file system: cannot write {path}")
    return None


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def atomic_write(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Write through a temp file in the same folder, fsync, then rename over `path`: a reader sees the
    old file or the new one, never a partial one, whenever the writer is killed. A refused write (disk full,
    permissions) raises StorageError naming the path, and leaves no temp file."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            write(f)
            f.flush()
            if _SLOW_WRITE_S:
                time.sleep(_SLOW_WRITE_S)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        named = storage_error(err, path) if isinstance(err, Exception) else None
        if named is not None:
            raise named from None
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: Path, records: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))


RUN_FILES = (SUMMARY, METRICS, CONFIG, CHECKPOINT)


def find_run_folders(root: Path, markers: tuple[str, ...] = RUN_FILES) -> set[Path]:
    """Folders under `root` (itself included) holding any of `markers`; submitit's log folders are skipped."""
    found: set[Path] = set()
    for name in markers:
        found.update(p.parent for p in Path(root).rglob(name) if p.is_file() and ".submitit" not in p.parts)
    return found


def check_output_file(path: Path, folder: Path | None, flag: str = "--out") -> None:
    """An output file path that can be written: not a folder, in an existing writable folder, and never one of
    a run's own files."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: folder {parent} is not writable")
    if folder is not None and path.resolve() in {(Path(folder) / n).resolve() for n in RUN_FILES}:
        raise UsageError(f"--out {path} would overwrite the run's own {path.name}")


def run_status(path: Path) -> str:
    """'done', 'failed', 'diverged' (from summary.json), 'corrupt' (a summary.json that does not validate),
    'partial' (started) or 'missing'."""
    from bench.records import Malformed, load_summary

    try:
        summary = load_summary(path)
    except Malformed:
        return "corrupt"
    if summary is not None:
        return summary["status"]
    return "partial" if Path(path).exists() else "missing"


# ---------------------------------------------------------------------------------------------
# one lock primitive: flock on a lock file (atomic; released by the kernel when its holder dies)


class LockBusy(Exception):
    """The lock is held by another process."""


class FileLock:
    """An exclusive flock on `path` (created if needed). `blocking=False` raises LockBusy when it is held; a
    holder killed by any signal releases it with its last file descriptor, so no lock is ever left stale."""

    def __init__(self, path: Path, blocking: bool = True, attempts: int = 5) -> None:
        self.path, self.blocking, self.attempts = Path(path), blocking, attempts
        self.fd: int | None = None

    def acquire(self) -> FileLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        for attempt in range(self.attempts):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.blocking else fcntl.LOCK_NB))
                self.fd = fd
                return self
            except BlockingIOError:
                if attempt + 1 < self.attempts:
                    time.sleep(0.05)
        os.close(fd)
        raise LockBusy(str(self.path))

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ---------------------------------------------------------------------------------------------
# a run's lock: one live copy of a run at a time


LOCK = "running.json"  # who holds the run: host, pid, start time, job id, heartbeat (for status and other hosts)
LOCK_FILE = ".run.lock"  # the flock itself
HEARTBEAT_S = 15.0
STALE_S = 120.0


class AlreadyRunning(Exception):
    """Another live process holds this run's lock."""

    def __init__(self, folder: Path, holder: dict) -> None:
        super().__init__(f"{folder} is already running (pid {holder.get('pid')} on {holder.get('host')}, job "
                         f"{holder.get('job_id')})")
        self.holder = holder


def lock_holder(folder: Path, notes: list[str] | None = None) -> dict | None:
    """The record of a live process holding the run, or None (no record, a dead holder, or a record that cannot
    be read: a malformed running.json is no lock, and is named in `notes` when given).

    On this host the record's process identity (pid and start time) must be alive; from another host (a shared
    file system) its heartbeat must be recent. A requeued SLURM job (same job id, new process) is not another
    holder: its old process is gone."""
    from bench.records import Malformed, load_lock

    try:
        record = load_lock(folder)
    except Malformed as err:
        if notes is not None:
            notes.append(f"{err}; not taken as a lock")
        return None
    if record is None:
        return None
    if record["host"] == socket.gethostname():
        return record if is_same_process(record) else None
    return record if time.time() - float(record.get("heartbeat") or 0) < STALE_S else None


class RunLock:
    """Held while a run trains: an exclusive flock on `<run>/.run.lock` (atomic: of two processes racing for
    one run exactly one gets it), and `running.json` with the holder's identity and a heartbeat every 15 s."""

    def __init__(self, folder: Path, job_id: str | None = None) -> None:
        self.folder, self.job_id = Path(folder), job_id
        self._lock = FileLock(self.folder / LOCK_FILE, blocking=False)
        self._stop = None
        self._thread = None

    def _record(self) -> dict:
        return {**self.identity, "job_id": self.job_id, "started": self.started, "heartbeat": time.time()}

    def __enter__(self) -> RunLock:
        try:
            self._lock.acquire()
        except LockBusy:
            raise AlreadyRunning(self.folder, lock_holder(self.folder) or {}) from None
        remote = lock_holder(self.folder)  # a holder on another host sharing this folder (no common flock)
        if remote is not None and remote.get("host") != socket.gethostname() and (
                self.job_id is None or remote.get("job_id") != self.job_id):
            self._lock.release()
            raise AlreadyRunning(self.folder, remote)
        self.identity = process_identity()
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
        self._lock.release()


STALE_TEMP_S = 600.0  # a sweep-level temp file this old belongs to a killed writer


def remove_stale_sweep_temp_files(out: Path) -> None:
    """The killed writers' temp files of a sweep folder, its tables and its plots (other launchers may be writing
    there now: only old ones)."""
    for folder in (out, out / "tables", out / "plots"):
        remove_stale_temp_files(folder, older_than_s=STALE_TEMP_S)


def remove_stale_temp_files(folder: Path, older_than_s: float = 0.0) -> None:
    """Temp files left by a writer that was killed mid-write (the real files are intact); in a folder that other
    processes may be writing to, only those older than `older_than_s`."""
    now = time.time()
    for path in [*Path(folder).glob(".*.tmp"), *Path(folder).glob(".*.tmp.*")]:
        try:
            if now - path.stat().st_mtime >= older_than_s:
                path.unlink(missing_ok=True)
        except OSError:
            pass


def reset_run_folder(folder: Path) -> None:
    """Remove a run's files (for --force), leaving the folder itself."""
    for name in (SUMMARY, METRICS, METRICS_CSV, CONFIG, CHECKPOINT, "job.json", LOGGERS_STATE):
        (Path(folder) / name).unlink(missing_ok=True)
    shutil.rmtree(Path(folder) / TENSORBOARD_DIR, ignore_errors=True)  # a new run starts a new TensorBoard record
