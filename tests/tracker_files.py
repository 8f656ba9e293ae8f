"""Read the trackers' own files back: TensorBoard event files through TensorBoard's EventAccumulator, and
offline W&B run files (`run-<id>.wandb`, a LevelDB-style record log of W&B's protobuf `Record`s) through W&B's
own protobuf classes."""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768  # the .wandb log's block size; a record header is crc32 (4) + length (2) + type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard shows them (orphaned steps purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def wandb_records(path: Path):
    """Every protobuf Record of one .wandb file."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == FULL:
            payload = chunk
        elif kind == FIRST:
            pending = chunk
            continue
        elif kind == MIDDLE:
            pending += chunk
            continue
        else:
            payload, pending = pending + chunk, b""
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def wandb_sessions(run_folder: Path) -> list[tuple[str, list[dict]]]:
    """[(run id, history rows in file order)] of every offline W&B session of a run folder, oldest first."""
    sessions = []
    for path in sorted(Path(run_folder).glob("wandb/offline-run-*/run-*.wandb"), key=lambda p: p.stat().st_mtime):
        run_id, rows = "", []
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run_id = record.run.run_id
            elif kind == "history":
                rows.append({(item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                             for item in record.history.item})
        sessions.append((run_id, rows))
    return sessions


def wandb_history(run_folder: Path) -> tuple[set[str], list[dict], list[dict]]:
    """(run ids, the run's history as W&B keeps it, the rows it ignores): the sessions in order, where a row whose
    step is at or below the run's current step is ignored (W&B's rule for a resumed run)."""
    ids, kept, ignored = set(), [], []
    for run_id, rows in wandb_sessions(run_folder):
        if run_id:  # a session killed before W&B wrote its first record left an empty file
            ids.add(run_id)
        for row in rows:
            (kept if not kept or row["_step"] > kept[-1]["_step"] else ignored).append(row)
    return ids, kept, ignored
