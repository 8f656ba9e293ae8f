"""Plug-ins: a user's method file outside the repository, an installed package's entry point, and what a
run records of them; every bad plug-in is one line before any run starts."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench import plugins
from bench.cli import main
from tests.slurm_helpers import require_slurm

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mutual_mse.py"
GRID = ["--datasets", "digits", "--backbones", "cifar_resnet8", "--seeds", "0", "--epochs", "1", "--no-progress"]


def bench(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env={**os.environ, **(env or {})})


def user_copy(tmp_path: Path) -> Path:
    """The example method as a user's own file, outside the repository."""
    mine = tmp_path / "elsewhere" / "my_method.py"
    mine.parent.mkdir(parents=True)
    shutil.copy(EXAMPLE, mine)
    return mine


def test_plugin_method_trains_with_the_local_launcher_and_gets_its_own_row(tmp_path, capsys):
    mine = user_copy(tmp_path)
    out = tmp_path / "sweep"
    proc = bench("run", "--plugin", str(mine), "--methods", "mutual_mse", *GRID, "--out", str(out),
                 "--launcher", "local", "mutual_mse.alpha=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = out / "digits" / "cifar_resnet8" / "mutual_mse" / "seed0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done" and summary["display_name"] == "Mutual-MSE"
    assert summary["options"] == {"alpha": 2.0}
    record = {"name": "my_method", "source": "file", "file": str(mine.resolve()),
              "sha256": hashlib.sha256(mine.read_bytes()).hexdigest()}
    assert record in summary["plugins"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["plugins"] == [str(mine.resolve())] and record in config["loaded_plugins"]
    # its own row in the table, named by the method class, read without the plug-in loaded (not in this process)
    assert "mutual_mse" not in __import__("methods").METHODS
    assert main(["table", str(out)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert any(r.startswith("| Mutual-MSE |") for r in rows)
    # deployed as a plain timm network, like a built-in method's headline model
    import timm
    from safetensors.torch import load_file

    net = timm.create_model("cifar_resnet8", num_classes=10)
    net.load_state_dict(load_file(str(run / "deployed.safetensors")))
    # bench export rebuilds it in a fresh process from the plug-in its run recorded
    exported = bench("export", str(run), "--model", "peer1", "--out", str(tmp_path / "peer1.safetensors"))
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert "exported mutual_mse 'peer1'" in exported.stdout
    # bench list --plugin shows it, with its option (under a name of its own here: this process keeps it)
    listed = tmp_path / "listed.py"
    listed.write_text(EXAMPLE.read_text().replace('"mutual_mse"', '"listed_mutual"'))
    capsys.readouterr()
    assert main(["list", "--plugin", str(listed)]) == 0
    text = capsys.readouterr().out
    assert "listed_mutual" in text and "alpha=1.0" in text and f"plug-in listed (file: {listed.resolve()})" in text


@pytest.mark.slurm
def test_plugin_method_trains_in_a_slurm_job_that_reimports_it(tmp_path):
    require_slurm()
    mine = user_copy(tmp_path)
    out = tmp_path / "sweep"
    proc = bench("run", "--launcher", "slurm", "--cluster", str(ROOT / "slurm" / "local.yaml"), "--plugin", str(mine),
                 "--methods", "mutual_mse", *GRID, "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "digits" / "cifar_resnet8" / "mutual_mse" / "seed0" / "summary.json").read_text())
    assert summary["status"] == "done" and summary["display_name"] == "Mutual-MSE"
    manifest = json.loads((out / "sweep.json").read_text())
    (job_id,) = [r["job_id"] for r in manifest["runs"].values()]
    accounting = subprocess.run(["sacct", "-n", "-X", "-j", job_id.split("_")[0], "-o", "State"], capture_output=True,
                                text=True, timeout=30)
    assert "COMPLETED" in accounting.stdout  # it really ran as a SLURM job
    assert "| Mutual-MSE |" in bench("table", str(out)).stdout


def test_installed_package_entry_point_is_found(tmp_path):
    """A package installed with an `okd_bench.plugins` entry point (a real .dist-info on the path) is imported by
    every bench command, and nothing in the core names it."""
    site = tmp_path / "site"
    pkg = site / "okd_ep_demo"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(EXAMPLE.read_text().replace('"mutual_mse"', '"ep_mutual"'))
    info = site / "okd_ep_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: okd-ep-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[okd_bench.plugins]\nep_demo = okd_ep_demo\n")
    env = {"PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}
    listed = bench("list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "ep_mutual" in listed.stdout and "plug-in ep_demo (entry point" in listed.stdout
    broken = site / "okd_ep_broken"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('needs libfoo')\n")
    (info / "entry_points.txt").write_text("[okd_bench.plugins]\nep_demo = okd_ep_demo\nep_broken = okd_ep_broken\n")
    failed = bench("list", env=env)
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1
    assert "ep_broken = okd_ep_broken" in failed.stderr and "needs libfoo" in failed.stderr


def test_changed_plugin_file_stops_an_unfinished_run_from_resuming(tmp_path, capsys):
    extra = tmp_path / "extra.py"
    extra.write_text("# a plug-in that registers nothing yet\n")
    out = tmp_path / "sweep"
    args = ["run", "--plugin", str(extra), "--methods", "vanilla", *GRID, "--out", str(out), "--launcher", "inline"]
    assert main(args) == 0
    run = out / "digits" / "cifar_resnet8" / "vanilla" / "seed0"
    (run / "summary.json").unlink()  # as if killed after its last checkpoint
    checkpoint = (run / "last.pt").read_bytes()
    extra.write_text("# a plug-in that registers nothing yet\nVALUE = 2\n")
    again = bench(*args)  # a new `bench run`, as a user would type it
    err = again.stderr
    assert again.returncode == 2 and "changed since the run started" in err and str(extra) in err
    assert err.count("\n") == 1
    assert (run / "last.pt").read_bytes() == checkpoint and not (run / "summary.json").exists()
    # the job side: a requeued job with a changed file refuses too
    recorded = [plugins._record("extra", "file", str(extra.resolve()))]
    extra.write_text("# a plug-in that registers nothing yet\nVALUE = 3\n")
    with pytest.raises(plugins.UsageError, match="changed since the run started"):
        plugins.check_unchanged(recorded, "a requeued job")


BAD_PLUGINS = {
    "raises": ("import json\nraise RuntimeError('no GPU driver here')\n",
               "does not import: RuntimeError: no GPU driver"),
    "syntax": ("def broken(:\n", "does not import: SyntaxError"),
    "taken": ("from methods import register_method\nfrom methods.dml import DML\n"
              "register_method('dml')(type('Mine', (DML,), {}))\n",
              "method name 'dml' is already taken (by methods.dml)"),
    "interface": ("from methods import OnlineKDMethod, register_method\n"
                  "@register_method('half_done')\nclass HalfDone(OnlineKDMethod):\n    headline = 'net'\n"
                  "    def losses(self, views, target, progress):\n        return {}\n",
                  "does not meet the interface: missing eval_logits(), eval_names()"),
    "not_a_method": ("from methods import register_method\n@register_method('plain')\nclass Plain:\n    pass\n",
                     "must be a class derived from methods.OnlineKDMethod"),
    "backbone_taken": ("from backbones import register_backbone\n@register_backbone\ndef resnet18(**kw):\n    pass\n",
                       "backbone name 'resnet18' is already taken"),
}


@pytest.mark.parametrize("case", sorted(BAD_PLUGINS))
def test_bad_plugin_is_one_line_before_any_run(case, tmp_path, capsys):
    text, expected = BAD_PLUGINS[case]
    path = tmp_path / f"bad_{case}.py"
    path.write_text(text)
    out = tmp_path / "sweep"
    assert main(["run", "--plugin", str(path), *GRID, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and f"bad_{case}" in err, err
    assert not out.exists()


def test_missing_plugin_file_or_module_is_one_line(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["run", "--plugin", str(tmp_path / "nosuch.py"), *GRID, "--out", str(out)]) == 2
    assert "plug-in file" in capsys.readouterr().err
    assert main(["run", "--plugin", "no_such_module_xyz", *GRID, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "plug-in module 'no_such_module_xyz' not found" in err and err.count("\n") == 1
    assert not out.exists()


def test_config_file_plugins_are_relative_to_the_config(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(EXAMPLE, folder / "cfg_method.py")
    (folder / "sweep.yaml").write_text("plugins: [cfg_method.py]\nmethods: [mutual_mse]\n")
    from bench.cli.grid import build_sweep
    from bench.cli.parser import make_parser

    args = make_parser().parse_args(["run", "--config", str(folder / "sweep.yaml"), "--datasets", "digits"])
    sweep, _ = build_sweep(args)
    assert sweep.plugins == [str((folder / "cfg_method.py").resolve())] and sweep.methods == ["mutual_mse"]


@pytest.mark.parametrize("name, body, expected", [
    ("no_views_method", "    def __init__(self, backbone, num_classes, opts):\n"
                        "        super().__init__(backbone, num_classes, opts)\n        self.views = 0\n",
     "views must be a positive integer"),
    ("wrong_headline_method", "    headline = 'peer9'\n", "its headline 'peer9' is not one of its eval models (net)"),
])
def test_method_that_builds_but_misdefines_views_or_headline_is_one_line(name, body, expected, tmp_path, capsys):
    """headline and views may be set per instance (PCL and KDCL do): they are checked on the built method."""
    path = tmp_path / f"{name}.py"
    path.write_text(f"from methods import register_method\nfrom methods.vanilla import Vanilla\n\n"
                    f"@register_method('{name}')\nclass Mine(Vanilla):\n{body}")
    out = tmp_path / "sweep"
    assert main(["run", "--plugin", str(path), "--methods", name, *GRID, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not out.exists()
