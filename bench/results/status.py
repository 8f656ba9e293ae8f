"""`bench status` and `bench cancel`: the state of a sweep's runs, from its folder and the queue."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.errors import NoResults, UsageError
from bench.store import runs
from bench.sweep.manifest import MANIFEST, read_manifest, slurm_queue, update_manifest

RUN_MARKERS = (*runs.RUN_FILES, "job.json", runs.LOCK)


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    """{job id: final state} from SLURM accounting ({} without sacct)."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    try:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(sorted(set(job_ids)))],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return {}
    states = {}
    for line in out.stdout.splitlines():
        job, _, state = line.partition("|")
        states[job.strip()] = state.split()[0] if state.strip() else ""
    return states


def run_folders(out: Path, manifest: dict) -> list[str]:
    found = set(manifest.get("runs", {}))
    found.update(f.relative_to(out).as_posix() for f in runs.find_run_folders(out, RUN_MARKERS) if f != out)
    return sorted(found)


def run_states(out: Path, warnings: list[str] | None = None) -> list[dict]:
    """One record per run: run, state, epoch, epochs, job, elapsed_s, error. A file that does not validate is
    named in `warnings` (when given) and its run shown as 'corrupt' or read without it; nothing raises."""
    from bench.store.records import Malformed, load_config, load_metrics, load_summary

    out = Path(out)
    if not out.is_dir():
        raise UsageError(f"sweep folder not found: {out}")
    notes = warnings if warnings is not None else []
    manifest = read_manifest(out, notes)
    entries = manifest.get("runs", {})
    slurm_ids = [e["job_id"] for e in entries.values() if e.get("launcher") == "slurm" and e.get("job_id")]
    queued = slurm_queue(slurm_ids)
    accounted = sacct_states(slurm_ids) if slurm_ids else {}
    records = []
    for name in run_folders(out, manifest):
        folder = out / name
        job_id = entries.get(name, {}).get("job_id")
        rec = {"run": name, "job": job_id or "", "epoch": 0, "epochs": None, "elapsed_s": None, "error": "",
               "top1": None, "images_per_s": None, "epoch_s": None}
        bad: list[Malformed] = []

        def read(load, default=None, folder=folder, bad=bad):
            try:
                return load(folder)
            except Malformed as err:
                bad.append(err)
                notes.append(str(err))
                return default

        summary = read(load_summary)
        config = read(load_config)
        history = read(load_metrics, [])
        corrupt = bool(bad)  # any of its records unreadable: its epochs and errors cannot be trusted
        rec["epoch"] = len(history)
        if history:
            last = history[-1]
            headline = (summary or {}).get("headline_model") or headline_of(config)
            errors = last.get("top1_error") or {}
            rec["top1"] = errors.get(headline) if headline else None  # never another model's error as the run's
            rec["images_per_s"] = last.get("images_per_s")
            times = [r["epoch_s"] for r in history if r.get("epoch_s")]
            rec["epoch_s"] = sum(times) / len(times) if times else None
        if bad:
            rec["error"] = f"{bad[0].path.name}: {bad[0].problem}"
        rec["epochs"] = (summary or {}).get("epochs") or (config.epochs if config is not None else None)
        if rec["epochs"] and rec["epoch"] > rec["epochs"]:  # another run's metrics, or a config changed by hand
            problem = f"{rec['epoch']} epochs recorded for a run of {rec['epochs']}"
            notes.append(f"{folder / runs.METRICS}: {problem}")
            rec["error"], rec["epoch"], corrupt = f"{runs.METRICS}: {problem}", rec["epochs"], True
        holder = runs.lock_holder(folder, notes)
        if corrupt:
            rec["state"] = "corrupt"
        elif summary is not None:
            rec["state"] = summary["status"]
            rec["elapsed_s"] = summary.get("wall_clock_s")
            message = summary.get("error") or (summary.get("divergence") or {}).get("message") or ""
            rec["error"] = message.strip().splitlines()[-1] if message.strip() else ""
        elif holder is not None:
            rec["state"] = "running"
            rec["elapsed_s"] = time.time() - float(holder.get("started") or time.time())
        elif job_id in queued:
            rec["state"] = queued[job_id].lower()
        elif manifest.get("cancelled") or accounted.get(job_id, "").startswith("CANCELLED"):
            rec["state"] = "cancelled"
        elif (folder / runs.CHECKPOINT).exists():
            rec["state"] = "stopped"
        else:
            rec["state"] = "pending" if job_id else "missing"
        if rec["state"] in ("pending", "missing", "cancelled", "queued"):
            for dep in entries.get(name, {}).get("depends_on") or []:
                dep_state = runs.run_status(out / str(dep))
                if dep_state in ("failed", "diverged", "corrupt"):  # its teacher will not be there: never starts
                    rec["state"], rec["error"] = "blocked", f"not started: its teacher {dep} is {dep_state}"
                    break
        records.append(rec)
    return records


