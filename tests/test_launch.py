"""The launcher: local submitit subprocesses, idempotent sweeps, locks, status, and a real SLURM cluster."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.results.status import run_states
from bench.store import records, runs
from tests.slurm_helpers import require_slurm

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "slurm" / "local.yaml"
GRID = ["--datasets", "digits", "--backbones", "cifar_resnet8", "--no-progress"]


def bench(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def summaries(out: Path) -> dict[str, dict]:
    return {p.parent.relative_to(out).as_posix(): json.loads(p.read_text()) for p in out.rglob(runs.SUMMARY)}


def wait_for(predicate, timeout: float, what: str, every: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


# ---------------------------------------------------------------------------------------------
# local launcher (submitit subprocesses)


def test_local_launcher_runs_in_parallel_and_status_shows_done(tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["run", "--methods", "vanilla,one", "--seeds", "0", "--epochs", "1", *GRID, "--out", str(out),
                 "--launcher", "local", "--max-parallel", "2"])
    assert code == 0
    assert {s["status"] for s in summaries(out).values()} == {"done"} and len(summaries(out)) == 2
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2 done" in text and "digits/cifar_resnet8/one/seed0" in text


def test_failed_runs_are_kept_until_retry_failed(tmp_path, capsys, monkeypatch):
    out = tmp_path / "sweep"
    args = ["run", "--methods", "vanilla,dml", "--seeds", "0", "--epochs", "1", *GRID, "--out", str(out),
            "--launcher", "inline"]
    monkeypatch.setenv("OKD_BENCH_FAIL_METHODS", "dml")  # dml's run fails once it has started
    assert main(args) == 1
    states = {r["run"]: r for r in run_states(out)}
    assert states["digits/cifar_resnet8/dml/seed0"]["state"] == "failed"
    assert "injected failure of dml" in states["digits/cifar_resnet8/dml/seed0"]["error"]
    assert states["digits/cifar_resnet8/vanilla/seed0"]["state"] == "done"
    capsys.readouterr()
    assert main(args) == 0  # skipped, not rerun
    assert "1 failed" in capsys.readouterr().out
    monkeypatch.delenv("OKD_BENCH_FAIL_METHODS")
    assert main([*args, "--retry-failed"]) == 0
    assert {r["state"] for r in run_states(out)} == {"done"}


def test_a_run_that_is_still_running_is_never_started_twice(tmp_path, capsys):
    out = tmp_path / "sweep"
    folder = runs.run_dir(out, "digits", "cifar_resnet8", "vanilla", 0)
    with runs.RunLock(folder):
        assert main(["run", "--methods", "vanilla", "--seeds", "0", "--epochs", "1", *GRID, "--out", str(out),
                     "--launcher", "inline"]) == 0
        assert "1 running" in capsys.readouterr().out
        assert not (folder / runs.SUMMARY).exists()
        assert [r["state"] for r in run_states(out)] == ["running"]
        other = subprocess.run(  # another process cannot take the lock
            [sys.executable, "-c", f"from bench import records, runs; runs.RunLock({str(folder)!r}).__enter__()"],
            capture_output=True, text=True, cwd=ROOT)
        assert other.returncode != 0 and "AlreadyRunning" in other.stderr
    assert runs.lock_holder(folder) is None


def test_profile_with_unknown_key_is_one_line(tmp_path, capsys):
    profile = tmp_path / "bad.yaml"
    profile.write_text("slurm_partiton: debug\n")
    assert main(["run", "--launcher", "slurm", "--cluster", str(profile), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'slurm_partition'" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# the real local SLURM cluster


@pytest.mark.slurm
def test_slurm_job_array_sweep_completes_and_reports_its_failed_run(tmp_path):
    """One job array for the sweep, one task per run; a run failing in its task is reported while the others
    finish."""
    require_slurm()
    out = tmp_path / "sweep"
    proc = bench("run", "--launcher", "slurm", "--cluster", str(PROFILE), "--methods", "vanilla,pcl,dml",
                 "--seeds", "0", "--epochs", "2", *GRID, "--out", str(out), env={"OKD_BENCH_FAIL_METHODS": "dml"})
    assert proc.returncode == 1, proc.stderr[-2000:]
    done = summaries(out)
    assert len(done) == 3 and {m: s["status"] for m, s in done.items() if "/dml/" not in m} == {
        "digits/cifar_resnet8/vanilla/seed0": "done", "digits/cifar_resnet8/pcl/seed0": "done"}
    manifest = json.loads((out / "sweep.json").read_text())
    job_ids = {r["job_id"] for r in manifest["runs"].values()}
    assert len({j.split("_")[0] for j in job_ids}) == 1 and len(job_ids) == 3  # one array, three tasks
    status = bench("status", str(out))
    assert "2 done" in status.stdout and "1 failed" in status.stdout
    dml_line = next(line for line in status.stdout.splitlines() if "/dml/" in line)
    assert "failed" in dml_line and "injected failure of dml" in dml_line
    assert "done" in next(line for line in status.stdout.splitlines() if "/vanilla/" in line)


@pytest.mark.slurm
def test_slurm_requeue_resumes_to_the_uninterrupted_result(tmp_path):
    require_slurm()
    common = ["--methods", "vanilla", "--seeds", "0", "--epochs", "40", *GRID, "data.batch_size=16",
              "--launcher", "slurm", "--cluster", str(PROFILE)]
    cut, ref = tmp_path / "cut", tmp_path / "ref"
    assert bench("run", *common, "--out", str(cut), "--no-wait").returncode == 0
    assert bench("run", *common, "--out", str(ref), "--no-wait").returncode == 0
    folder = runs.run_dir(cut, "digits", "cifar_resnet8", "vanilla", 0)
    wait_for(lambda: len(records.load_metrics(folder)) >= 3, 240, "three epochs before the requeue")
    job_id = json.loads((folder / "job.json").read_text())["job_id"]
    subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True)
    wait_for(lambda: runs.run_status(folder) == "done", 300, "the requeued run to finish", every=1)
    ref_folder = runs.run_dir(ref, "digits", "cifar_resnet8", "vanilla", 0)
    wait_for(lambda: runs.run_status(ref_folder) == "done", 300, "the reference run", every=1)
    resumed, reference = (json.loads((f / runs.SUMMARY).read_text()) for f in (folder, ref_folder))
    assert resumed["resumes"] and resumed["resumes"][0]["epoch"] >= 3  # it really was cut and resumed
    assert [r["epoch"] for r in records.load_metrics(folder)] == list(range(1, 41))
    assert resumed["final"] == reference["final"] and resumed["best"] == reference["best"]


@pytest.mark.slurm
def test_slurm_cancelled_sweep_is_seen_as_cancelled(tmp_path):
    require_slurm()
    out = tmp_path / "sweep"
    assert bench("run", "--launcher", "slurm", "--cluster", str(PROFILE), "--methods", "vanilla", "--seeds", "0,1",
                 "--epochs", "200", *GRID, "--out", str(out), "--no-wait").returncode == 0
    wait_for(lambda: any(r["state"] == "running" for r in run_states(out)), 120, "a running job")
    cancel = bench("cancel", str(out))
    assert cancel.returncode == 0 and "cancelled 2 SLURM jobs" in cancel.stdout
    states = wait_for(lambda: (s := run_states(out)) and all(r["state"] == "cancelled" for r in s) and s, 60,
                      "both runs to be seen as cancelled")
    assert len(states) == 2
    assert "2 cancelled" in bench("status", str(out)).stdout


def test_two_process_distributed_run_with_gloo(tmp_path):
    out = tmp_path / "sweep"
    assert main(["run", "--methods", "pcl", "--seeds", "0", "--epochs", "2", *GRID, "--out", str(out),
                 "--launcher", "local", "--tasks-per-node", "2"]) == 0
    summary = next(iter(summaries(out).values()))
    assert summary["status"] == "done" and summary["world_size"] == 2 and summary["ranks_in_sync"] is True
    folder = runs.run_dir(out, "digits", "cifar_resnet8", "pcl", 0)
    assert [r["epoch"] for r in records.load_metrics(folder)] == [1, 2]  # written by rank 0 only
    assert summary["final"]["mean_teacher0"]["top1_error"] < 60.0
    assert summary["deployed"]["eval_model"] == "mean_teacher0" and (folder / "deployed.safetensors").exists()
    assert main(["export", str(folder), "--model", "peer1"]) == 0  # a DDP run's last.pt exports like any other


# ---------------------------------------------------------------------------------------------
# several runs per device


def test_packed_runs_equal_the_same_runs_trained_alone(tmp_path, capsys):
    """--runs-per-device 2: two runs train at once, in two processes sharing the device; at the same thread count
    (compute.threads) each ends exactly as the same run trained alone, and records its threads and packing; a table
    over both flags the cells whose runs differ in packing."""
    from bench.results.aggregate import TableSpec, load_runs, render

    grid = ["--methods", "vanilla,pcl", "--seeds", "0", "--epochs", "2", *GRID, "compute.threads=1"]
    assert main(["run", *grid, "--out", str(tmp_path / "packed"), "--launcher", "local",
                 "--runs-per-device", "2"]) == 0
    assert main(["run", *grid, "--out", str(tmp_path / "alone"), "--launcher", "inline"]) == 0
    packed, alone = summaries(tmp_path / "packed"), summaries(tmp_path / "alone")
    assert set(packed) == set(alone) and len(packed) == 2
    for run in packed:
        assert packed[run]["runs_per_device"] == 2 and alone[run]["runs_per_device"] == 1
        assert packed[run]["runtime"]["intra_op_threads"] == alone[run]["runtime"]["intra_op_threads"] == 1
        assert packed[run]["final"] == alone[run]["final"] and packed[run]["best"] == alone[run]["best"]
        config = records.load_config(tmp_path / "packed" / run)
        assert config.runtime["runs_per_device"] == 2 and config.runtime["intra_op_threads"] == 1
    table = render(load_runs([tmp_path / "packed", tmp_path / "alone"]), TableSpec())
    assert "‡" in table and "differ in packing" in table and "threads" not in table.split("‡:")[1]
    assert "‡" not in render(load_runs([tmp_path / "packed"]), TableSpec())


def test_cost_table_divides_gpu_hours_by_the_packing(tmp_path):
    from bench.results.aggregate import cost_table, load_runs

    out = tmp_path / "sweep"
    assert main(["run", "--methods", "vanilla", "--seeds", "0,1", "--epochs", "1", *GRID, "--out", str(out),
                 "--launcher", "inline"]) == 0
    for seed, k in ((0, 1), (1, 4)):  # as if run on a GPU, alone and packed 4 per GPU
        path = runs.run_dir(out, "digits", "cifar_resnet8", "vanilla", seed) / runs.SUMMARY
        summary = json.loads(path.read_text())
        path.write_text(json.dumps({**summary, "device": "cuda:0", "wall_clock_s": 3600.0, "runs_per_device": k}))
    table = cost_table(load_runs([out]))
    assert table.gpu_hours.iloc[0] == pytest.approx((1.0 + 0.25) / 2)


@pytest.mark.slurm
def test_slurm_task_trains_its_packed_runs_together(tmp_path):
    require_slurm()
    out = tmp_path / "sweep"
    proc = bench("run", "--launcher", "slurm", "--cluster", str(PROFILE), "--methods", "vanilla,one", "--seeds", "0",
                 "--epochs", "1", *GRID, "--out", str(out), "--runs-per-device", "2")
    assert proc.returncode == 0, proc.stderr
    assert "2 runs in 1 tasks" in proc.stdout
    done = summaries(out)
    assert len(done) == 2 and all(s["status"] == "done" and s["runs_per_device"] == 2 for s in done.values())
    job_ids = {json.loads((out / run / "job.json").read_text())["job_id"] for run in done}
    assert len(job_ids) == 1  # one array task held both
