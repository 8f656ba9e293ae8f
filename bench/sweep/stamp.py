"""A finished sweep's stamp, so that repeating `bench run` on it costs nothing.

When every run of a sweep is done, `bench run` writes `<out>/.done.json`: a key of what was asked (the
resolved sweep config, the plug-in files' contents, the okd-bench code) and a fingerprint of the runs'
records (size and modification time of each summary.json), with the table it printed. A later `bench run`
with the same key and unchanged records prints that table without importing torch or drawing anything.
Any difference (a setting, a plug-in edit, a code change, a run touched or removed, --force) takes the normal
path. The same fingerprint, over every run under the folder, lets tables and plots be redrawn only when a run
changed since they were drawn (`<out>/.drawn.json`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from bench.files import sha256_of
from bench.store import runs

DONE = ".done.json"
DRAWN = ".drawn.json"
PACKAGES = ("bench", "methods", "backbones")


@functools.cache
def code_fingerprint() -> str:
    """okd-bench's own source files (name, size, modification time): an edit or upgrade changes it."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*")):
            if path.suffix in (".py", ".yaml", ".csv") and "__pycache__" not in path.parts:
                st = path.stat()
                h.update(f"{path.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def file_digest(path: str) -> str:
    try:
        return sha256_of(Path(path))
    except OSError:
        return "missing"


def sweep_key(sweep_record: dict[str, Any], plugin_specs: list[str]) -> str:
    """What a sweep asked for: its resolved settings, each plug-in file's content (a module plug-in by its
    name), installed entry points, and the code."""
    from importlib.metadata import entry_points

    from bench.plugins import ENTRY_POINT_GROUP, is_file_spec

    plugins = [(s, file_digest(s) if is_file_spec(s) else "module") for s in plugin_specs]
    eps = sorted(f"{ep.name}={ep.value}" for ep in entry_points(group=ENTRY_POINT_GROUP))
    text = json.dumps({"sweep": sweep_record, "plugins": plugins, "entry_points": eps, "code": code_fingerprint()},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def records_fingerprint(folders: list[Path], names: tuple[str, ...] = (runs.SUMMARY,)) -> str:
    """Size and modification time of each run's records (a missing one counts as missing)."""
    h = hashlib.sha256()
    for folder in sorted(folders):
        for name in names:
            try:
                st = os.stat(Path(folder) / name)
                h.update(f"{folder}/{name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{folder}/{name}|missing\n".encode())
    return h.hexdigest()


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_done(out: Path, key: str, folders: list[Path], printed: str) -> None:
    """Record that the sweep `key` is complete with these runs, and what it printed (best effort)."""
    try:
        runs.write_json(Path(out) / DONE, {"key": key, "records": records_fingerprint(folders), "runs": len(folders),
                                           "printed": printed})
    except OSError:
        pass


def done_output(out: Path, key: str, folders: list[Path]) -> str | None:
    """The table a complete sweep printed, when nothing it depends on changed since; else None."""
    stamp = _read(Path(out) / DONE)
    if not stamp or stamp.get("key") != key or stamp.get("runs") != len(folders):
        return None
    if records_fingerprint(folders) != stamp.get("records"):
        return None
    for folder in folders:  # every run is still done (a missing summary reads as {})
        if _read(Path(folder) / runs.SUMMARY).get("status") != "done":
            return None
    return stamp.get("printed") if isinstance(stamp.get("printed"), str) else None


def drawn_is_current(out: Path, folders: list[Path]) -> tuple[bool, str, list[str]]:
    """(whether the tables and plots drawn last time still match every run's records and are all there, the
    fingerprint now, the files drawn last time)."""
    fingerprint = records_fingerprint(folders, (runs.SUMMARY, runs.METRICS))
    stamp = _read(Path(out) / DRAWN)
    files = [f for f in stamp.get("files", []) if isinstance(f, str)]
    current = (stamp.get("records") == fingerprint
               and stamp.get("code") == code_fingerprint() and bool(files)
               and all((Path(out) / f).is_file() for f in files))
    return current, fingerprint, files


def write_drawn(out: Path, fingerprint: str, files: list[Path]) -> None:
    try:
        runs.write_json(Path(out) / DRAWN, {"records": fingerprint, "code": code_fingerprint(),
                                            "files": [str(Path(f).relative_to(out)) for f in files]})
    except (OSError, ValueError):
        pass
