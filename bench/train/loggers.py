"""Optional trackers that mirror a run's `metrics.jsonl`: TensorBoard event files and a Weights & Biases run.

Both are off by default (`logging.tensorboard=true`, `logging.wandb=offline|online`). They are resume-safe:
`<run>/loggers.json` holds the W&B run id and, per tracker, the last epoch known to be on disk. A resumed or
requeued run continues the same W&B run id and the same TensorBoard folder, and first re-sends the epochs of
the history after that mark. TensorBoard's mark advances at every flushed epoch, and it reopens with
`purge_step` so that its reader drops anything an interrupted session wrote past the mark. W&B has no flush
barrier (its service process writes asynchronously, and a SIGKILL can lose the last records), so its mark
advances only when a session finishes; a resumed session re-sends every epoch after it, and W&B keeps the first
copy of a step (a step at or below the run's current step is ignored). Step = epoch: no step is missing, and
none is counted twice.

A tracker that fails (not writable, disk full, ...) is switched off with one warning; the run goes on.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from bench.errors import UsageError, unknown
from bench.store import runs
from bench.sweep.variants import run_label

WANDB_MODES = ("off", "offline", "online")
EXTRA = {"tensorboard": "tensorboard", "wandb": "wandb"}


def check_logging(logging) -> None:
    """Before any run: a W&B mode that exists, and the packages a requested tracker needs."""
    if logging.wandb not in WANDB_MODES:
        raise unknown("logging.wandb mode", logging.wandb, WANDB_MODES)
    wanted = [name for name, on in (("tensorboard", logging.tensorboard), ("wandb", logging.wandb != "off")) if on]
    for name in wanted:
        if importlib.util.find_spec(name) is None:
            raise UsageError(f"logging.{name} is on but the {name} package is not installed: "
                             f"pip install '{name}' (or okd-bench's extra: pip install -e '.[{EXTRA[name]}]')")


GROUPS = ("loss", "top1_error", "top5_error", "ece", "nll", "diversity", "stats")  # mappings of a metrics record


def flat_groups(record: dict[str, Any], sep: str) -> dict[str, Any]:
    """The mappings of one metrics.jsonl record as flat names: loss<sep><term>, top1_error<sep><model>, ..."""
    return {f"{group}{sep}{name}": value for group in GROUPS for name, value in (record.get(group) or {}).items()}


def flat_scalars(record: dict[str, Any]) -> dict[str, float]:
    """One epoch of metrics.jsonl as tracker scalars: loss/<term>, top1_error/<model>, top5_error/<model>,
    lr, images_per_s, epoch_s."""
    out = {key: float(value) for key, value in flat_groups(record, "/").items() if value is not None}
    for key in ("lr", "images_per_s", "epoch_s"):
        if record.get(key) is not None:
            out[key] = float(record[key])
    return out


CSV_FIRST = ("epoch", "step", "lr", "epoch_s", "images_per_s")


def metrics_csv(history: list[dict[str, Any]]) -> str:
    """metrics.jsonl as a flat CSV, one row per epoch: epoch, step, lr, epoch_s, images_per_s, then loss.<term>,
    top1_error.<model>, top5_error.<model> (for spreadsheets)."""
    import csv
    import io

    rows = [{**{k: record.get(k) for k in CSV_FIRST}, **flat_groups(record, ".")} for record in history]
    columns = list(dict.fromkeys([*CSV_FIRST, *(key for row in rows for key in row)]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()



class Tracker:
    """One tracker: `send(epoch, scalars)` then `flush()`; `close()` at the end. `durable`: a flushed epoch is on
    disk (its mark may advance per epoch), else only once `close()` returned."""

    name = ""
    durable = True

    def send(self, epoch: int, scalars: dict[str, float]) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def close(self, summary: dict[str, Any] | None) -> None:
        pass


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, folder: Path, confirmed: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = folder / runs.TENSORBOARD_DIR
        resumed = log_dir.is_dir() and any(log_dir.iterdir())
        # purge_step: the reader drops what an earlier session wrote at steps >= it (never confirmed here)
        self.writer = SummaryWriter(str(log_dir), purge_step=confirmed + 1 if resumed else None)

    def send(self, epoch: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, global_step=epoch)

    def flush(self) -> None:
        self.writer.flush()

    def close(self, summary: dict[str, Any] | None) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    name = "wandb"
    durable = False

    def __init__(self, folder: Path, cfg, run_id: str) -> None:
        import wandb

        from bench.config import to_dict

        lg = cfg.logging
        sweep = folder.parents[3] if len(folder.parents) > 3 else folder
        self.run = wandb.init(
            project=lg.wandb_project, entity=lg.wandb_entity or None, group=sweep.name,
            name=run_label(cfg), id=run_id, resume="allow",
            mode=cfg.logging.wandb, dir=str(folder), tags=[cfg.method, cfg.backbone, cfg.dataset, f"seed{cfg.seed}"],
            config=to_dict(cfg), reinit="create_new", settings=wandb.Settings(silent=True, console="off"))
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")

    def send(self, epoch: int, scalars: dict[str, float]) -> None:
        self.run.log({"epoch": epoch, **scalars}, step=epoch)

    def close(self, summary: dict[str, Any] | None) -> None:
        if summary is not None:
            self.run.summary["status"] = summary.get("status")
        self.run.finish(exit_code=0 if summary is None or summary.get("status") == "done" else 1)


def new_run_id() -> str:
    """A W&B run id (8 characters of a-z0-9, as W&B makes them), kept in loggers.json for every later session."""
    import secrets
    import string

    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


class RunLoggers:
    """The trackers of one run (rank 0 only), kept in step with its history."""

    def __init__(self, cfg, folder: Path) -> None:
        self.cfg, self.folder = cfg, Path(folder)
        self.trackers: list[Tracker] = []
        self.state: dict[str, Any] = {}
        self.sent: dict[str, int] = {}  # this session: the last epoch sent to each tracker

    @classmethod
    def open(cls, cfg, folder: Path, history: list[dict[str, Any]]) -> RunLoggers:
        """Start the configured trackers and send them the history's epochs they have not confirmed."""
        self = cls(cfg, folder)
        lg = getattr(cfg, "logging", None)
        if lg is None or (not lg.tensorboard and lg.wandb == "off"):
            return self
        self.state = self._read_state()
        if lg.tensorboard:
            self._start(lambda: TensorBoardTracker(self.folder, int(self.state.get("tensorboard", 0))))
        if lg.wandb != "off":
            if not self.state.get("wandb_id"):
                self.state["wandb_id"] = new_run_id()
                self._write_state()
            self._start(lambda: WandbTracker(self.folder, cfg, self.state["wandb_id"]))
        for record in history:
            self.log_epoch(record)
        return self

    def _read_state(self) -> dict[str, Any]:
        import json

        try:
            state = json.loads((self.folder / runs.LOGGERS_STATE).read_text())
            return state if isinstance(state, dict) else {}
        except (OSError, ValueError):
            return {}

    def _write_state(self) -> None:
        try:
            runs.write_json(self.folder / runs.LOGGERS_STATE, self.state)
        except Exception as err:  # the record of what was sent: losing it costs a re-send, never the run
            print(f"warning: could not write {self.folder / runs.LOGGERS_STATE}: {err}", file=sys.stderr)

    def _start(self, make) -> None:
        try:
            self.trackers.append(make())
        except Exception as err:
            print(f"warning: {self.folder}: a tracker could not start ({type(err).__name__}: {err}); the run goes on "
                  "without it", file=sys.stderr)

    def _failed(self, tracker: Tracker, err: Exception) -> None:
        print(f"warning: {self.folder}: {tracker.name} logging failed ({type(err).__name__}: "
              f"{str(err).splitlines()[0] if str(err) else ''}); it is off for the rest of this run, which goes on",
              file=sys.stderr)
        self.trackers.remove(tracker)

    def log_epoch(self, record: dict[str, Any]) -> None:
        """Send one epoch to every tracker that has not confirmed it, then record that it did."""
        epoch = int(record["epoch"])
        scalars = flat_scalars(record)
        changed = False
        for tracker in list(self.trackers):
            if epoch <= max(int(self.state.get(tracker.name, 0)), self.sent.get(tracker.name, 0)):
                continue
            try:
                tracker.send(epoch, scalars)
                tracker.flush()
            except Exception as err:
                self._failed(tracker, err)
                continue
            self.sent[tracker.name] = epoch
            if tracker.durable:
                self.state[tracker.name] = epoch
                changed = True
        if changed:
            self._write_state()

    def close(self, summary: dict[str, Any] | None = None) -> None:
        changed = False
        for tracker in list(self.trackers):
            try:
                tracker.close(summary)
            except Exception as err:
                self._failed(tracker, err)
                continue
            if tracker.name in self.sent:  # close() returned: everything sent is written
                self.state[tracker.name] = self.sent[tracker.name]
                changed = True
        self.trackers = []
        if changed:
            self._write_state()
