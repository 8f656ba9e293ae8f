"""Reliability: kill-anywhere exact resume, divergence in a sweep, the bad-input corpus, safe names."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench.cli import main
from bench.results.status import run_states
from bench.store import records, runs
from methods.base import METHODS, register_method
from methods.vanilla import Vanilla

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).parent / "bad_inputs"


# ---------------------------------------------------------------------------------------------
# kill anywhere, resume exactly


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_result(tmp_path):
    """A real training process is SIGKILLed at random moments (writes slowed so that some kills land
    inside a checkpoint write) and rerun until done, over and over; every finished run equals the
    uninterrupted one, and nothing half-written is ever on disk."""
    args = [sys.executable, "-m", "bench.cli", "run", "--methods", "pcl", "--datasets", "digits",
            "--backbones", "cifar_resnet8", "--seeds", "0", "--epochs", "4", "--launcher", "inline", "--no-progress"]
    env = {**os.environ, "OKD_BENCH_SLOW_WRITE_S": "0.25"}
    subprocess.run([*args, "--out", str(tmp_path / "ref")], check=True, capture_output=True, env=env, cwd=ROOT)
    reference = json.loads(next((tmp_path / "ref").rglob(runs.SUMMARY)).read_text())

    rng = random.Random(0)
    kills = mid_write = finished = 0
    attempt = 0
    while kills < 6 or mid_write < 1 or finished < 1:
        killing = kills < 6 or mid_write < 1
        out = tmp_path / f"cut{finished}"
        folder = runs.run_dir(out, "digits", "cifar_resnet8", "pcl", 0)
        proc = subprocess.Popen([*args, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=env, cwd=ROOT)
        started = time.time()  # wait until this process holds the run (imports done), then kill at random
        while proc.poll() is None and (records.read_json_file(folder / runs.LOCK) or {}).get("pid") != proc.pid:
            assert time.time() - started < 120, "the run never started"
            time.sleep(0.02)
        if killing:
            time.sleep(rng.uniform(0.5, 3.0))
        else:
            proc.wait(timeout=300)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            mid_write += any(p.name.endswith(".tmp") for p in folder.iterdir())
            for path in (folder / runs.METRICS, folder / runs.SUMMARY):  # whatever is on disk parses
                if path.exists():
                    lines = path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]
                    for line in lines:
                        json.loads(line)
            if (folder / runs.CHECKPOINT).exists():
                torch.load(folder / runs.CHECKPOINT, weights_only=True)
        else:
            assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
        if runs.run_status(folder) == "done":
            resumed = json.loads((folder / runs.SUMMARY).read_text())
            assert resumed["final"] == reference["final"] and resumed["best"] == reference["best"]
            assert [r["epoch"] for r in records.load_metrics(folder)] == list(range(1, 5))
            assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
            finished += 1
        attempt += 1
        assert attempt < 80, f"{kills} kills, {mid_write} inside a write, {finished} finished"


# ---------------------------------------------------------------------------------------------
# divergence


@pytest.fixture
def nan_method():
    """A test-only method whose loss turns NaN at its 5th step."""

    @register_method("nan_at_step5")
    class NanAtStep5(Vanilla):
        def losses(self, views, target, progress):
            ce = F.cross_entropy(self.net(views[0]), target)
            bad = torch.tensor(float("nan")) if progress.step >= 4 else torch.tensor(0.0)
            return {"ce": ce, "kd": bad}

    yield "nan_at_step5"
    METHODS._items.pop("nan_at_step5")


def test_a_diverged_run_is_recorded_and_the_sweep_goes_on(nan_method, tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["run", "--methods", f"{nan_method},vanilla", "--datasets", "digits", "--backbones", "cifar_resnet8",
                 "--seeds", "0", "--epochs", "2", "--launcher", "inline", "--no-progress", "--out", str(out)])
    assert code == 1
    bad = json.loads((runs.run_dir(out, "digits", "cifar_resnet8", nan_method, 0) / runs.SUMMARY).read_text())
    assert bad["status"] == "diverged"
    assert bad["divergence"]["terms"] == ["kd"] and bad["divergence"]["step"] == 4 and bad["divergence"]["epoch"] == 1
    states = {r["run"].split("/")[2]: r["state"] for r in run_states(out)}
    assert states == {nan_method: "diverged", "vanilla": "done"}
    assert "diverged" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the bad-input corpus: tests/bad_inputs/*.yaml, each with its expected message in `# expect:`


def corpus_cases():
    for path in sorted(CORPUS.glob("*.yaml")):
        header = path.read_bytes().split(b"\n")[0].decode()
        assert header.startswith("# expect: "), path
        yield pytest.param(path, header.removeprefix("# expect: "), id=path.stem)


def test_the_bad_input_corpus_is_large():
    assert len(list(corpus_cases())) >= 40


@pytest.mark.parametrize("path,expected", list(corpus_cases()))
def test_bad_config_file_is_one_line_and_touches_nothing(path, expected, tmp_path, capsys, monkeypatch):
    if "cuda" in path.stem and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(tmp_path)  # the results folder is the config's or the preset's, under this empty folder
    before = path.read_bytes()
    flag = ["--cluster", str(path), "--launcher", "slurm"] if path.stem.startswith("profile_") else [
        "--config", str(path)]
    assert main(["run", *flag, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err, err
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == []


def test_bad_input_leaves_an_existing_sweep_untouched(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["run", "--methods", "vanilla", "--datasets", "digits", "--backbones", "cifar_resnet8", "--seeds", "0",
            "--epochs", "1", "--launcher", "inline", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for bad in (["--methods", "vanila"], ["optim.lr=-1"], ["--seeds", "1,x"], ["--epochs", "3"], ["pcl.nope=1"]):
        assert main([*args, *bad]) == 2
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot
    assert "did you mean 'vanilla'" in capsys.readouterr().err
    # an invalid value is its own error, not "a different config" (which only a valid change is)
    for bad, expected in ((["--methods", "vanilla,one", "one.num_branches=-4"],
                           "one.num_branches must be from 2 to 16, got -4"),
                          (["--methods", "pcl", "pcl.branch_point=nosuch"], "cannot split backbone at 'nosuch'"),
                          (["--device", "cuda"], "CUDA is not available")):
        if "cuda" in bad and torch.cuda.is_available():
            continue
        assert main([*args, *bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err and "different config" not in err, err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot


@pytest.mark.parametrize("case", ["exits_at_import", "a_folder", "a_folder_with_slash"])
def test_a_plugin_that_exits_or_is_a_folder_is_one_line(case, tmp_path, capsys):
    plugin = tmp_path / "exits.py"
    plugin.write_text("import sys\nsys.exit(3)\n")
    spec = {"exits_at_import": str(plugin), "a_folder": str(tmp_path), "a_folder_with_slash": f"{tmp_path}/"}[case]
    out = tmp_path / "sweep"
    assert main(["run", "--plugin", spec, "--methods", "vanilla", "--datasets", "digits", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    expected = "calls sys.exit(3) while being imported" if case == "exits_at_import" else "is a folder"
    assert err.count("\n") == 1 and expected in err, err
    assert not out.exists()


def test_an_empty_folder_is_one_line_and_exit_1_for_table_plot_report_and_status(tmp_path, capsys):
    for command in ("table", "plot", "report", "status"):
        assert main([command, str(tmp_path)]) == 1, command
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(tmp_path) in err, (command, err)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# safe names and loading


@pytest.mark.parametrize("part", ["../../etc", "/abs/path", "a/../../b", "..", "x\\..\\y"])
def test_run_folders_never_escape_the_results_folder(part, tmp_path):
    out = tmp_path / "out"
    try:
        folder = runs.run_dir(out, part, part, part, 0)
    except Exception as err:  # a name that cannot be sanitised is refused
        assert "cannot name a run folder" in str(err)
        return
    assert folder.resolve().is_relative_to(out.resolve())
    assert len(folder.relative_to(out).parts) == 4


def test_checkpoints_are_loaded_with_weights_only(tmp_path):
    import pickle

    from bench.config import SweepConfig, from_dict
    from bench.sweep.settings import load_preset, run_config
    from bench.train.trainer import Trainer

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    sweep = from_dict(SweepConfig, load_preset("demo"))
    sweep.epochs = 1
    cfg = run_config(sweep, "vanilla", "cifar_resnet8", "digits", 0, {})
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / runs.CHECKPOINT).write_bytes(pickle.dumps({"epoch": Evil()}))
    trainer = Trainer(cfg, folder, progress_bar=False)
    summary = trainer.run()  # the unreadable checkpoint is ignored, training starts over
    assert summary["status"] == "done" and not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------------------------------------
# the run lock: atomic


def _race_for(folder: str, barrier, results) -> None:
    try:
        barrier.wait(timeout=30)
        with runs.RunLock(Path(folder)):
            results.put("trained")
            time.sleep(0.4)  # "training": the other process arrives while this one holds the run
    except runs.AlreadyRunning:
        results.put("refused")


def test_two_processes_racing_for_one_run_never_both_train_it(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for trial in range(50):
        folder = tmp_path / f"run{trial}"
        folder.mkdir()
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_race_for, args=(str(folder), barrier, results)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        outcomes = sorted(results.get(timeout=5) for _ in procs)
        assert outcomes == ["refused", "trained"], (trial, outcomes)
        assert not (folder / runs.LOCK).exists()  # released with its holder


def test_two_bench_runs_on_one_folder_train_each_run_once(tmp_path):
    out = tmp_path / "sweep"
    args = [sys.executable, "-m", "bench.cli", "run", "--methods", "vanilla", "--datasets", "digits", "--backbones",
            "cifar_resnet8", "--seeds", "0", "--epochs", "8", "--launcher", "inline", "--no-progress", "--out",
            str(out)]
    env = {**os.environ, "OKD_BENCH_SLOW_WRITE_S": "0.6"}  # the first run outlasts the second's start-up
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    folder = runs.run_dir(out, "digits", "cifar_resnet8", "vanilla", 0)
    started = time.time()
    while runs.lock_holder(folder) is None:
        assert time.time() - started < 120 and first.poll() is None, "the first run never started"
        time.sleep(0.05)
    second = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "1 running: skipped" in second.stdout or "skipped, already running elsewhere" in second.stderr
    assert "failed" not in second.stdout + second.stderr
    assert first.wait(timeout=300) == 0
    summary = json.loads((folder / runs.SUMMARY).read_text())
    assert summary["status"] == "done" and summary["resumes"] == []  # trained once, never restarted
    assert [r["epoch"] for r in records.load_metrics(folder)] == list(range(1, 9))


# ---------------------------------------------------------------------------------------------
# cancel signals only its own processes


def test_cancel_never_signals_a_process_that_reuses_a_recorded_pid(tmp_path, capsys):
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        identity = runs.process_identity(stranger.pid)
        out = tmp_path / "sweep"
        out.mkdir()
        reused = {**identity, "start_ticks": identity["start_ticks"] - 1}  # the pid, but another process
        (out / "sweep.json").write_text(json.dumps({"launcher": "local", "launcher_pid": stranger.pid,
                                                    "launcher_process": reused, "runs": {}}))
        assert main(["cancel", str(out)]) == 0
        time.sleep(0.3)
        assert stranger.poll() is None, "a process that merely has the recorded pid was signalled"
        (out / "sweep.json").write_text(json.dumps({"launcher": "local", "launcher_process": identity, "runs": {}}))
        assert main(["cancel", str(out)]) == 0
        assert stranger.wait(timeout=10) is not None  # the very process recorded is stopped
        assert "stopped 1 local processes" in capsys.readouterr().out
    finally:
        stranger.kill()
        stranger.wait()


def _sweep_processes(out: Path) -> list[int]:
    """Live processes whose command line names the sweep folder (its launcher, job controllers, workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if str(out).encode() in (entry / "cmdline").read_bytes() and runs.is_same_process(
                        runs.process_identity(int(entry.name))):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _wait_for_epoch(folder: Path, proc: subprocess.Popen, done: int) -> None:
    started = time.time()
    while len(records.load_metrics(folder)) < done:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() - started < 180, "no epoch finished"
        time.sleep(0.1)


def _with_sigint(disposition):
    """A Popen preexec_fn: the child starts with SIGINT at `disposition` (SIG_DFL as in a terminal's foreground,
    SIG_IGN as a background job), whatever the test process was started with."""
    return lambda: signal.signal(signal.SIGINT, disposition)


def test_cancel_sigterm_and_ctrl_c_stop_every_process_of_a_local_sweep_and_it_resumes_exactly(tmp_path):
    """Real processes: `bench cancel` on a live local sweep, SIGTERM to its launcher, Ctrl-C to its process group.
    Each time, within seconds, no process of the sweep is left (walking /proc), the run's lock is free, no traceback
    is printed; the run then resumes to the uninterrupted result. A launcher started with SIGINT ignored (a background
    job) ignores the group's SIGINT, and so do its jobs: the run trains on."""
    grid = ["--methods", "vanilla", "--datasets", "digits", "--backbones", "cifar_resnet8", "--seeds", "0",
            "--epochs", "12", "--no-progress", "compute.threads=1"]
    out = tmp_path / "sweep"
    folder = runs.run_dir(out, "digits", "cifar_resnet8", "vanilla", 0)
    env = {**os.environ, "OKD_BENCH_SLOW_WRITE_S": "0.3"}
    command = [sys.executable, "-m", "bench.cli", "run", *grid, "--launcher", "local", "--out", str(out)]
    for stop_by, epoch in (("cancel", 1), ("sigterm", 2), ("ctrl-c", 3), ("ctrl-c in the background", 4)):
        background = stop_by.endswith("background")
        before = len(records.load_metrics(folder)) if (folder / runs.METRICS).exists() else 0
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                cwd=ROOT, start_new_session=True,
                                preexec_fn=_with_sigint(signal.SIG_IGN if background else signal.SIG_DFL))
        _wait_for_epoch(folder, proc, max(epoch, before + 1))  # an epoch of this launcher's job, never a former one's
        t0 = time.time()
        if stop_by == "cancel":
            assert main(["cancel", str(out)]) == 0
        elif stop_by == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        if background:  # ignored by every process of the sweep: the run trains another epoch, then SIGTERM stops it
            _wait_for_epoch(folder, proc, len(records.load_metrics(folder)) + 1)
            t0 = time.time()
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert time.time() - t0 < 20, f"{stop_by}: took {time.time() - t0:.0f} s"
        time.sleep(0.5)
        assert _sweep_processes(out) == [], f"{stop_by}: processes of the sweep survive"
        assert "Traceback" not in err, err
        if stop_by != "cancel":
            expected = "interrupted" if stop_by == "ctrl-c" else "terminated (SIGTERM)"
            assert proc.returncode == (130 if stop_by == "ctrl-c" else 143), err
            assert expected in err and "stopped 1 running job" in err, err
        with runs.FileLock(folder / runs.LOCK_FILE, blocking=False):  # nobody holds the run
            pass
        assert runs.run_status(folder) == "partial"
    assert main(["run", *grid, "--launcher", "inline", "--out", str(out)]) == 0
    reference = tmp_path / "reference"
    assert main(["run", *grid, "--launcher", "inline", "--out", str(reference)]) == 0
    ref_folder = runs.run_dir(reference, "digits", "cifar_resnet8", "vanilla", 0)
    assert _numbers(records.load_metrics(folder)) == _numbers(records.load_metrics(ref_folder))
    assert len(json.loads((folder / runs.SUMMARY).read_text())["resumes"]) >= 4


