"""Run folders: where a run lives, atomic writes, and reading a run's state back."""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

from bench import files
from bench.errors import UsageError
from bench.files import (  # noqa: F401  (the write path, also used from here)
    STALE_TEMP_S,
    StorageError,
    atomic_write,
    remove_stale_temp_files,
    storage_error,
    write_json,
    write_jsonl,
    write_text,
)
from bench.store.processes import is_same_process, process_identity  # noqa: F401  (also used from here)
from bench.store.records import Malformed, load_lock, load_summary
from bench.store.runfiles import (  # noqa: F401  (the run folder's file names, also used from here)
    BEST_NETWORK,
    CHECKPOINT,
    CONFIG,
    LOCK,
    LOCK_FILE,
    LOGGERS_STATE,
    METRICS,
    METRICS_CSV,
    RUN_FILES,
    SUMMARY,
    TENSORBOARD_DIR,
)

_SAFE = re.compile(r"[^A-Za-z0-9_.+=,@-]")  # @: `resnet18@pretrained`


def safe_part(part: str) -> str:
    """A path component that cannot escape its parent: no separators, no '..', no empty name."""
    cleaned = _SAFE.sub("_", str(part)).strip(".")
    if not cleaned:
        raise UsageError(f"'{part}' cannot name a run folder")
    return cleaned


def run_dir(out: Path, dataset: str, backbone: str, method: str, seed: int) -> Path:
    """`<out>/<dataset>/<backbone>/<method>/seed<k>`, each part sanitised."""
    return Path(out).joinpath(safe_part(dataset), safe_part(backbone), safe_part(method), f"seed{int(seed)}")




def find_run_folders(root: Path, markers: tuple[str, ...] = RUN_FILES) -> set[Path]:
    """Folders under `root` (itself included) holding any of `markers`; submitit's log folders are skipped."""
    found: set[Path] = set()
    for name in markers:
        found.update(p.parent for p in Path(root).rglob(name) if p.is_file() and ".submitit" not in p.parts)
    return found


def check_output_file(path: Path, folder: Path | None, flag: str = "--out") -> None:
    """An output file path that can be written: not a folder, in an existing writable folder, and never one of
    a run's own files (`folder`: the run)."""
    files.check_output_file(path, [Path(folder) / n for n in RUN_FILES] if folder is not None else None, flag)


def run_status(path: Path) -> str:
    """'done', 'failed', 'diverged' (from summary.json), 'corrupt' (a summary.json that does not validate),
    'partial' (started) or 'missing'."""
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


def remove_stale_sweep_temp_files(out: Path, run_folders: list[Path] = ()) -> None:
    """The killed writers' temp files of a sweep folder, its tables, its plots and `run_folders` (other processes
    may be writing there now: only those whose writer is gone, or old ones)."""
    for folder in (out, out / "tables", out / "plots", *run_folders):
        remove_stale_temp_files(folder, older_than_s=STALE_TEMP_S)


def reset_run_folder(folder: Path) -> None:
    """Remove a run's files (for --force), leaving the folder itself."""
    for name in (SUMMARY, METRICS, METRICS_CSV, CONFIG, CHECKPOINT, "job.json", LOGGERS_STATE, BEST_NETWORK):
        (Path(folder) / name).unlink(missing_ok=True)
    shutil.rmtree(Path(folder) / TENSORBOARD_DIR, ignore_errors=True)  # a new run starts a new TensorBoard record
