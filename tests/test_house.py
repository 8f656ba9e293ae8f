"""The house (issue 31): bench/ as packages by concern, no import circle anywhere (imports inside functions count),
no module over 400 lines, and nothing users rely on broken by the move: old module names, and jobs that an older
version pickled for submitit."""

from __future__ import annotations

import ast
import importlib
import pickle
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CODE = ("bench", "methods", "backbones")
FIXTURES = Path(__file__).parent / "fixtures"


def modules() -> dict[str, Path]:
    found = {}
    for top in CODE:
        for path in (ROOT / top).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `name` imports anywhere in its file (module level, functions, TYPE_CHECKING blocks)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def resolve(target: str) -> str | None:
        parts = target.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in known:
                return ".".join(parts[:i])
        return None

    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {resolve(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *([base] if base
                                                                                                    else [])])
            out |= {resolve(f"{base}.{a.name}") or resolve(base) for a in node.names}
    return {m for m in out if m and m != name}


def test_no_import_circle_in_bench_methods_or_backbones():
    known = modules()
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    state: dict[str, int] = {}
    trail: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        trail.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        trail.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert len(graph) > 60


def test_no_module_over_400_lines_and_at_most_8_directly_in_bench():
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert not {n: s for n, s in sizes.items() if s > 400}
    flat = sorted(p.name for p in (ROOT / "bench").glob("*.py"))
    assert len(flat) <= 8, flat
    packages = sorted(p.name for p in (ROOT / "bench").iterdir() if (p / "__init__.py").exists())
    assert packages == ["cli", "data", "launch", "results", "speed", "store", "sweep", "train"]
    for package in packages:  # each says what it holds
        assert ast.get_docstring(ast.parse((ROOT / "bench" / package / "__init__.py").read_text()))


OLD_MODULES = ["aggregate", "checkpoint", "collect", "compute", "costs", "distributed", "export", "identity", "jobs",
               "launch_local", "launch_slurm", "loggers", "manifest", "metrics", "outcomes", "plots", "processes",
               "provenance", "records", "report", "runfiles", "runs", "stamp", "status", "variants"]


@pytest.mark.parametrize("old", OLD_MODULES)
def test_every_old_module_name_imports_as_the_module_it_became(old):
    import bench

    module = importlib.import_module(f"bench.{old}")
    assert module is importlib.import_module(bench.MOVED[f"bench.{old}"])


@pytest.mark.parametrize("old,name", [("bench.train", "Trainer"), ("bench.train", "train_run"),
                                      ("bench.train", "lr_at"), ("bench.launch", "RunJob"),
                                      ("bench.launch", "RunGroupJob"), ("bench.launch", "LaunchOptions"),
                                      ("bench.launch", "run_sweep"), ("bench.sweep", "RunSpec"),
                                      ("bench.sweep", "expand"), ("bench.speed", "run_speed"),
                                      ("bench.config", "RunConfig"), ("bench.cli", "main")])
def test_names_of_the_old_flat_modules_still_resolve(old, name):
    assert getattr(importlib.import_module(old), name) is not None


@pytest.mark.parametrize("fixture", ["job_v0.1.pkl", "job_older_launch_path.pkl", "group_job_v0.1.pkl"])
def test_a_job_pickled_by_the_version_before_the_move_unpickles_and_runs(fixture, tmp_path):
    """The fixtures were pickled (as submitit does, with cloudpickle) by okd-bench before bench/ became packages: they
    name bench.jobs.RunJob (or bench.launch.RunJob, as older versions did), bench.sweep.RunSpec, bench.config.*."""
    from bench.launch.jobs import RunGroupJob, RunJob
    from bench.store import runs
    from bench.sweep.grid import RunSpec

    job = pickle.loads((FIXTURES / fixture).read_bytes())
    assert isinstance(job.function, (RunJob, RunGroupJob))
    specs = job.args[0] if isinstance(job.args[0], list) else [job.args[0]]
    assert all(isinstance(s, RunSpec) and s.config.method == "vanilla" and s.config.epochs == 1 for s in specs)
    if isinstance(job.function, RunJob):  # the job as the worker would run it: it trains its run
        specs[0].folder = tmp_path / "run"
        summary = job.function(specs[0])
        assert summary["status"] == "done" and runs.run_status(tmp_path / "run") == "done"