def headline_of(config) -> str | None:
    """The headline eval model of a run's method, when its class is importable here (plug-ins may not be)."""
    if config is None:
        return None
    from methods import METHODS

    return METHODS.get(config.method).headline if config.method in METHODS else None


UNFINISHED = ("running", "pending", "stopped", "queued", "requeued", "configuring", "completing")


def estimate(records: list[dict]) -> tuple[float | None, int]:
    """Fill each unfinished run's `eta_s` from measured epoch times (its own, else the mean over the sweep's runs
    of the same dataset/backbone/method, else over the sweep); returns (sweep ETA in s at the current number of
    runs training at once, that number)."""
    def key(r):
        return r["run"].rsplit("/", 1)[0]

    by_cell: dict[str, list[float]] = {}
    for r in records:
        if r["epoch_s"]:
            by_cell.setdefault(key(r), []).append(r["epoch_s"])
    everything = [t for ts in by_cell.values() for t in ts]
    lengths = [r["epochs"] for r in records if r["epochs"]]
    common = max(set(lengths), key=lengths.count) if lengths else None  # a run not started yet: the sweep's length
    remaining = 0.0
    known = True
    for r in records:
        r["eta_s"] = None
        if r["state"] not in (*UNFINISHED, "missing"):
            continue
        epochs = r["epochs"] or common
        if not epochs:
            known = False
            continue
        per_epoch = r["epoch_s"] or (sum(by_cell[key(r)]) / len(by_cell[key(r)]) if key(r) in by_cell else None) or (
            sum(everything) / len(everything) if everything else None)
        if per_epoch is None:
            known = False
            continue
        r["eta_s"] = per_epoch * max(0, epochs - r["epoch"])
        remaining += r["eta_s"]
    at_once = max(1, sum(r["state"] == "running" for r in records))
    pending = any(r["state"] in (*UNFINISHED, "missing") for r in records)
    return (remaining / at_once if known and pending else None), at_once


def _elapsed(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def status_text(out: Path) -> tuple[str, list[dict]]:
    """The status table of a sweep: per run its state, epochs done of total, last top-1 error of the headline
    model, images/s, job, elapsed time and ETA; then the counts and the sweep's ETA."""
    notes: list[str] = []
    records = run_states(out, notes)
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    if not records:
        return f"no runs in {out}\n", records
    sweep_eta, at_once = estimate(records)
    width = max(len(r["run"]) for r in records)
    lines = [f"{'run':<{width}}  {'state':<9}  {'epoch':>9}  {'top-1':>6}  {'img/s':>7}  {'job':<10}  {'elapsed':>8}  "
             f"{'ETA':>8}  error"]
    for r in records:
        epoch = f"{r['epoch']}/{r['epochs'] or '?'}"
        top1 = f"{r['top1']:.2f}" if r["top1"] is not None else "-"
        speed = f"{r['images_per_s']:.0f}" if r["images_per_s"] else "-"
        lines.append(f"{r['run']:<{width}}  {r['state']:<9}  {epoch:>9}  {top1:>6}  {speed:>7}  {r['job']:<10}  "
                     f"{_elapsed(r['elapsed_s']):>8}  {_elapsed(r['eta_s']):>8}  {r['error']}")
    counts: dict[str, int] = {}
    for r in records:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    done = sum(r["epoch"] for r in records)
    total = sum(r["epochs"] or 0 for r in records)
    line = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) + f"; {done}/{total} epochs"
    if sweep_eta is not None:
        line += f"; sweep ETA {_elapsed(sweep_eta)} (at {at_once} run{'s' if at_once > 1 else ''} at a time)"
    lines.append(line)
    return "\n".join(lines) + "\n", records


