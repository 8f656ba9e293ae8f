"""Trackers (TensorBoard, W&B offline) across a kill and resume, read back with their own readers; the per-run
CSV; `bench status` progress and ETA."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli import main
from tests.tracker_files import tensorboard_scalars, wandb_history

ROOT = Path(__file__).resolve().parents[1]
GRID = ["--datasets", "digits", "--backbones", "cifar_resnet8", "--seeds", "0", "--no-progress"]


def test_trackers_match_metrics_epoch_for_epoch_across_a_kill_and_resume(tmp_path):
    out = tmp_path / "sweep"
    args = [sys.executable, "-m", "bench.cli", "run", "--methods", "vanilla,dml", *GRID, "--epochs", "4",
            "--launcher", "inline", "--out", str(out), "logging.tensorboard=true", "logging.wandb=offline"]
    env = {**os.environ, "OKD_BENCH_SLOW_WRITE_S": "0.1", "WANDB_SILENT": "true"}
    first = out / "digits" / "cifar_resnet8" / "dml" / "seed0"
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill the whole process group once dml is mid-run
        metrics = first / "metrics.jsonl"
        if proc.poll() is not None or (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (first / "summary.json").exists(), proc.stderr.read().decode()[-2000:]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for method in ("vanilla", "dml"):
        run = out / "digits" / "cifar_resnet8" / method / "seed0"
        summary = json.loads((run / "summary.json").read_text())
        history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert summary["status"] == "done" and [r["epoch"] for r in history] == [1, 2, 3, 4]
        # TensorBoard: every scalar at every epoch once, equal to metrics.jsonl
        scalars = tensorboard_scalars(run / "tensorboard")
        for model in summary["eval_models"]:
            steps, values = zip(*scalars[f"top1_error/{model}"])
            assert steps == (1, 2, 3, 4)  # float32 in the event file
            assert values == pytest.approx([r["top1_error"][model] for r in history], rel=1e-6)
        assert [s for s, _ in scalars["lr"]] == [1, 2, 3, 4]
        assert {f"loss/{k}" for k in history[0]["loss"]} <= set(scalars) and "images_per_s" in scalars
        # W&B offline: one run id across the sessions, every epoch once, equal to metrics.jsonl; what a resumed
        # session re-sent after the kill repeats the killed session's values exactly
        ids, rows, ignored = wandb_history(run)
        assert len(ids) == 1
        assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
        for row in ignored:
            same = rows[row["epoch"] - 1]
            assert {k: v for k, v in row.items() if "/" in k} == {k: v for k, v in same.items() if "/" in k}
        for row, record in zip(rows, history):
            for model in summary["eval_models"]:
                assert row[f"top1_error/{model}"] == pytest.approx(record["top1_error"][model])
            assert row["lr"] == pytest.approx(record["lr"])
        # the flat CSV beside metrics.jsonl
        with open(run / "metrics.csv", newline="") as f:
            table = list(csv.DictReader(f))
        assert [int(r["epoch"]) for r in table] == [1, 2, 3, 4]
        assert float(table[-1][f"top1_error.{summary['headline_model']}"]) == pytest.approx(
            history[-1]["top1_error"][summary["headline_model"]])
    assert len(list((first / "wandb").glob("offline-run-*"))) == 2  # the killed session and the resumed one


def test_a_failing_tracker_warns_once_and_the_run_goes_on(tmp_path, capsys):
    out = tmp_path / "sweep"
    run = out / "digits" / "cifar_resnet8" / "vanilla" / "seed0"
    run.mkdir(parents=True)
    (run / "tensorboard").write_text("a file where the event folder belongs")  # TensorBoard cannot write
    assert main(["run", "--methods", "vanilla", *GRID, "--epochs", "2", "--launcher", "inline", "--out", str(out),
                 "logging.tensorboard=true"]) == 0
    err = capsys.readouterr().err
    assert err.count("tracker could not start") + err.count("tensorboard logging failed") == 1, err
    assert json.loads((run / "summary.json").read_text())["status"] == "done"


def test_a_tracker_failing_mid_run_warns_once_and_the_run_goes_on(tmp_path, capsys, monkeypatch):
    import errno

    from bench.train import loggers

    calls = []

    def full_disk(self, epoch, scalars):
        calls.append(epoch)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(loggers.TensorBoardTracker, "send", full_disk)
    out = tmp_path / "sweep"
    assert main(["run", "--methods", "vanilla", *GRID, "--epochs", "3", "--launcher", "inline", "--out", str(out),
                 "logging.tensorboard=true"]) == 0
    err = capsys.readouterr().err
    assert err.count("tensorboard logging failed") == 1 and "No space left on device" in err and calls == [1]
    run = out / "digits" / "cifar_resnet8" / "vanilla" / "seed0"
    assert json.loads((run / "summary.json").read_text())["epochs_done"] == 3


@pytest.mark.parametrize("override, expected", [
    ("logging.wandb=offlne", "did you mean 'offline'"),
    ("logging.wandb=sometimes", "unknown logging.wandb mode 'sometimes'"),
])
def test_bad_logging_settings_are_one_line(override, expected, tmp_path, capsys):
    assert main(["run", "--methods", "vanilla", *GRID, "--out", str(tmp_path / "o"), override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "o").exists()


def test_missing_tracker_package_is_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert main(["run", "--methods", "vanilla", *GRID, "--out", str(tmp_path / "o"), "logging.wandb=offline"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the wandb package is not installed" in err and "pip install" in err


def test_status_shows_progress_speed_and_eta(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["run", "--methods", "vanilla,dml", *GRID, "--epochs", "3", "--launcher", "inline",
                 "--out", str(out)]) == 0
    dml = out / "digits" / "cifar_resnet8" / "dml" / "seed0"
    history = [json.loads(line) for line in (dml / "metrics.jsonl").read_text().splitlines()]
    (dml / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history[:1]))  # as if stopped at 1/3
    (dml / "summary.json").unlink()
    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if "/dml/" in line)
    assert "stopped" in row and "1/3" in row and f"{history[0]['top1_error']['net0']:.2f}" in row
    assert f"{history[0]['images_per_s']:.0f}" in row
    eta = 2 * history[0]["epoch_s"]  # two epochs left at its measured epoch time
    assert f"{int(eta) // 3600}:{int(eta) // 60 % 60:02d}:{int(eta) % 60:02d}" in row
    assert "1 done, 1 stopped; 4/6 epochs; sweep ETA" in text


def test_status_watch_redraws_until_every_run_has_finished(tmp_path, capsys, monkeypatch):
    from bench.results import status

    out = tmp_path / "sweep"
    assert main(["run", "--methods", "vanilla", *GRID, "--epochs", "1", "--launcher", "inline", "--out", str(out)]) == 0
    run = out / "digits" / "cifar_resnet8" / "vanilla" / "seed0"
    summary = (run / "summary.json").read_bytes()
    (run / "summary.json").unlink()  # stopped: the watch waits ...
    draws = []

    def pause(seconds):
        draws.append(seconds)
        (run / "summary.json").write_bytes(summary)  # ... until the run is done again

    monkeypatch.setattr(status.time, "sleep", pause)
    capsys.readouterr()
    assert main(["status", str(out), "--watch", "2"]) == 0
    text = capsys.readouterr().out
    assert draws == [2.0] and text.count("(every 2 s, Ctrl-C to stop)") == 2 and "1 done" in text
    assert main(["status", str(out), "--watch", "0"]) == 2
