"""Sweep settings from files and the command line: presets, dotted overrides, dataset sources, and one run's resolved
config (its schedule and warm-up in epochs)."""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from bench.config import DatasetSource, RunConfig, SweepConfig, TrainConfig, load_yaml, parse_yaml
from bench.errors import UsageError, unknown


def preset_names() -> list[str]:
    folder = resources.files("bench") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict:
    if name not in preset_names():
        raise unknown("preset", name, preset_names())
    with resources.as_file(resources.files("bench") / "presets" / f"{name}.yaml") as path:
        return load_yaml(path)


def parse_override(text: str, method_names: list[str] | None) -> dict:
    """`a.b.c=value` -> {'a': {'b': {'c': value}}}; `pcl.temperature=4` means `options.pcl.temperature`.
    `method_names` None: any first part that is not a setting of SweepConfig is taken as a method."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"override '{text}' is not of the form key=value (e.g. optim.lr=0.05)")
    parts = key.strip().split(".")
    if any(not p for p in parts):
        raise UsageError(f"override '{text}': empty key part")
    settings = {f.name for f in dataclasses.fields(SweepConfig)}
    if (parts[0] in method_names) if method_names is not None else (parts[0] not in settings and len(parts) > 1):
        parts = ["options", *parts]
    if parts[0] == "options" and len(parts) == 3 and "," in raw and raw.strip()[:1] not in "[{'\"":
        from bench.sweep.variants import split_top_level  # `pcl.temperature=2,3,4`: a value list, one run per value

        return {"options": {parts[1]: {parts[2]: [_scalar(v) for v in split_top_level(raw, f"override '{text}'")]}}}
    value = _scalar(raw) if raw.strip() else ""
    if parts[0] == "pretrained" and len(parts) > 1:  # `pretrained.resnet18.a1_in1k=FILE`: a tagged name has dots
        return {"pretrained": {".".join(parts[1:]): value}}
    out: dict = {}
    node = out
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def _scalar(raw: str) -> Any:
    try:
        return parse_yaml(raw)
    except yaml.YAMLError:
        return raw


DATASET_KINDS = ("imagefolder", "tinyimagenet")


def split_dataset_sources(sweep: SweepConfig) -> SweepConfig:
    """Move `NAME=KIND:ROOT` entries of `datasets` into `dataset_sources` (ROOT made absolute), so that runs,
    tables and plots name the dataset NAME."""
    names = []
    for entry in sweep.datasets:
        name, sep, rest = str(entry).partition("=")
        name = name.strip()
        if not sep:
            names.append(name)
            continue
        kind, colon, root = rest.partition(":")
        kind = kind.strip()
        if not name or not colon or not root.strip():
            raise UsageError(f"dataset '{entry}' is not of the form NAME=KIND:ROOT (e.g. flowers=imagefolder:data/"
                             f"flowers; kinds: {', '.join(DATASET_KINDS)})")
        if kind not in DATASET_KINDS:
            raise unknown(f"dataset kind (in '{entry}')", kind, DATASET_KINDS)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
            raise UsageError(f"dataset name '{name}' (in '{entry}') must be letters, digits, '_', '-', '.', '+'; it "
                             "names a folder of the results")
        given = sweep.dataset_sources.get(name)
        source = copy.deepcopy(given) if given is not None else DatasetSource()
        source.kind, source.root = kind, str(Path(root.strip()).expanduser().resolve())
        sweep.dataset_sources[name] = source
        names.append(name)
    sweep.datasets = names
    for name, source in sweep.dataset_sources.items():
        if source.kind not in DATASET_KINDS:
            raise unknown(f"dataset_sources.{name}.kind", source.kind, DATASET_KINDS)
        if not source.root:
            raise UsageError(f"dataset_sources.{name}.root is empty: name the dataset's folder")
        source.root = str(Path(source.root).expanduser().resolve())
    return sweep


def resolved_schedule(cfg: TrainConfig) -> tuple[list[int], float]:
    """(lr milestones, ramp-up epochs) of a run of `cfg.epochs` epochs: the explicit ones where given, else the
    fractions of the run (the paper's 150/225 and 80 of 300 epochs become 50/75 and 26.7 at --epochs 100)."""
    milestones = cfg.optim.milestones
    if milestones is None:
        milestones = [int(math.floor(f * cfg.epochs + 0.5)) for f in cfg.optim.milestone_fractions]
    rampup = cfg.rampup_epochs if cfg.rampup_epochs is not None else round(cfg.rampup_fraction * cfg.epochs, 3)
    return list(milestones), float(rampup)


def resolved_warmup(cfg: TrainConfig) -> float:
    """The lr warm-up of a run in epochs: as given, else `warmup_fraction` of its epochs (0 in runs made before)."""
    given = getattr(cfg.optim, "warmup_epochs", None)
    return float(given) if given is not None else round(getattr(cfg.optim, "warmup_fraction", 0.0) * cfg.epochs, 3)


def weights_input(data: Any, record: dict[str, Any] | None) -> None:
    """A run whose student starts from timm's weights sees images as they were trained on: the weights'
    `pretrained_cfg` input size and mean/std, unless the sweep sets `data.image_size` or `data.mean`/`data.std`."""
    if not record or record.get("source") != "timm":
        return
    from backbones.pretrained import timm_weights_of

    cfg = timm_weights_of(record["model"])
    if cfg is None:
        return
    if not data.image_size:
        data.image_size = int(cfg.input_size[-1])
    if not data.mean and not data.std:
        data.mean, data.std = [float(x) for x in cfg.mean], [float(x) for x in cfg.std]


def run_config(sweep: SweepConfig, method: str, backbone: str, dataset: str, seed: int,
               options: dict[str, Any], loaded_plugins: list[dict[str, str]] | None = None,
               variant: dict[str, Any] | None = None, partners: list[str] | None = None,
               pretrained: dict[str, dict[str, Any]] | None = None) -> RunConfig:
    """The fully resolved config of one grid cell (`options`: the method's resolved options; `pretrained`: the
    sweep's resolved sources, of which the run keeps its own networks')."""
    shared = {f.name: copy.deepcopy(getattr(sweep, f.name)) for f in dataclasses.fields(TrainConfig)}
    shared["optim"].milestones, shared["rampup_epochs"] = resolved_schedule(sweep)
    shared["optim"].warmup_epochs = resolved_warmup(sweep)
    weights_input(shared["data"], (pretrained or {}).get(backbone))
    return RunConfig(**shared, method=method, backbone=backbone, dataset=dataset, seed=seed,
                     options=dict(options), dataset_source=copy.deepcopy(sweep.dataset_sources.get(dataset)),
                     loaded_plugins=[dict(r) for r in loaded_plugins or []], variant=dict(variant or {}),
                     partners=list(partners or []),
                     pretrained={b: dict(r) for b, r in (pretrained or {}).items()
                                 if b in (backbone, *(partners or []))})
