"""A sweep from the command line to its runs: settings and presets, variants, the grid and its checks, the done-stamp
and the sweep's manifest.

The names an older okd-bench defined in the module `bench.sweep` (jobs that an older version pickled name some of them)
resolve here, imported on first use, so importing one submodule never loads the others."""

from bench import moved_names

_MOVED = {
    "RunSpec": "bench.sweep.grid",
    "validate": "bench.sweep.grid",
    "resolve_variants": "bench.sweep.grid",
    "expand": "bench.sweep.grid",
    "prepare": "bench.sweep.grid",
    "schedule_line": "bench.sweep.grid",
    "check_run_folders": "bench.sweep.grid",
    "check_builds": "bench.sweep.checks",
    "check_image_size": "bench.sweep.checks",
    "MethodDefinitionError": "bench.sweep.checks",
}


__getattr__ = moved_names(__name__, _MOVED)
