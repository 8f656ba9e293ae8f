"""Where runs execute: the sweep runner, the jobs submitit pickles, the local and SLURM launchers, how launched runs
ended, and the processes a sweep starts.

The names an older okd-bench defined in the module `bench.launch` (jobs that an older version pickled name some of them)
resolve here, imported on first use, so importing one submodule never loads the others."""

from bench import moved_names

_MOVED = {
    "run_sweep": "bench.launch.runner",
    "classify": "bench.launch.runner",
    "report": "bench.launch.runner",
    "sweep_line": "bench.launch.runner",
    "LaunchOptions": "bench.launch.options",
    "LAUNCHERS": "bench.launch.options",
    "RunJob": "bench.launch.jobs",
    "RunGroupJob": "bench.launch.jobs",
    "execute_run": "bench.launch.jobs",
    "ALREADY_RUNNING": "bench.launch.jobs",
    "launch_local": "bench.launch.local",
    "launch_inline": "bench.launch.local",
    "stop_local_jobs": "bench.launch.local",
    "launch_slurm": "bench.launch.slurm",
    "load_profile": "bench.launch.slurm",
    "valid_profile_keys": "bench.launch.slurm",
    "MANIFEST": "bench.sweep.manifest",
    "MANIFEST_LOCK": "bench.sweep.manifest",
    "JOB_RECORD": "bench.sweep.manifest",
    "read_manifest": "bench.sweep.manifest",
    "update_manifest": "bench.sweep.manifest",
}


__getattr__ = moved_names(__name__, _MOVED)
