"""Results folders -> a Collection: one row per (run, eval model), the epoch curves, one row per run, and notes;
and the names of table rows (methods, their variants, their ensembles) used by every table and plot.

Every run is read through the validated readers (bench.store.records): partial, failed and corrupt runs, bad files and
stray files become counted warnings that name them; nothing raises.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench.store import runs
from bench.store.runfiles import backbone_label

PAPER_ORDER = ["vanilla", "dml", "cl", "one", "okddip", "kdcl", "ffl_s", "pcl"]
DISPLAY = {"vanilla": "Vanilla", "kd": "KD", "switokd": "SwitOKD", "dml": "DML", "cl": "CL", "one": "ONE",
           "okddip": "OKDDip", "kdcl": "KDCL", "ffl_s": "FFL-S", "pcl": "PCL"}


LABELS: dict[str, str] = {}  # variant row key (pcl+mean_teacher=off) -> its label suffix ("w/o mean teacher")
FALLBACKS: dict[str, tuple[str, str]] = {}  # row -> (its headline model, its method's usual one) where they differ


def parse_row(method_row: str) -> tuple[str, str, str, str, bool]:
    """A table row's parts: 'pcl+mean_teacher=off@cifar_resnet110-E' -> (row without -E, 'pcl', 'mean_teacher=off',
    'cifar_resnet110', True)."""
    ensemble = method_row.endswith("-E")
    row = method_row[:-2] if ensemble else method_row
    method_part, _, partners = row.partition("@")
    base, _, variant = method_part.partition("+")
    return row, base, variant, partners, ensemble


def display_name(method: str) -> str:
    """A row's name: the method's name its runs recorded (summary.json `display_name`, set by the method class,
    e.g. a plug-in's), else the built-in one, else the registered name; a variant adds its label ("PCL w/o mean
    teacher", "PCL T=4"), an ensemble row "-E" ("PCL-E w/o mean teacher")."""
    row, base, variant, partners, ensemble = parse_row(method)
    label = LABELS.get(row) or " ".join(part for part in (variant, partners) if part)
    return DISPLAY.get(base, base) + ("-E" if ensemble else "") + (f" {label}" if label else "")


def remember_display_name(method: str, name: Any, row: str | None = None, label: Any = None) -> None:
    """Record the display name a run of `method` wrote (runs of methods no longer installed keep their name), and
    its variant's label."""
    if isinstance(name, str) and name.strip() and method not in PAPER_ORDER:
        DISPLAY[method] = name.strip()
    if row and row != method and isinstance(label, str) and label.strip():
        LABELS[row] = label.strip()


ROW_ORDER = ["vanilla", "kd", "dml", "cl", "one", "okddip", "kdcl", "switokd", "ffl_s", "pcl"]  # table rows


def row_order(method_row: str) -> tuple[int, int, str, str, str]:
    _, base, variant, partners, ensemble = parse_row(method_row)
    rank = ROW_ORDER.index(base) if base in ROW_ORDER else len(ROW_ORDER)
    return (int(ensemble), rank, base, partners, variant)


def row_of(summary: dict) -> str:
    """The table row of a run: its method, or its variant (`pcl+mean_teacher=off`); runs made before variants
    existed are their method's row."""
    row = summary.get("row")
    row = row if isinstance(row, str) and row.split("+", 1)[0] == summary["method"] else summary["method"]
    partners = summary.get("partners")
    if isinstance(partners, list) and partners and all(isinstance(p, str) for p in partners):
        row += "@" + "+".join(partners)  # KD with a ResNet-110 teacher is another row than with a WRN-20-8 one
    return row


# ---------------------------------------------------------------------------------------------
# loading


@dataclass
class Collection:
    """Everything read from results folders: one row per (run, eval model), the epoch curves, and notes."""

    models: pd.DataFrame
    curves: pd.DataFrame
    runs: pd.DataFrame
    warnings: list[str] = field(default_factory=list)


def find_run_folders(roots: Iterable[Path]) -> list[Path]:
    return sorted(set().union(*(runs.find_run_folders(root) for root in roots)))


RUNTIME = {"threads": ("intra_op_threads", "inter_op_threads"), "device": ("device_name",),
           "packing": ("runs_per_device",), "deterministic algorithms": ("deterministic",)}
"""What changes a run's numbers besides its settings, by the name a table note gives it (summary.json `runtime`)."""


def runtime_columns(summary: dict) -> dict[str, str]:
    """The run's RUNTIME values, one text column each ('?' where an older run did not record them)."""
    runtime = summary.get("runtime") if isinstance(summary.get("runtime"), dict) else {}
    fallback = {"device_name": summary.get("device"), "runs_per_device": summary.get("runs_per_device") or 1}
    return {f"runtime_{name}": "/".join(str(runtime.get(k, fallback.get(k, "?"))) for k in keys)
            for name, keys in RUNTIME.items()}


def _curves(history: list[dict], ident: dict) -> list[dict]:
    rows = []
    for rec in history:
        for model, err in (rec.get("top1_error") or {}).items():
            rows.append({**ident, "epoch": rec.get("epoch"), "eval_model": model, "top1_error": err,
                         "top5_error": (rec.get("top5_error") or {}).get(model),
                         "ece": (rec.get("ece") or {}).get(model)})
        spread = rec.get("diversity")
        if isinstance(spread, dict) and spread.get("disagreement") is not None:  # the members, not one model
            rows.append({**ident, "epoch": rec.get("epoch"), "eval_model": MEMBERS,
                         "disagreement": spread.get("disagreement"), "kl": spread.get("kl")})
    return rows


MEMBERS = "(members)"  # the eval_model of a curve row that holds the diversity of a run's members


def _number_sum(values) -> float | None:
    if not isinstance(values, list) or not values or not all(isinstance(v, (int, float)) for v in values):
        return None
    return float(sum(values))


def stray_entries(roots: Iterable[Path], folders: list[Path]) -> list[Path]:
    """Files standing where a run, method, backbone or dataset folder belongs (beside run folders, up to the
    results folder given): they are not runs, and are named rather than silently ignored."""
    roots = [Path(r).resolve() for r in roots]
    levels: set[Path] = set()
    for folder in folders:
        parent = folder.resolve().parent
        for _ in range(3):  # method, backbone and dataset folders
            if parent in roots or not any(parent.is_relative_to(r) for r in roots):
                break
            levels.add(parent)
            parent = parent.parent
    return sorted(p for level in levels for p in level.iterdir()
                  if not p.name.startswith(".") and not p.is_dir())


def load_runs(roots: Iterable[Path]) -> Collection:
    """Read every run under `roots` through the validated readers: partial, running, failed and corrupt runs,
    bad files and stray files become counted warnings that name them; nothing raises."""
    from bench.store.records import Malformed, load_metrics, load_summary

    roots = list(roots)
    models, curves, run_rows, notes = [], [], [], []
    counts = {"partial": 0, "failed": 0, "diverged": 0, "corrupt": 0}
    folders = find_run_folders(roots)
    for folder in folders:
        try:
            summary = load_summary(folder)
        except Malformed as err:
            counts["corrupt"] += 1
            notes.append(f"corrupt run skipped: {err}")
            continue
        if summary is None:
            counts["partial"] += 1
            notes.append(f"unfinished run (no summary.json): {folder}")
            continue
        started = summary.get("pretrained") if isinstance(summary.get("pretrained"), dict) else {}
        ident = {**{k: summary[k] for k in ("dataset", "backbone", "seed")}, "method": row_of(summary)}
        ident["backbone"] = backbone_label(str(summary["backbone"]), started)  # never a from-scratch run's cell
        labels = [summary.get(k) for k in ("variant_label", "partner_label")]
        remember_display_name(summary["method"], summary.get("display_name"), ident["method"],
                              " ".join(x.strip() for x in labels if isinstance(x, str) and x.strip()))
        usual, headline = summary.get("default_headline"), summary.get("headline_model")
        if isinstance(usual, str) and isinstance(headline, str) and usual and headline != usual:
            FALLBACKS[ident["method"]] = (headline, usual)
        params = summary.get("params") or {}
        partners = summary.get("partners") if isinstance(summary.get("partners"), list) else []
        flops = summary.get("flops") if isinstance(summary.get("flops"), dict) else {}
        run_rows.append({**ident, **runtime_columns(summary), "status": summary["status"], "folder": str(folder),
                         "base_method": summary["method"],
                         "partners": "+".join(backbone_label(str(p), started) for p in partners),
                         "pretrained": "; ".join(f"{b}: {describe(r)}" for b, r in started.items()),
                         "partner_params": _number_sum(summary.get("partner_params")),
                         "flops_deployed": flops.get("deployed"), "flops_partners": _number_sum(flops.get("partners")),
                         "two_stage": summary.get("two_stage") is True,
                         "train_flops": _number_sum([summary.get("train_flops")]),
                         "budget": str((summary.get("budget") or {}).get("method") or ""),
                         "epochs_done": summary.get("epochs_done"), "epochs": summary.get("epochs"),
                         "wall_clock_s": summary.get("wall_clock_s"), "images_per_s": summary.get("images_per_s"),
                         "device": summary.get("device"), "runs_per_device": summary.get("runs_per_device") or 1,
                         "params_deployed": params.get("deployed"),
                         "params_training": params.get("training_total"),
                         "error": summary.get("error") or (summary.get("divergence") or {}).get("message")})
        if summary["status"] != "done":
            counts[summary["status"]] = counts.get(summary["status"], 0) + 1
            notes.append(f"{summary['status']} run left out of the tables: {folder}")
            continue
        headline = summary.get("headline_model")
        runtime = runtime_columns(summary)
        spread = summary.get("diversity") if isinstance(summary.get("diversity"), dict) else {}
        for model, final in summary["final"].items():
            best = summary.get("best", {}).get(model, {})
            row = {**ident, **runtime, "eval_model": model, "is_headline": model == headline,
                   "base_method": summary["method"], "protocol": str(summary.get("protocol") or "common"),
                   "pretrained": "; ".join(f"{b}: {describe(r)}" for b, r in started.items()),
                   "budget": str((summary.get("budget") or {}).get("method") or ""),
                   "train_flops": _number_sum([summary.get("train_flops")]),
                   "variant": json.dumps(summary.get("variant") or {}, sort_keys=True),
                   "options": json.dumps(summary.get("options") or {}, sort_keys=True, default=str)}
            for epoch, values in (("final", final), ("best", best)):
                row.update({f"{epoch}_top1": values.get("top1_error"), f"{epoch}_top5": values.get("top5_error"),
                            f"{epoch}_ece": values.get("ece"), f"{epoch}_nll": values.get("nll"),
                            f"{epoch}_disagreement": (spread.get(epoch) or {}).get("disagreement")})
            models.append(row)
        try:
            curves.extend(_curves(load_metrics(folder), ident))
        except Malformed as err:
            notes.append(f"curves left out: {err}")
    for path in stray_entries(roots, folders):
        notes.append(f"stray file where a run folder belongs, ignored: {path}")
    shown = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    if shown:
        notes.insert(0, f"skipped runs: {shown}")
    return Collection(pd.DataFrame(models), pd.DataFrame(curves), pd.DataFrame(run_rows), notes)


def describe(record) -> str:
    from backbones.pretrained import describe as words

    return words(record) if isinstance(record, dict) else str(record)


# ---------------------------------------------------------------------------------------------
# the results table