def test_a_finished_sweep_leaves_no_launcher_to_signal(tmp_path):
    out = tmp_path / "sweep"
    assert main(["run", "--methods", "vanilla", "--datasets", "digits", "--backbones", "cifar_resnet8", "--seeds",
                 "0", "--epochs", "1", "--launcher", "inline", "--no-progress", "--out", str(out)]) == 0
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["launcher_process"] is None and "launcher_pid" not in manifest


# ---------------------------------------------------------------------------------------------
# checkpoints whose pickle is valid but whose contents are wrong


def _demo_config(epochs: int):
    from bench.config import SweepConfig, from_dict
    from bench.sweep.settings import load_preset, run_config

    sweep = from_dict(SweepConfig, load_preset("demo"))
    sweep.epochs = epochs
    return run_config(sweep, "vanilla", "cifar_resnet8", "digits", 0, {})


def _tamper(state: dict, damage: str) -> dict | None:
    """A trained run's checkpoint, damaged one way (None: a zero-byte file)."""
    if damage == "zero_bytes":
        return None
    if damage == "missing_key":
        del state["rng"]
    elif damage == "epoch_beyond_the_run":
        state["epoch"] = 5
    elif damage == "history_short":
        state["history"] = []
    elif damage == "method_not_a_dict":
        state["method"] = [1, 2]
    elif damage == "rng_empty":
        state["rng"] = {}
    elif damage == "rng_wrong_tensor":
        state["rng"]["torch"] = torch.zeros(5)
    elif damage == "history_without_epoch_s":
        del state["history"][0]["epoch_s"]
    elif damage == "best_malformed":
        state["best"] = {"peer0": {"top1_error": "low"}}
    elif damage == "extra_key":  # e.g. a checkpoint of a run with one more peer
        state["method"]["peer9.weight"] = torch.zeros(3)
    elif damage == "missing_weight":
        state["method"].pop(next(iter(state["method"])))
    elif damage == "wrong_shape":
        key = next(k for k, v in state["method"].items() if v.dim() == 4)
        state["method"][key] = state["method"][key][:1]
    elif damage == "empty_optimizer":
        state["optimizer"] = {}
    elif damage == "optimizer_wrong_shape":
        entry = next(iter(state["optimizer"]["state"].values()))
        entry["momentum_buffer"] = entry["momentum_buffer"].flatten()[:3]
    return state


