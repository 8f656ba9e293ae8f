"""Processes a sweep starts, named so that they can be stopped safely: an identity is more than a pid (host, boot,
start time), so a signal never reaches a process that merely reuses a recorded pid; a process tree (a local job's
controller, its training workers and their data workers) is found by walking /proc and stopped as a whole."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

GRACE_S = 5.0  # how long a process gets to unwind (SIGINT: locks released, trackers flushed) before SIGKILL


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (state first), None if the process is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if not fields or fields[0] in ("Z", "X") else fields


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), None if unknown."""
    fields = _stat(pid)
    try:
        return int(fields[19]) if fields else None
    except (ValueError, IndexError):
        return None


def process_identity(pid: int | None = None) -> dict[str, Any]:
    """{host, pid, boot_id, start_ticks} of a process (default: this one)."""
    pid = os.getpid() if pid is None else int(pid)
    return {"host": socket.gethostname(), "pid": pid, "boot_id": _boot_id(), "start_ticks": _start_ticks(pid)}


def is_same_process(identity: Any) -> bool:
    """Whether `identity` (from process_identity) names a process alive now on this host: same pid, same boot,
    same start time. Without /proc to compare start times, nothing is confirmed (False)."""
    if not isinstance(identity, dict) or identity.get("host") != socket.gethostname():
        return False
    pid, ticks = identity.get("pid"), identity.get("start_ticks")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or ticks is None:
        return False
    return identity.get("boot_id") == _boot_id() and _start_ticks(pid) == ticks


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children first, then theirs), from the parent pids in /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields and len(fields) > 1 and fields[1].isdigit():
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        nxt = [c for p in frontier for c in children.get(p, [])]
        found += nxt
        frontier = nxt
    return found


def tree(identity: dict) -> list[dict]:
    """The identities of the process `identity` names and of every process below it; [] when it is gone."""
    if not is_same_process(identity):
        return []
    below = [process_identity(p) for p in descendants(identity["pid"])]
    return [identity, *[p for p in below if p["start_ticks"] is not None]]


def _signal(identity: dict, sig: int) -> None:
    if identity.get("pid") != os.getpid() and is_same_process(identity):
        try:
            os.kill(identity["pid"], sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop(identities: list[dict], first: int = signal.SIGINT, root_first: int | None = None,
         grace_s: float = GRACE_S) -> int:
    """Stop the processes `identities` name (each with everything below it): `first` to each process below a root
    (training workers unwind on SIGINT: their run's lock is released, trackers flushed), `root_first` to the roots
    (None: none; a local job's controller ends by itself once its tasks have), then SIGKILL to whatever is left
    after `grace_s`. Only processes that are still the very ones recorded are signalled. Returns how many of them
    were alive and are gone now."""
    targets: dict[tuple, dict] = {}
    roots = set()
    for identity in identities:
        members = tree(identity) if isinstance(identity, dict) else []
        if members:
            roots.add((identity["pid"], identity["start_ticks"]))
        for member in members:
            targets.setdefault((member["pid"], member["start_ticks"]), member)
    targets.pop((os.getpid(), process_identity()["start_ticks"]), None)
    for key, member in targets.items():
        sig = root_first if key in roots else first
        if sig is not None:
            _signal(member, sig)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(is_same_process(m) for m in targets.values()):
        time.sleep(0.05)
    for member in targets.values():
        _signal(member, signal.SIGKILL)
    for _ in range(40):  # SIGKILL is not instant either
        if not any(is_same_process(m) for m in targets.values()):
            break
        time.sleep(0.05)
    return sum(not is_same_process(m) for m in targets.values())
