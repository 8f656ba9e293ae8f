"""The one checked output path: file modes from the umask, refused locations named in one line before anything is
written, stale temp files of killed writers removed on the next successful run."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.store import runs

ROOT = Path(__file__).resolve().parents[1]
GRID = ["--methods", "vanilla", "--datasets", "digits", "--backbones", "cifar_resnet8", "--seeds", "0", "--epochs",
        "1", "--no-progress", "--launcher", "inline"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A finished one-run sweep, its files written under umask 027 (as a group-shared cluster account would)."""
    out = tmp_path_factory.mktemp("outputs") / "sweep"
    run = runs.run_dir(out, "digits", "cifar_resnet8", "vanilla", 0)
    script = (f"import os, sys; os.umask(0o027); from bench.cli import main; "
              f"codes = [main({['run', *GRID, '--out', str(out)]!r}), main(['report', {str(out)!r}]), "
              f"main(['export', {str(run)!r}, '--format', 'torchscript']), "
              f"main(['table', {str(out)!r}, '--csv', {str(out / 'all.csv')!r}])]; sys.exit(max(codes))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return out


def test_every_file_a_command_writes_has_the_mode_the_umask_gives(sweep):
    written = [p for p in sweep.rglob("*") if p.is_file() and ".submitit" not in p.parts and p.name != ".run.lock"]
    names = {p.name for p in written}
    assert {"summary.json", "last.pt", "config.yaml", "metrics.jsonl", "deployed.safetensors", "deployed.pt",
            "sweep.json", "report.html", "results.md", "all.csv"} <= names
    assert any(p.suffix == ".png" for p in written)
    wrong = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written if stat.S_IMODE(p.stat().st_mode) != 0o640}
    assert not wrong, wrong


def _refused(args: list[str], capsys) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("case", ["csv_is_a_folder", "write_is_a_file", "plot_write_is_a_file", "report_in_proc",
                                  "export_in_proc", "csv_in_proc", "run_out_in_proc", "write_below_a_file",
                                  "report_read_only", "run_out_read_only"])
def test_a_refused_output_location_is_one_line_and_nothing_is_written(case, sweep, tmp_path, capsys):
    run = runs.run_dir(sweep, "digits", "cifar_resnet8", "vanilla", 0)
    a_file, a_folder, read_only = tmp_path / "afile", tmp_path / "adir", tmp_path / "ro"
    a_file.write_text("x")
    a_folder.mkdir()
    read_only.mkdir()
    read_only.chmod(0o555)
    if "read_only" in case and os.geteuid() == 0:  # root writes anywhere but on a read-only file system
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(read_only)]).returncode:
            pytest.skip("cannot mount a read-only tmpfs here")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    args = {"csv_is_a_folder": ["table", str(sweep), "--csv", str(a_folder)],
            "write_is_a_file": ["table", str(sweep), "--write", str(a_file)],
            "plot_write_is_a_file": ["plot", str(sweep), "--write", str(a_file)],
            "report_in_proc": ["report", str(sweep), "--out", "/proc/okd-report.html"],
            "export_in_proc": ["export", str(run), "--out", "/proc/okd.safetensors"],
            "csv_in_proc": ["table", str(sweep), "--csv", "/proc/okd.csv"],
            "run_out_in_proc": ["run", *GRID, "--out", "/proc/okd-sweep"],
            "write_below_a_file": ["table", str(sweep), "--write", str(a_file / "tables")],
            "report_read_only": ["report", str(sweep), "--out", str(read_only / "r.html")],
            "run_out_read_only": ["run", *GRID, "--out", str(read_only / "sweep")]}[case]
    try:
        err = _refused(args, capsys)
    finally:
        if "read_only" in case and os.geteuid() == 0:
            subprocess.run(["umount", str(read_only)], check=False)
    assert any(s in err for s in ("is a folder", "is a file", "cannot write in", "not writable")), err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not list(Path("/proc").glob("okd*"))


def test_temp_files_of_a_killed_writer_go_on_the_next_successful_run(sweep, tmp_path):
    """A writer killed mid-write leaves `.<file>.<pid>-<random>.tmp`: whatever its age, it is removed by the next
    successful run once its process is gone; a live writer's temp file is left alone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "sweep"
    assert main(["run", *GRID, "--out", str(out)]) == 0
    killed = [out / f".sweep.json.{dead.pid}-abc123.tmp", out / "tables" / f".results.md.{dead.pid}-x1.tmp",
              runs.run_dir(out, "digits", "cifar_resnet8", "vanilla", 0) / f".last.pt.{dead.pid}-zz.tmp"]
    live = out / f".sweep.json.{os.getppid()}-live.tmp"
    for path in [*killed, live]:
        path.write_text("half-written")
    assert main(["run", *GRID, "--out", str(out), "optim.lr=0.05"]) == 2  # refused: nothing is touched
    assert all(p.exists() for p in killed)
    assert main(["run", *GRID, "--out", str(out)]) == 0  # done already: a successful run all the same
    assert [p for p in killed if p.exists()] == [] and live.exists()