DAMAGES = ["zero_bytes", "missing_key", "epoch_beyond_the_run", "history_short", "method_not_a_dict", "rng_empty",
           "rng_wrong_tensor", "history_without_epoch_s", "best_malformed", "extra_key", "missing_weight",
           "wrong_shape", "empty_optimizer", "optimizer_wrong_shape"]


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """A clean 1-epoch run: its summary, and its trained checkpoint (what the tampered ones start from)."""
    from bench.train.trainer import train_run

    folder = tmp_path_factory.mktemp("clean") / "run"
    summary = train_run(_demo_config(1), folder, progress_bar=False)
    return summary, torch.load(folder / runs.CHECKPOINT, weights_only=True), folder


def _numbers(history: list[dict]) -> list:
    return [(r["epoch"], r["loss"], r["top1_error"], r["top5_error"], r["lr"], r["step"]) for r in history]


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_rejected_checkpoint_leaves_no_trace_the_run_equals_a_clean_one(damage, clean_run, tmp_path, capsys):
    """Whatever is wrong with last.pt, it is rejected whole before anything is copied from it: the restarted run is
    bit-identical to a clean one (weights, optimizer, every epoch's numbers), and the warning is one line naming the
    file and its first problem."""
    import copy

    from bench.train.trainer import Trainer

    reference, trained, reference_folder = clean_run
    folder = tmp_path / "run"
    folder.mkdir()
    state = _tamper(copy.deepcopy(trained), damage)
    if state is None:
        (folder / runs.CHECKPOINT).write_bytes(b"")
    else:
        torch.save(state, folder / runs.CHECKPOINT)
    summary = Trainer(_demo_config(1), folder, progress_bar=False).run()
    assert summary["status"] == "done" and summary["epochs_done"] == 1 and summary["resumes"] == []
    assert summary["final"] == reference["final"]
    assert _numbers(records.load_metrics(folder)) == _numbers(records.load_metrics(reference_folder))
    again = torch.load(folder / runs.CHECKPOINT, weights_only=True)
    assert all(torch.equal(again["method"][k], trained["method"][k]) for k in trained["method"])
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if "starts over" in line]
    assert len(warning) == 1 and str(folder / runs.CHECKPOINT) in warning[0] and len(warning[0]) < 400, err
    assert len(list(folder.glob("last.pt.rejected-*"))) == 1  # the bad file is kept, not destroyed
    assert summary["rejected_checkpoints"][0]["file"].startswith("last.pt.rejected-")


