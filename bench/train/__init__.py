"""One run's training: the trainer, its schedule, checkpoints, compute choices, metrics, distributed set-up and
trackers.

The names an older okd-bench defined in the module `bench.train` (jobs that an older version pickled name some of them)
resolve here, imported on first use, so importing one submodule never loads the others."""

from bench import moved_names

_MOVED = {
    "Trainer": "bench.train.trainer",
    "train_run": "bench.train.trainer",
    "seed_everything": "bench.train.trainer",
    "EVAL_KEYS": "bench.train.trainer",
    "CHECK_EVERY": "bench.train.trainer",
    "lr_at": "bench.train.schedule",
    "warmup_factor": "bench.train.schedule",
    "Diverged": "bench.train.schedule",
    "divergence_remedy": "bench.train.schedule",
}


__getattr__ = moved_names(__name__, _MOVED)
