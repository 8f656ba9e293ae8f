"""The names of the files in a run folder (what bench.store.runs writes and bench.store.records reads back)."""

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
METRICS_CSV = "metrics.csv"  # the same, flat, for spreadsheets
LOGGERS_STATE = "loggers.json"  # the trackers' W&B run id and last epochs on disk (bench.train.loggers)
TENSORBOARD_DIR = "tensorboard"
CONFIG = "config.yaml"
CHECKPOINT = "last.pt"
BEST_NETWORK = "best.safetensors"  # the headline network at its best test epoch
LOCK = "running.json"  # who holds the run: host, pid, start time, job id, heartbeat (for status and other hosts)
LOCK_FILE = ".run.lock"  # the flock itself
RUN_FILES = (SUMMARY, METRICS, CONFIG, CHECKPOINT)  # any of them makes a folder a run folder