# ---------------------------------------------------------------------------------------------
# rough edges: SIGTERM, stale temp files, a full disk


def test_sigterm_ends_a_run_with_a_message_and_it_resumes(tmp_path):
    out = tmp_path / "sweep"
    args = [sys.executable, "-m", "bench.cli", "run", "--methods", "vanilla", "--datasets", "digits", "--backbones",
            "cifar_resnet8", "--seeds", "0", "--epochs", "3", "--launcher", "inline", "--no-progress", "--out",
            str(out)]
    env = {**os.environ, "OKD_BENCH_SLOW_WRITE_S": "0.5"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    folder = runs.run_dir(out, "digits", "cifar_resnet8", "vanilla", 0)
    started = time.time()
    while not (folder / runs.METRICS).exists() or not records.load_metrics(folder):
        assert time.time() - started < 120 and proc.poll() is None, "no epoch finished"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated (SIGTERM)" in err and "Traceback" not in err, err
    assert not (folder / runs.LOCK).exists() and not list(folder.glob(".*.tmp"))
    assert main(args[3:]) == 0
    assert json.loads((folder / runs.SUMMARY).read_text())["resumes"][0]["epoch"] >= 1


def test_stale_temp_files_of_the_sweep_and_its_tables_are_cleaned(tmp_path):
    out = tmp_path / "sweep"
    args = ["run", "--methods", "vanilla", "--datasets", "digits", "--backbones", "cifar_resnet8", "--seeds", "0",
            "--epochs", "1", "--launcher", "inline", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    stale = [out / ".sweep.json.abc123.tmp", out / "tables" / ".results.md.x1.tmp", out / "plots" / ".final.tmp.png"]
    fresh = out / ".sweep.json.fresh.tmp"  # a concurrent writer's, seconds old: left alone
    for path in [*stale, fresh]:
        path.write_text("half-written")
    for path in stale:
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    assert main(args) == 0
    assert not any(p.exists() for p in stale) and fresh.exists()


@pytest.fixture(params=["400k", "3m"])  # full at the first write; full halfway through a 3.8 MB torch.save zip
def tiny_disk(tmp_path, request):
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={request.param}", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_named_with_its_path_and_corrupts_nothing(tiny_disk, capsys):
    out = tiny_disk / "sweep"
    code = main(["run", "--methods", "vanilla", "--datasets", "digits", "--backbones", "cifar_resnet32", "--seeds",
                 "0", "--epochs", "1", "--launcher", "inline", "--no-progress", "--out", str(out),
                 "data.batch_size=512"])
    err = capsys.readouterr().err
    assert code == 1 and f"no space left on {runs.run_dir(out, 'digits', 'cifar_resnet32', 'vanilla', 0)}" in err
    assert "Traceback" not in err and "unexpected pos" not in err
    assert not list(tiny_disk.rglob("*.tmp"))  # no half-written file left behind
    for path in tiny_disk.rglob("*.json"):
        json.loads(path.read_text())  # whatever was written is whole


def test_run_folders_of_an_older_version_are_read_resumed_and_skipped(tmp_path, capsys):
    """A sweep written before compute.cuda_graphs/cudnn_benchmark/branch_streams, deployed files and process
    identities existed: its finished run is skipped (not 'a different config'), its unfinished run resumes, tables
    and export work."""
    import yaml

    from tests.conftest import train_until_interrupted

    out = tmp_path / "sweep"
    args = ["run", "--methods", "vanilla", "--datasets", "digits", "--backbones", "cifar_resnet8", "--seeds", "0,1",
            "--epochs", "2", "--launcher", "inline", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    done, cut = (runs.run_dir(out, "digits", "cifar_resnet8", "vanilla", s) for s in (0, 1))
    cut_config = records.load_config(cut)
    runs.reset_run_folder(cut)
    train_until_interrupted(cut_config, cut, epoch=1)  # seed 1: one epoch done, then killed
    for folder in (done, cut):  # as the previous versions wrote them
        config = yaml.safe_load((folder / runs.CONFIG).read_text())
        for key in ("cuda_graphs", "cudnn_benchmark", "branch_streams", "threads"):
            del config["compute"][key]
        del config["runtime"], config["rampup_fraction"], config["optim"]["milestone_fractions"]
        del config["variant"], config["partners"]
        config["optim"]["milestones"], config["rampup_epochs"] = [6, 8], 4.0  # the demo's, whatever --epochs
        (folder / runs.CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
        state = torch.load(folder / runs.CHECKPOINT, weights_only=True)
        for key in ("rejected", "runtime"):
            del state[key]
        torch.save(state, folder / runs.CHECKPOINT)
    summary = json.loads((done / runs.SUMMARY).read_text())
    for key in ("deployed", "cuda_graphs", "cudnn_benchmark", "runs_per_device", "branch_streams", "runtime",
                "runtime_note", "rejected_checkpoints", "variant", "row", "variant_label", "default_headline",
                "partners", "partner_params", "partner_label", "flops", "two_stage", "diversity"):
        summary.pop(key)
    (done / runs.SUMMARY).write_text(json.dumps(summary))
    for name in ("deployed.safetensors", "deployed.json"):
        (done / name).unlink()
    (out / "sweep.json").write_text(json.dumps({"launcher": "inline", "launcher_pid": 1, "runs": {}}))
    capsys.readouterr()
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "1 to run (1 done: skipped)" in text and "2 run folders made before the schedule" in text
    resumed = records.load_config(cut)
    assert resumed.optim.milestones == [6, 8] and resumed.rampup_epochs == 4.0  # the schedule it started with
    assert json.loads((cut / runs.SUMMARY).read_text())["resumes"][0]["epoch"] == 1
    assert json.loads((done / runs.SUMMARY).read_text()) == summary  # untouched
    assert main(["table", str(out)]) == 0 and main(["export", str(done)]) == 0


def test_a_job_pickled_by_an_older_version_runs_with_this_versions_defaults(tmp_path):
    """A SLURM job queued (or a local job started) before an upgrade carries a pickle of the older RunJob and
    RunConfig, without the attributes and settings added since: it trains with their defaults, as an older
    config.yaml reads, instead of failing with an AttributeError inside the run."""
    import submitit

    from bench.config import SweepConfig, from_dict
    from bench.launch.jobs import RunJob
    from bench.sweep.grid import expand, validate
    from bench.sweep.settings import load_preset

    sweep = from_dict(SweepConfig, load_preset("demo"))
    sweep.methods, sweep.backbones, sweep.seeds, sweep.epochs, sweep.out = ["dml"], ["cifar_resnet8"], [0], 1, \
        str(tmp_path / "sweep")
    (spec,) = expand(sweep, validate(sweep))
    job = RunJob(threads=1)
    # what the pickle of the previous versions holds: no RunJob.runs_per_device, no logging settings, no
    # compute.cuda_graphs / cudnn_benchmark (pickle stores each object's __dict__ under its class's name)
    del job.__dict__["runs_per_device"], spec.config.__dict__["logging"]
    del spec.config.compute.__dict__["cuda_graphs"], spec.config.compute.__dict__["cudnn_benchmark"]
    del spec.config.compute.__dict__["threads"], spec.config.__dict__["runtime"]
    submitit.helpers.DelayedSubmission(job, spec).dump(tmp_path / "submitted.pkl")

    result = submitit.helpers.DelayedSubmission.load(tmp_path / "submitted.pkl").result()

    assert result["status"] == "done" and result["runs_per_device"] == 1 and result["runtime"]["intra_op_threads"] == 1
    assert result["cuda_graphs"] is False and records.load_config(spec.folder).logging.wandb == "off"
    assert [r["epoch"] for r in records.load_metrics(spec.folder)] == [1]


def test_a_resume_at_another_thread_count_is_recorded_and_said_in_the_summary(tmp_path):
    """The same settings give the same numbers; where a resume ran with other CPU threads than the start, the
    summary says so (and which), since the numbers may then differ from an uninterrupted run's."""
    from bench.train.trainer import train_run
    from tests.conftest import train_until_interrupted

    threads = torch.get_num_threads()
    folder = tmp_path / "run"
    config = _demo_config(2)
    try:
        torch.set_num_threads(1)
        train_until_interrupted(config, folder, epoch=1)
        torch.set_num_threads(2)
        summary = train_run(_demo_config(2), folder, progress_bar=False)
    finally:
        torch.set_num_threads(threads)
    assert summary["runtime"]["intra_op_threads"] == 1 and summary["resumes"][0]["intra_op_threads"] == 2
    assert "resumed at epoch 1 with intra_op_threads 1 -> 2" in summary["runtime_note"]
    assert records.load_config(folder).runtime["intra_op_threads"] == 2  # where the last segment ran
