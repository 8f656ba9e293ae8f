"""One validated reader for every file the tools read back from a run or sweep folder.

Each reader returns the parsed record, None when the file is absent, or raises `Malformed` naming the file
and what is wrong with it (undecodable bytes, invalid JSON/YAML, wrong types, impossible values). Callers
that walk a tree (tables, plots, status) turn `Malformed` into one counted, named warning and go on.
"""

from __future__ import annotations

import errno
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench.store import runfiles as runs  # file names only: bench.store.runs reads through this module

STATUSES = ("done", "failed", "diverged")
FAILURES = ("machine", "method")  # a failed run's `failure`: of the machine it ran on (retried), or of the run itself
MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO, errno.ENOMEM}
MACHINE_WORDS = ("no space left", "errno 28", "disk quota", "permission denied", "read-only file system",
                 "input/output error", "cannot allocate memory", "before reporting", "killed by signal")


def failure_kind(err: BaseException) -> str:
    """'machine' when `err` (or what caused it) is the machine's: no space, no permission, a read-only or failing
    disk, no memory; 'method' for anything else the run raised (an exception in training; divergence is its own
    status). A run that failed because of the machine is resumed by the next plain `bench run`."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, MemoryError) or getattr(err, "errno", None) in MACHINE_ERRNOS:
            return "machine"
        if type(err).__name__ == "StorageError" or any(w in str(err).lower() for w in MACHINE_WORDS[:7]):
            return "machine"  # a StorageError names a refused write; torch's writers put errno text in their own
        err = err.__cause__ or err.__context__
    return "method"


def failed_by_machine(summary: dict[str, Any] | None) -> bool:
    """Whether a failed run's summary says the machine failed it (a summary written before runs recorded their
    `failure` is judged by its error text)."""
    if not summary or summary.get("status") != "failed":
        return False
    kind = summary.get("failure")
    if kind in FAILURES:
        return kind == "machine"
    return any(w in str(summary.get("error") or "").lower() for w in MACHINE_WORDS)


class Malformed(Exception):
    """A file that exists but cannot be trusted; the message names the file and the problem."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = Path(path), problem


