"""A run folder's identity: the settings that make it this run (config.yaml), compared when a sweep meets a folder
that exists, so that a run is never continued under another configuration or other plug-in code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.config import RunConfig, to_dict
from bench.errors import UsageError
from bench.store import records, runs
from methods.base import options_dict, resolve_options


def config_record(cfg: RunConfig) -> dict[str, Any]:
    return to_dict(cfg)


def check_run_folder(folder: Path, cfg: RunConfig, force: bool) -> None:
    """Refuse to continue a run folder made by a different config (unless `force`). The folder's config is read
    as this version reads it: settings added since it was written take their defaults (the values the older
    version used), so a run folder made by an older okd-bench is not "different" for lacking them."""
    if force or not (folder / runs.CONFIG).exists():
        return
    try:
        old_cfg = records.load_config(folder)
        old_cfg.options = options_dict(resolve_options(old_cfg.method, old_cfg.options))
        old = config_record(old_cfg)
    except (records.Malformed, UsageError):
        old = None
    new = config_record(cfg)
    if isinstance(old, dict):
        check_same_plugins(folder, old.pop("loaded_plugins", None) or [], new.pop("loaded_plugins", None) or [])
        check_same_weights(folder, old.get("pretrained") or {}, new.get("pretrained") or {})
        for settings in (old, new):
            settings.pop("logging", None)  # trackers can be switched on or off for a run at any time
            settings.pop("runtime", None)  # where it ran is recorded, not a setting
            settings.pop("rampup_fraction", None)  # the schedule's fractions resolve into milestones and ramp-up,
            (settings.get("optim") or {}).pop("milestone_fractions", None)  # which are what a run is compared on
            (settings.get("optim") or {}).pop("warmup_fraction", None)  # (the warm-up likewise, into its epochs;
            if isinstance(settings.get("optim"), dict) and settings["optim"].get("warmup_epochs") is None:
                settings["optim"]["warmup_epochs"] = 0.0  # a run made before warm-ups existed had none)
            if isinstance(settings.get("budget"), dict):  # a budget-matched run is its method and its epochs; the
                settings["budget"] = {k: settings["budget"].get(k) for k in ("method", "epochs")}  # counts derive
    if old != new:
        diff = sorted(_diff_keys(old, new)) if isinstance(old, dict) else ["(unreadable config.yaml)"]
        raise UsageError(f"{folder} holds a run with a different config ({', '.join(diff[:5])} differ); "
                         "use another --out, or --force to overwrite it")


def check_same_weights(folder: Path, old: dict, new: dict) -> None:
    """A run continues only from the starting weights it started from: a pretrained file whose content changed (its
    sha256) under a run that is not done is refused, naming the file, as a changed plug-in is."""
    if runs.run_status(folder) == "done":
        new.update({k: v for k, v in old.items() if k in new and v.get("path") == new[k].get("path")})
        return  # a done run keeps the weights it was trained from; it is not "a different config"
    for backbone, was in old.items():
        now = new.get(backbone) or {}
        if was.get("source") == now.get("source") == "file" and was.get("path") == now.get("path") and \
                was.get("sha256") != now.get("sha256"):
            raise UsageError(f"{folder}: the pretrained weights of {backbone} ({now.get('path')}) changed since the "
                             f"run started (sha256 {str(was.get('sha256'))[:12]} then, {str(now.get('sha256'))[:12]} "
                             "now); restore the file, or use --force to start the run again from the new weights")


def check_same_plugins(folder: Path, old: list[dict], new: list[dict]) -> None:
    """An unfinished run continues only with the plug-in code it started with (same file, same sha256)."""
    if runs.run_status(folder) == "done":
        return
    now = {(r.get("file") or r.get("name")): r for r in new}
    for rec in old:
        key = rec.get("file") or rec.get("name")
        if key in now and rec.get("sha256") != now[key].get("sha256"):
            raise UsageError(f"{folder}: plug-in {rec.get('name')} ({key}) changed since the run started (sha256 "
                             f"{str(rec.get('sha256'))[:12]} then, {str(now[key].get('sha256'))[:12]} now); restore "
                             "it, or use --force to start the run again with the new code")


def _diff_keys(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for k in set(a) | set(b):
            out |= _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}
