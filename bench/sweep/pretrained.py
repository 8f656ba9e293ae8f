"""Where each backbone of a sweep starts from: the `pretrained` setting (`pretrained=true`, `pretrained.<backbone>=true`
or `=FILE`, `pretrained: {resnet18: true, resnet50: weights/r50.safetensors}` in a config file) resolved once, before
any run, into one source record per backbone (backbones.pretrained), or refused in one line."""

from __future__ import annotations

from typing import Any

from bench.config import SweepConfig
from bench.errors import UsageError, did_you_mean


def sweep_backbones(sweep: SweepConfig) -> list[str]:
    """Every backbone the sweep names, students and partners, each once, in order."""
    from backbones import split_entry

    names: list[str] = []
    for entry in sweep.backbones:
        student, partners = split_entry(entry)
        names += [n for n in (student, *partners) if n not in names]
    return names


def resolve_pretrained(sweep: SweepConfig) -> dict[str, dict[str, Any]]:
    """backbone -> its source record, for every backbone of the sweep that starts from weights."""
    from backbones.pretrained import resolve_source

    given = dict(sweep.pretrained or {})
    names = sweep_backbones(sweep)
    for key in given:
        if key != "*" and key not in names:
            raise UsageError(f"pretrained.{key}: {key} is not a backbone of this sweep{did_you_mean(key, names)} "
                             f"(its backbones: {', '.join(names)})")
    every = given.get("*", False)
    sources = {}
    for name in names:
        record = resolve_source(name, given.get(name, every))
        if record is not None:
            sources[name] = record
    return sources


def pretrained_notes(sources: dict[str, dict[str, Any]], num_classes: dict[str, int]) -> list[str]:
    """One line per backbone whose classifier is new (the weights' classes differ from a dataset's), said once."""
    from backbones.pretrained import describe, timm_weights_of

    notes = []
    for name, record in sources.items():
        cfg = timm_weights_of(record["model"]) if record.get("source") == "timm" else None
        classes = getattr(cfg, "num_classes", None)
        differ = [d for d, n in num_classes.items() if classes is not None and n != classes]
        if differ:
            notes.append(f"note: {name} starts from {describe(record)} ({classes} classes); its classifier is new "
                         f"for {', '.join(f'{d} ({num_classes[d]} classes)' for d in differ)}")
    return notes