def print_status(out: Path, watch: float | None = None) -> int:
    """`bench status`; with `watch`, redraw every `watch` seconds until no run is left to finish (or Ctrl-C)."""
    if watch is not None and watch <= 0:
        raise UsageError(f"--watch takes a positive number of seconds, got {watch}")
    while True:
        text, records = status_text(out)
        if not records:
            raise NoResults(f"no runs in {out} (a sweep folder that 'bench run --out' made)")
        if watch is None:
            sys.stdout.write(text)
            return 0
        sys.stdout.write("\033[2J\033[H" + time.strftime("%H:%M:%S ") + f"{out} (every {watch:g} s, Ctrl-C to stop)\n"
                         + text)
        sys.stdout.flush()
        if records and not any(r["state"] in UNFINISHED for r in records):
            return 0
        time.sleep(watch)


def cancel(out: Path) -> int:
    """scancel the sweep's SLURM jobs; stop everything it started on this machine: the local launcher (which stops
    its jobs on SIGTERM), each local job's process tree (submitit controller, training worker, data workers), and
    every process that holds one of its runs' locks. Each is signalled only while it is the very process recorded
    (pid, start time, boot id)."""
    from bench.store.processes import GRACE_S, stop

    out = Path(out)
    if not (out / MANIFEST).exists():
        raise UsageError(f"{out} has no {MANIFEST}: not a sweep folder launched by bench run")
    manifest = read_manifest(out)
    update_manifest(out, cancelled=True)
    slurm_ids = sorted({e["job_id"] for e in manifest["runs"].values()
                        if e.get("launcher") == "slurm" and e.get("job_id")})
    if slurm_ids:
        if shutil.which("scancel") is None:
            raise UsageError("scancel not found: cannot cancel SLURM jobs from this machine")
        subprocess.run(["scancel", *slurm_ids], check=False)
        print(f"cancelled {len(slurm_ids)} SLURM jobs")
    local = [(name, e) for name, e in manifest["runs"].items() if e.get("launcher") != "slurm"]
    launcher = manifest.get("launcher_process")
    jobs = [e["process"] for _, e in local if isinstance(e.get("process"), dict)]
    holders = [h for h in (runs.lock_holder(out / name, notes=[]) for name, _ in local)
               if h is not None and h.get("host") == socket.gethostname()]
    recorded = [p for p in [launcher, *jobs, *holders] if isinstance(p, dict)]
    alive = [p for p in recorded if runs.is_same_process(p)]
    stopped = 0
    if launcher and runs.is_same_process(launcher):  # it stops its own jobs on SIGTERM; what is left is killed
        stopped += stop([launcher], first=None, root_first=signal.SIGTERM, grace_s=2 * GRACE_S + 1)
    stopped += stop(holders, first=signal.SIGINT, root_first=signal.SIGINT)  # training workers unwind on SIGINT
    stopped += stop(jobs, first=signal.SIGINT, root_first=None)  # controllers end once their tasks have
    if recorded:
        print(f"stopped {stopped} local processes" if alive else f"no local process of {out} is running "
              f"({len(recorded)} recorded, all gone)")
    if "launcher_pid" in manifest and not manifest.get("launcher_process"):
        print(f"not signalling pid {manifest['launcher_pid']}: recorded by an older okd-bench without its start "
              "time, so it cannot be confirmed to be this sweep's launcher", file=sys.stderr)
    if not slurm_ids and not recorded:
        print(f"nothing to cancel in {out}", file=sys.stderr)
    return 0
