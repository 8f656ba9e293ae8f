"""The one output path of every file a command writes (run files, tables, CSV, plots, the report, exports).

Each file goes through a temp file in its own folder (named after the writing process), is fsynced and renamed
over the target, with the mode the user's umask gives a new file: a reader sees the old file or the new one,
never a partial one, and a co-author on a shared cluster can read what a run wrote. A write the file system
refuses is one StorageError naming the place (a full disk, a read-only or refused folder, a file where a folder
belongs, a folder where a file belongs); the `check_output_*` functions say the same before anything is written.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.errors import UsageError

# Fault-injection aid for the tests: seconds to pause inside every write, before the rename.
_SLOW_WRITE_S = float(os.environ.get("OKD_BENCH_SLOW_WRITE_S", "0") or 0)
_UMASK_LOCK = threading.Lock()


class StorageError(UsageError):
    """A write that the file system refused (no space, no permission, read-only, wrong kind of entry): names it."""


def sha256_of(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks (weights files can be large)."""
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def umask() -> int:
    """This process's umask, read without changing it where /proc tells (other threads may be creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def storage_error(err: BaseException, path: Path) -> StorageError | None:
    """The StorageError an exception from writing `path` amounts to, or None when it is something else. Some
    writers (torch.save's zip writer) report a full disk in their own words, so the free space is asked too; call it
    while the failed temp file still takes its space."""
    code = getattr(err, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or (not isinstance(err, OSError) and _nearly_full(path.parent)):
        return StorageError(f"no space left on {path.parent} (writing {path.name})")
    if code in (errno.EACCES, errno.EPERM):
        return StorageError(f"permission denied writing {path}")
    if code == errno.EROFS:
        return StorageError(f"read-only file system: cannot write {path}")
    if code == errno.EISDIR:
        return StorageError(f"cannot write {path}: it is a folder")
    if code in (errno.ENOTDIR, errno.EEXIST):
        return StorageError(f"cannot write {path}: {_first_file_above(path) or path.parent} is a file, not a folder")
    if isinstance(err, OSError) and code is not None:
        return StorageError(f"cannot write {path}: {err.strerror or err}")
    return None


def _first_file_above(path: Path) -> Path | None:
    for parent in reversed(Path(path).parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def atomic_write(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Write through a temp file in the same folder, fsync, then rename over `path`, with the mode the umask gives
    a new file. A refused write raises StorageError naming the place, and leaves no temp file."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            write(f)
            f.flush()
            if _SLOW_WRITE_S:
                time.sleep(_SLOW_WRITE_S)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        named = storage_error(err, path) if isinstance(err, Exception) else None  # before the temp file goes
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if named is not None:
            raise named from None
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_json(path: Path, obj: Any) -> None:
    import json

    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: Path, records: list[dict]) -> None:
    import json

    write_text(path, "".join(json.dumps(r) + "\n" for r in records))


# ---------------------------------------------------------------------------------------------
# checked before anything is written


def _probe(folder: Path, what: str) -> None:
    """A file can be created in the existing `folder` (and removed again)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".okd-bench-probe.", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise UsageError(f"{what}: cannot write in {folder} ({err.strerror or err})") from None


def check_path(path: Path, what: str) -> None:
    """`path` can name a file or folder here: no name in it longer than the file system allows, the whole no longer
    than its path limit, and no symlink on the way that dangles or loops. One UsageError naming the part otherwise."""
    path = Path(os.path.abspath(Path(path).expanduser()))
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    name_max, path_max = _limits(existing)
    for part in path.parts[1:]:
        if len(os.fsencode(part)) > name_max:
            raise UsageError(f"{what} {_short(path)}: the name '{_short(part, 40)}' is {len(os.fsencode(part))} bytes, "
                             f"longer than this file system allows ({name_max}); use a shorter name")
    if len(os.fsencode(str(path))) >= path_max:
        raise UsageError(f"{what} {_short(path)}: the path is {len(os.fsencode(str(path)))} bytes, longer than this "
                         f"file system allows ({path_max - 1}); use a shorter one")
    prefix = Path(path.parts[0])
    for part in path.parts[1:]:
        prefix = prefix / part
        if not os.path.islink(prefix):
            if not os.path.lexists(prefix):
                return
            continue
        try:
            os.stat(prefix)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise UsageError(f"{what} {_short(path)}: {prefix} is a symlink loop; remove it or give another "
                                 "folder") from None
            if err.errno == errno.ENOENT:
                raise UsageError(f"{what} {_short(path)}: {prefix} is a symlink to {os.readlink(prefix)}, which does "
                                 "not exist; create it or give another folder") from None
            raise UsageError(f"{what} {_short(path)}: {prefix}: {err.strerror or err}") from None


def _limits(folder: Path) -> tuple[int, int]:
    """(longest name, longest path) the file system of `folder` takes (255 and 4096 where it does not say)."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError):
        return 255, 4096


def _short(text: Any, keep: int = 80) -> str:
    text = str(text)
    return text if len(text) <= keep else f"{text[:keep // 2]}...{text[-keep // 2:]}"


def check_output_folder(folder: Path, what: str) -> None:
    """`folder` is, or can be created as, a folder this process can write in; nothing is created."""
    folder = Path(folder)
    check_path(folder, what)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        kind = "is a file, not a folder" if existing == folder else f"cannot be created: {existing} is a file"
        raise UsageError(f"{what} {folder} {kind}")
    _probe(existing, f"{what} {folder}")


def check_output_file(path: Path, protected: list[Path] | None = None, flag: str = "--out") -> None:
    """`path` can be written as a file: not a folder, in an existing folder this process can write in, and none of
    `protected` (e.g. a run's own files)."""
    path = Path(path)
    check_path(path, flag)
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    parent = path.parent
    if not parent.is_dir():
        above = _first_file_above(path)
        raise UsageError(f"{flag} {path}: " + (f"{above} is a file, not a folder" if above else
                                               f"folder {parent} does not exist"))
    if protected and path.resolve() in {Path(p).resolve() for p in protected}:
        raise UsageError(f"{flag} {path} would overwrite the run's own {path.name}")
    _probe(parent, f"{flag} {path}")


# ---------------------------------------------------------------------------------------------
# temp files of killed writers

_WRITER = re.compile(r"^\..+\.(\d+)-[^.]*\.tmp$")
STALE_TEMP_S = 600.0  # a temp file of unknown writer this old belongs to a killed one


def _writer_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(folder: Path, older_than_s: float = 0.0) -> None:
    """Temp files left by writers killed mid-write (the real files are intact): at once where the writing process
    (named in the file) is gone, else once older than `older_than_s` (other processes may be writing there now)."""
    now = time.time()
    for path in [*Path(folder).glob(".*.tmp"), *Path(folder).glob(".*.tmp.*")]:
        match = _WRITER.match(path.name)
        try:
            if (match and not _writer_alive(int(match.group(1)))) or now - path.stat().st_mtime >= older_than_s:
                path.unlink(missing_ok=True)
        except OSError:
            pass