def read_text(path: Path) -> str | None:
    """The file's UTF-8 text, None when it is absent; Malformed for undecodable bytes or a non-file."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as err:
        raise Malformed(path, f"not UTF-8 text (byte {err.start})") from None
    except IsADirectoryError:
        raise Malformed(path, "is a folder, not a file") from None
    except OSError as err:
        raise Malformed(path, f"unreadable ({err.strerror or err})") from None


def read_json_file(path: Path) -> Any:
    text = read_text(path)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as err:
        raise Malformed(path, f"not valid JSON ({err})") from None


# ---------------------------------------------------------------------------------------------
# small type checks


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(path: Path, ok: bool, problem: str) -> None:
    if not ok:
        raise Malformed(path, problem)


def _errors_by_model(path: Path, value: Any, where: str) -> None:
    """{eval model: {"top1_error": finite number in [0, 100], ...}}."""
    _check(path, isinstance(value, dict), f"'{where}' should map eval models to errors, got {type(value).__name__}")
    for model, errs in value.items():
        _check(path, isinstance(errs, dict), f"'{where}.{model}' should be a mapping, got {type(errs).__name__}")
        for key in ("top1_error", "top5_error"):
            err = errs.get(key)
            if err is None and key == "top5_error":
                continue
            _check(path, _is_number(err), f"'{where}.{model}.{key}' should be a number, got {err!r}")
            _check(path, math.isfinite(err) and 0 <= err <= 100, f"'{where}.{model}.{key}' is {err!r}, not a "
                                                                  "percentage")


def _optional(path: Path, record: dict, key: str, test: Callable[[Any], bool], kind: str) -> None:
    value = record.get(key)
    _check(path, value is None or test(value), f"'{key}' should be {kind}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# run files


def load_summary(folder: Path) -> dict | None:
    """summary.json, validated: identity fields, status, final/best errors, numbers where numbers belong."""
    path = Path(folder) / runs.SUMMARY
    data = read_json_file(path)
    if data is None and not path.exists():
        return None
    _check(path, isinstance(data, dict), f"should be a JSON object, got {type(data).__name__}")
    for key in ("dataset", "backbone", "method"):
        _check(path, isinstance(data.get(key), str) and data[key] != "", f"'{key}' should be a name, got "
                                                                          f"{data.get(key)!r}")
    _check(path, _is_int(data.get("seed")) and data["seed"] >= 0, f"'seed' should be an integer, got "
                                                                   f"{data.get('seed')!r}")
    _check(path, data.get("status") in STATUSES, f"'status' should be one of {', '.join(STATUSES)}, got "
                                                 f"{data.get('status')!r}")
    _errors_by_model(path, data.get("final", {}), "final")
    best = data.get("best", {})
    _errors_by_model(path, best, "best")
    for rec in best.values():
        _optional(path, rec, "epoch", _is_int, "an integer")
    if data["status"] == "done":
        _check(path, isinstance(data.get("headline_model"), str) and data["headline_model"] in data["final"],
               f"'headline_model' {data.get('headline_model')!r} has no final errors")
    _optional(path, data, "eval_models", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
              "a list of names")
    _optional(path, data, "failure", lambda v: v in FAILURES, " or ".join(FAILURES))
    for key in ("wall_clock_s", "images_per_s"):
        _optional(path, data, key, lambda v: _is_number(v) and math.isfinite(v) and v >= 0, "a non-negative number")
    for key in ("epochs", "epochs_done", "world_size", "runs_per_device", "num_classes"):
        _optional(path, data, key, lambda v: _is_int(v) and v >= 0, "a non-negative integer")
    for key in ("device", "error", "headline_model", "git_commit", "amp"):
        _optional(path, data, key, lambda v: isinstance(v, str), "a string")
    _optional(path, data, "params", lambda v: isinstance(v, dict) and all(
        x is None or _is_int(x) for x in v.values()), "a mapping of parameter counts")
    _optional(path, data, "divergence", lambda v: isinstance(v, dict), "a mapping")
    return data


def load_metrics(folder: Path) -> list[dict]:
    """metrics.jsonl, one record per epoch: a truncated last line (a killed writer) is dropped; any other bad
    line, undecodable bytes or wrong types raise Malformed."""
    path = Path(folder) / runs.METRICS
    text = read_text(path)
    if text is None:
        return []
    lines = text.splitlines()
    records = []
    for i, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
        except ValueError:
            if i == len(lines) and not text.endswith("\n"):
                break  # a write cut short
            raise Malformed(path, f"line {i} is not valid JSON") from None
        check_epoch_record(path, rec, f"line {i}")
        records.append(rec)
    return records


def check_epoch_record(path: Path, rec: Any, where: str, complete: bool = False) -> None:
    """One epoch's record (a metrics.jsonl line, an entry of a checkpoint's history). `complete`: every field the
    trainer reads back is required (a checkpoint's history), not only the epoch and its errors."""
    _check(path, isinstance(rec, dict), f"{where} should be a JSON object")
    _check(path, _is_int(rec.get("epoch")), f"{where}: 'epoch' should be an integer, got {rec.get('epoch')!r}")
    for key in ("top1_error", "top5_error"):
        errs = rec.get(key, None if complete else {})
        _check(path, isinstance(errs, dict), f"{where}: '{key}' should map eval models to errors, got {errs!r}")
        for model, err in errs.items():
            _check(path, _is_number(err) and math.isfinite(err) and 0 <= err <= 100,
                   f"{where}: {key} of {model} is {err!r}, not a percentage")
    for key in ("epoch_s", "images_per_s", "lr"):
        if complete:
            _check(path, _is_number(rec.get(key)) and math.isfinite(rec[key]) and rec[key] >= 0,
                   f"{where}: '{key}' should be a non-negative number, got {rec.get(key)!r}")
        else:
            _optional(path, rec, key, _is_number, "a number")
    if complete:
        _check(path, isinstance(rec.get("loss"), dict) and all(_is_number(v) for v in rec["loss"].values()),
               f"{where}: 'loss' should map loss terms to numbers, got {rec.get('loss')!r}")


def load_config(folder: Path):
    """config.yaml as a RunConfig (unknown keys and wrong types are Malformed); None when absent."""
    from bench.config import RunConfig, from_dict, parse_yaml
    from bench.errors import UsageError

    path = Path(folder) / runs.CONFIG
    text = read_text(path)
    if text is None:
        return None
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise Malformed(path, "malformed YAML" + (f" at line {mark.line + 1}" if mark else "")) from None
    try:
        return from_dict(RunConfig, data, where="config")
    except UsageError as err:
        raise Malformed(path, str(err)) from None


def load_lock(folder: Path) -> dict | None:
    """running.json: {host: str, pid: int, started: number, heartbeat: number, job_id, ...}."""
    path = Path(folder) / runs.LOCK
    data = read_json_file(path)
    if data is None:
        return None
    _check(path, isinstance(data, dict), "should be a JSON object")
    _check(path, isinstance(data.get("host"), str), f"'host' should be a string, got {data.get('host')!r}")
    _check(path, _is_int(data.get("pid")) and data["pid"] > 0, f"'pid' should be a process id, got "
                                                                f"{data.get('pid')!r}")
    for key in ("started", "heartbeat", "proc_start"):
        _optional(path, data, key, _is_number, "a number")
    _optional(path, data, "job_id", lambda v: isinstance(v, str), "a string")
    return data


def load_manifest(out: Path) -> dict:
    """sweep.json: {runs: {relative run folder: {label, launcher, job_id}}, launcher, cancelled, ...}; an absent
    manifest is an empty one."""
    path = Path(out) / "sweep.json"
    data = read_json_file(path)
    if data is None:
        return {"runs": {}}
    _check(path, isinstance(data, dict), "should be a JSON object")
    entries = data.get("runs", {})
    _check(path, isinstance(entries, dict), f"'runs' should be a mapping, got {type(entries).__name__}")
    for name, entry in entries.items():
        _check(path, isinstance(entry, dict), f"run '{name}' should be a mapping")
        _optional(path, entry, "job_id", lambda v: isinstance(v, str), "a string")
        _optional(path, entry, "launcher", lambda v: isinstance(v, str), "a string")
    _optional(path, data, "launcher_process", lambda v: isinstance(v, dict), "a mapping")
    return data


def check_checkpoint(path: Path, state: Any, epochs: int) -> None:
    """The contents of a loaded last.pt: every key the trainer reads, with its type, an epoch within the run's
    configured epochs (a larger one cannot belong to this run), whole history records numbered 1..epoch, a `best`
    that the summary's reader accepts, and RNG states that can be restored. Whether the method and optimizer states
    fit the live model is bench.train.checkpoint.check_fits."""
    _check(path, isinstance(state, dict), f"should hold a mapping, got {type(state).__name__}")
    missing = [k for k in ("method", "optimizer", "epoch", "step", "history", "best", "rng") if k not in state]
    _check(path, not missing, f"missing {', '.join(missing)}")
    _check(path, isinstance(state["method"], dict) and isinstance(state["optimizer"], dict),
           "'method' and 'optimizer' should be state dicts")
    epoch, step = state["epoch"], state["step"]
    _check(path, _is_int(epoch) and 0 <= epoch <= epochs, f"epoch {epoch!r} is outside this run's 0..{epochs}")
    _check(path, _is_int(step) and step >= 0, f"step {step!r} is not a step count")
    history = state["history"]
    _check(path, isinstance(history, list) and len(history) == epoch,
           f"history has {len(history) if isinstance(history, list) else '?'} epochs, expected {epoch}")
    for i, rec in enumerate(history):
        check_epoch_record(path, rec, f"history entry {i + 1}", complete=True)
        _check(path, rec["epoch"] == i + 1, f"history entry {i + 1} is numbered epoch {rec['epoch']}")
    _errors_by_model(path, state["best"], "best")
    for model, rec in state["best"].items():
        _check(path, _is_int(rec.get("epoch")) and 1 <= rec["epoch"] <= epoch,
               f"'best.{model}.epoch' is {rec.get('epoch')!r}, not an epoch of 1..{epoch}")
    for key in ("resumes", "rejected"):
        value = state.get(key, [])
        _check(path, isinstance(value, list) and all(isinstance(r, dict) for r in value),
               f"'{key}' should be a list of records")
    _check(path, isinstance(state.get("runtime", {}), dict), "'runtime' should be a mapping")
    check_rng(path, state["rng"])


def check_rng(path: Path, rng: Any) -> None:
    """RNG states as bench.train.checkpoint.rng_state writes them: torch's and CUDA's byte tensors, Python's
    (version, 625 words, gauss) and NumPy's MT19937 (624 keys, position, gauss cache)."""
    import torch

    def byte_vector(x: Any) -> bool:
        return isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.dim() == 1 and x.numel() > 0

    _check(path, isinstance(rng, dict), f"'rng' should be a mapping, got {type(rng).__name__}")
    _check(path, byte_vector(rng.get("torch")),
           f"'rng.torch' should be a byte tensor, got {_describe(rng.get('torch'))}")
    py = rng.get("python")
    _check(path, isinstance(py, list) and len(py) == 3 and _is_int(py[0]) and isinstance(py[1], list)
           and len(py[1]) == 625 and all(_is_int(v) for v in py[1]) and (py[2] is None or _is_number(py[2])),
           "'rng.python' should be Python's (version, 625 words, gauss) state")
    np_state = rng.get("numpy")
    _check(path, isinstance(np_state, dict) and isinstance(np_state.get("keys"), torch.Tensor)
           and tuple(np_state["keys"].shape) == (624,) and not np_state["keys"].is_floating_point()
           and _is_int(np_state.get("pos")) and 0 <= np_state["pos"] <= 624 and np_state.get("has_gauss") in (0, 1)
           and _is_number(np_state.get("cached")), "'rng.numpy' should be NumPy's MT19937 state (624 keys, pos, gauss)")
    cuda = rng.get("cuda", [])
    _check(path, isinstance(cuda, list) and all(byte_vector(s) for s in cuda), "'rng.cuda' should be byte tensors")


def _describe(value: Any) -> str:
    dtype, shape = getattr(value, "dtype", None), getattr(value, "shape", None)
    return f"a {dtype} tensor of shape {tuple(shape)}" if dtype is not None else repr(value)[:40]
