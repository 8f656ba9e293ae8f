"""How a sweep is launched: the launcher and its options (`bench run`'s launching flags)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

LAUNCHERS = ("local", "inline", "slurm")


@dataclass
class LaunchOptions:
    launcher: str = "local"
    cluster: Path | None = None
    max_parallel: int = 1
    tasks_per_node: int = 1
    runs_per_device: int = 1
    wait: bool = True
    retry_failed: bool = False
    force: bool = False
    progress_bar: bool = True
