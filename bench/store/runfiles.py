"""The names of the files in a run folder (what bench.store.runs writes and bench.store.records reads back)."""

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
METRICS_CSV = "metrics.csv"  # the same, flat, for spreadsheets
PRETRAINED = "@pretrained"  # marks a backbone a run starts from pretrained weights (folders, table columns)


def backbone_label(name: str, started: dict | None) -> str:
    """A backbone as run folders, labels and table columns name it: `resnet18`, or `resnet18@pretrained` when the
    run starts it from pretrained weights (`started`: backbone -> source record), so that pretrained and from-scratch
    runs never share a folder or a cell."""
    return f"{name}{PRETRAINED}" if (started or {}).get(name) else name


LOGGERS_STATE = "loggers.json"  # the trackers' W&B run id and last epochs on disk (bench.train.loggers)
TENSORBOARD_DIR = "tensorboard"
CONFIG = "config.yaml"
CHECKPOINT = "last.pt"
BEST_NETWORK = "best.safetensors"  # the headline network at its best test epoch
LOCK = "running.json"  # who holds the run: host, pid, start time, job id, heartbeat (for status and other hosts)
LOCK_FILE = ".run.lock"  # the flock itself
RUN_FILES = (SUMMARY, METRICS, CONFIG, CHECKPOINT)  # any of them makes a folder a run folder
