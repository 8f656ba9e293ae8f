"""`bench speed`: the harness against a reference-style training path, side by side.

The names an older okd-bench defined in the module `bench.speed` (jobs that an older version pickled name some of them)
resolve here, imported on first use, so importing one submodule never loads the others."""

from bench import moved_names

_MOVED = {
    "run_speed": "bench.speed.measure",
    "measure": "bench.speed.measure",
    "measure_packed": "bench.speed.measure",
    "paper_table_hours": "bench.speed.measure",
    "peak_tflops": "bench.speed.measure",
    "COLUMNS": "bench.speed.paths",
    "reference_loader": "bench.speed.paths",
    "reference_data_rate": "bench.speed.paths",
    "harness_data_rate": "bench.speed.paths",
    "TrainPath": "bench.speed.paths",
}


__getattr__ = moved_names(__name__, _MOVED)
