"""What a run records about itself besides its numbers: the code and package versions it ran with, its networks'
parameters and FLOPs, and its row label's partner part."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

_GIT_COMMIT: list[str | None] = []


def git_commit() -> str | None:
    """The commit of the code that runs (None outside a git checkout)."""
    if not _GIT_COMMIT:
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                 capture_output=True, text=True, timeout=5)
            _GIT_COMMIT.append(out.stdout.strip() if out.returncode == 0 else None)
        except (OSError, subprocess.SubprocessError):
            _GIT_COMMIT.append(None)
    return _GIT_COMMIT[0]


def versions() -> dict[str, str]:
    import timm
    import torchvision

    import bench

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__, "okd_bench": bench.__version__}


def forward_flops(module: torch.nn.Module, size: int) -> int | None:
    """FLOPs of one image's forward pass (torch.utils.flop_counter), None where they cannot be counted."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            module.eval()(torch.zeros(1, 3, size, size))
        return int(counter.get_total_flops())
    except Exception:  # a model the counter cannot trace: the cost table shows it as missing
        return None


def partner_label(cls: type, partners: list[str], options: dict[str, Any] | None = None) -> str:
    """The row label's partner part: "(T: ResNet-110)" for KD ("(T: ResNet-110, best epoch)" with its teacher taken
    at its best epoch), "(with ResNet-110)" for DML; "" alone."""
    from backbones import pretty_name

    if not partners:
        return ""
    role = cls.partner_role
    names = ", ".join(pretty_name(p) for p in partners)
    note = cls.partner_note(options or {})
    names += f", {note}" if note else ""
    return f"({role}: {names})" if role != "with" else f"(with {names})"


def count_params(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def resume_note(first: dict[str, Any] | None, resumes: list[dict[str, Any]]) -> str | None:
    """Why a run's numbers may differ from an uninterrupted run of the same settings: a resume that ran with other
    threads, another device or another packing than the start (None when none did)."""
    if not first:
        return None
    keys = ("intra_op_threads", "inter_op_threads", "device_name", "runs_per_device", "deterministic")
    for resume in resumes:
        changed = [f"{k} {first.get(k)} -> {resume[k]}" for k in keys if k in resume and resume[k] != first.get(k)]
        if changed:
            return (f"resumed at epoch {resume.get('epoch')} with {', '.join(changed)}: its numbers may differ from an "
                    "uninterrupted run's")
    return None
