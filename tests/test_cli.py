"""The `bench` command: the grid on digits, skipping finished runs, and bad input as one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.store import runs

GRID = ["--datasets", "digits", "--backbones", "cifar_resnet8", "--epochs", "1", "--no-progress",
        "--launcher", "inline"]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*") if p.is_file()}


def test_run_grid_then_skip_finished_runs(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["run", "--methods", "vanilla,cl", "--seeds", "0,1", *GRID, "--out", str(out)]) == 0
    folders = sorted(p.parent.relative_to(out).as_posix() for p in out.rglob(runs.SUMMARY))
    assert folders == ["digits/cifar_resnet8/cl/seed0", "digits/cifar_resnet8/cl/seed1",
                       "digits/cifar_resnet8/vanilla/seed0", "digits/cifar_resnet8/vanilla/seed1"]
    before = snapshot(out / "digits")
    capsys.readouterr()
    assert main(["run", "--methods", "vanilla,cl", "--seeds", "0,1", *GRID, "--out", str(out)]) == 0
    assert "4 done: skipped" in capsys.readouterr().out
    assert snapshot(out / "digits") == before  # the runs are untouched (tables and plots are rewritten)


def test_list_shows_methods_options_backbones_datasets_presets(capsys):
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    for word in ("vanilla", "dml", "cl", "one", "okddip", "pcl", "num_peers=3", "cifar_resnet32", "digits",
                 "cifar100", "imagenet", "demo", "paper"):
        assert word in text
    assert text.index("cifar_resnet8") < text.index("more timm models")


BAD_INPUT = [
    (["--methods", "pcll"], "did you mean 'pcl'"),
    (["--methods", "nosuch"], "unknown method 'nosuch'"),
    (["--backbones", "cifar_resnet33"], "did you mean 'cifar_resnet32'"),
    (["--datasets", "cifar1000"], "did you mean 'cifar100'"),
    (["--preset", "demoo"], "did you mean 'demo'"),
    (["--seeds", "0,,1"], "empty items"),
    (["--seeds", "-1"], "not a non-negative integer"),
    (["--epochs", "0"], "epochs must be an integer from 1 to 100000"),
    (["--epochs", "-3"], "epochs must be an integer from 1 to 100000"),
    (["--epochs", "two"], "invalid int value"),
    (["--epochs", "1e20"], "invalid int value"),
    (["--epochs", "100000000000000000000"], "epochs must be an integer from 1 to 100000"),
    (["--methods", ""], "--methods is empty"),
    (["--datasets", ""], "--datasets is empty"),
    (["--out", ""], "--out is empty"),
    (["--device", ""], "--device is empty"),
    (["--config", ""], "--config is empty"),
    (["--methods", "pcl", "pcl.branch_point=nosuch"], "valid split points are"),
    (["--methods", "pcl", "pcl.num_peers=0"], "pcl.num_peers must be from 2 to 16, got 0"),
    (["--methods", "one", "one.num_branches=-2"], "one.num_branches must be from 2 to 16, got -2"),
    (["optim.momentum=-0.9"], "optim.momentum must be from 0 to below 1"),
    (["optim.lr=.nan"], "optim.lr must be a positive number"),
    (["optim.lrr=0.1"], "did you mean 'lr'"),
    (["pcl.num_peer=2"], "did you mean 'num_peers'"),
    (["optim.lr=fast"], "expected a number"),
    (["--datasets", "cifar10", "--data-root", "/nonexistent/data"], "--download"),
]


@pytest.mark.parametrize("args,message", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_touches_nothing(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty --out must not fall back to results/demo here either
    out = tmp_path / "out"
    code = main(["run", "--out", str(out), "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_table_model_and_speed_csv_are_checked_before_any_work(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["run", "--methods", "pcl", "--datasets", "digits", "--backbones", "cifar_resnet8", "--seeds", "0",
                 "--epochs", "1", "--launcher", "inline", "--no-progress", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["table", str(out), "--model", "mean_teacher"]) == 2
    err = capsys.readouterr().err
    assert "unknown --model 'mean_teacher'; did you mean 'mean_teacher" in err and "peer2" in err
    assert err.count("ensemble") == 1
    assert main(["speed", "--methods", "vanilla", "--backbones", "cifar_resnet8", "--device", "cpu", "--csv",
                 str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--csv {tmp_path} is a folder" in err and err.count("\n") == 1


def test_options_for_a_method_outside_the_sweep_are_refused(tmp_path, capsys):
    """Issue 30, item 7: an option of a method that is not in the sweep is a mistake (exit 2, nothing written); a
    preset's options for methods the user left out are dropped without a word."""
    assert main(["run", "--methods", "vanilla", "--datasets", "digits", "--backbones", "cifar_resnet8", "--seeds",
                 "0", "--epochs", "1", "--launcher", "inline", "--no-progress", "--out", str(tmp_path / "o"),
                 "pcl.temperature=4"]) == 2
    err = capsys.readouterr().err
    assert "options for pcl are set (pcl.temperature), but pcl is not in this sweep's methods (vanilla)" in err
    assert err.count("\n") == 1 and not (tmp_path / "o").exists()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("options: {one: {num_branches: 4}}\n")
    assert main(["run", "--methods", "pcl", "--datasets", "digits", "--config", str(cfg), "--out",
                 str(tmp_path / "o")]) == 2
    assert "options for one are set" in capsys.readouterr().err and not (tmp_path / "o").exists()
    from bench.cli.grid import build_sweep
    from bench.cli.parser import make_parser

    args = make_parser().parse_args(["run", "--preset", "okdph-official", "--methods", "vanilla"])
    sweep, _ = build_sweep(args)  # the preset sets okdph's options; okdph is not in this sweep
    assert sweep.options == {}


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_without_cuda_is_refused_before_anything_is_written(tmp_path, capsys):
    assert main(["run", "--device", "cuda", "--datasets", "digits", "--out", str(tmp_path / "o")]) == 2
    assert "CUDA is not available here" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_bad_yaml_config_names_the_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 2\noptim: {lr: 0.1\n")
    assert main(["run", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "malformed YAML" in err and "line" in err and err.count("\n") == 1


def test_unwritable_results_folder(tmp_path, capsys):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        target = blocker / "sub"  # a file in the way: even root cannot create a folder there
    else:
        target = tmp_path / "ro" / "sub"
        (tmp_path / "ro").mkdir(mode=0o500)
    assert main(["run", *GRID, "--methods", "vanilla", "--out", str(target)]) == 2
    assert "results folder" in capsys.readouterr().err


def test_results_folder_of_another_config_is_refused_unless_forced(tmp_path, capsys):
    out = tmp_path / "o"
    args = ["run", *GRID, "--methods", "vanilla", "--seeds", "0", "--out", str(out)]
    assert main([*args, "--epochs", "1"]) == 0
    run = out / "digits/cifar_resnet8/vanilla/seed0"
    before = snapshot(out)
    capsys.readouterr()
    assert main([*args, "--epochs", "2"]) == 2
    assert "different config" in capsys.readouterr().err and snapshot(out) == before
    assert main([*args, "--epochs", "2", "--force"]) == 0
    assert json.loads((run / runs.SUMMARY).read_text())["epochs_done"] == 2


def test_console_script_prints_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--methods", "nosuch", "--datasets", "digits"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("bench: error: unknown method 'nosuch'")
    assert "Traceback" not in proc.stderr
