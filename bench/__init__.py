"""okd-bench: a benchmarking harness for online knowledge distillation.

bench/ holds packages by concern (cli, sweep, launch, train, store, results, speed, data) and the few modules every
one of them uses (errors, registry, config, ranges, files, plugins, weights). Modules that lived directly in bench/
before (`bench.jobs`, `bench.runs`, ...) still import under their old names, as aliases of where they are now, so that
jobs an older version pickled for submitit, and users' scripts, keep working."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

MOVED = {
    "bench.aggregate": "bench.results.aggregate", "bench.checkpoint": "bench.train.checkpoint",
    "bench.collect": "bench.results.collect", "bench.compute": "bench.train.compute",
    "bench.costs": "bench.results.costs", "bench.distributed": "bench.train.distributed",
    "bench.export": "bench.results.export", "bench.identity": "bench.store.identity", "bench.jobs": "bench.launch.jobs",
    "bench.launch_local": "bench.launch.local", "bench.launch_slurm": "bench.launch.slurm",
    "bench.loggers": "bench.train.loggers", "bench.manifest": "bench.sweep.manifest",
    "bench.metrics": "bench.train.metrics", "bench.outcomes": "bench.launch.outcomes",
    "bench.plots": "bench.results.plots",
    "bench.processes": "bench.store.processes", "bench.provenance": "bench.store.provenance",
    "bench.records": "bench.store.records", "bench.report": "bench.results.report",
    "bench.runfiles": "bench.store.runfiles", "bench.runs": "bench.store.runs", "bench.stamp": "bench.sweep.stamp",
    "bench.status": "bench.results.status", "bench.variants": "bench.sweep.variants",
}


def moved_names(package: str, table: dict[str, str]):
    """A package's module `__getattr__` that resolves the names an older okd-bench defined in the module of the same
    name (`bench.train.Trainer`, `bench.launch.RunJob`, ...) from `table` (name -> the module that defines it now),
    imported on first use, so that importing one submodule never loads the others."""

    def __getattr__(name: str):
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        return getattr(importlib.import_module(module), name)

    return __getattr__


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import bench.jobs` gives the module `bench.launch.jobs` itself (one module object under both names)."""

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module) -> None:
        pass


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModules())
