"""The learning-rate schedule of a run (step or cosine, with an optional linear warm-up) and what a diverged run
reports."""

from __future__ import annotations

import math

from bench.config import RunConfig


class Diverged(Exception):
    """A loss term became NaN or infinite."""

    def __init__(self, epoch: int, step: int, terms: list[str], remedy: str = "") -> None:
        super().__init__(f"loss diverged at epoch {epoch}, step {step}: non-finite {', '.join(terms)}"
                         + (f"; {remedy}" if remedy else ""))
        self.epoch, self.step, self.terms = epoch, step, terms


def divergence_remedy(cfg: RunConfig) -> str:
    """What most often cures a diverged run, with the settings that give it: a learning-rate warm-up (none in the
    paper's protocol), a longer one, or a lower learning rate."""
    warm = getattr(cfg.optim, "warmup_epochs", None) or 0.0
    lower = f"a lower learning rate (optim.lr={cfg.optim.lr / 2:g})"
    if warm <= 0:
        suggested = max(1, round(0.05 * cfg.epochs)) if cfg.epochs >= 20 else min(1.0, cfg.epochs / 2)
        return f"likely remedies: a learning-rate warm-up (optim.warmup_epochs={suggested:g}) or {lower}"
    return f"likely remedies: a longer warm-up (optim.warmup_epochs={warm * 2:g}) or {lower}"


def lr_at(cfg: RunConfig, epoch: int) -> float:
    """The learning rate of (0-based) `epoch`: the step schedule, lr * gamma^(number of milestones <= epoch), or the
    cosine one, lr * (1 + cos(pi * epoch / epochs)) / 2, from lr at the first epoch towards 0 (Loshchilov & Hutter,
    2017, without restarts; as MCL's official recipe, once per epoch)."""
    if getattr(cfg.optim, "schedule", "step") == "cosine":
        return cfg.optim.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
    return cfg.optim.lr * cfg.optim.gamma ** sum(epoch >= m for m in cfg.optim.milestones)


WARMUP_START = 0.01  # the warm-up starts at this fraction of the schedule's lr


def warmup_factor(cfg: RunConfig, at: float) -> float:
    """The lr warm-up's multiplier at fractional epoch `at`: linear from WARMUP_START to 1 over `optim.warmup_epochs`
    (Goyal et al., 2017, "gradual warmup"), per step; 1 after it, and in runs without one. It multiplies the step or
    cosine schedule."""
    warm = getattr(cfg.optim, "warmup_epochs", None) or 0.0
    if at >= warm:
        return 1.0
    return WARMUP_START + (1.0 - WARMUP_START) * at / warm
