"""Training compute, counted: the FLOPs of one real training step of a method (torch.utils.flop_counter), measured once
at set-up on a copy of the method, in fp32 and outside the run's numbers.

A step is the method's `losses` on a batch of its views (forward of every trained network, of every frozen or temporal
teacher, hybrid model and extra head it runs) and the backward of their sum (through what is trained). The count
depends on the method, backbone, batch size, views and image size only, not on the device or the AMP setting: it is
counted in fp32 on a deep copy, so neither the run's weights, its BN statistics nor its RNG streams are touched.
Elementwise work (an EMA update, rebuilding a hybrid model, the optimizer) is not counted: FlopCounterMode counts
matrix products and convolutions, which are nearly all of a step's FLOPs.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from methods.base import OnlineKDMethod, Progress

_COUNTED: dict[tuple, int | None] = {}  # (what identifies a step) -> its FLOPs, counted once per process


def run_step_flops(method: OnlineKDMethod, cfg: Any, image_size: int, num_classes: int,
                   device: torch.device | str = "cpu") -> int | None:
    """`train_step_flops` of a run's method (RunConfig `cfg`), counted once per process for runs whose steps are
    the same (seeds of one cell)."""
    key = (cfg.method, repr(sorted(cfg.options.items())), cfg.backbone, tuple(cfg.partners),
           repr(cfg.backbone_options), cfg.data.batch_size, image_size, num_classes, method.views)
    if key not in _COUNTED:
        _COUNTED[key] = train_step_flops(method, cfg.data.batch_size, image_size, num_classes, device,
                                         cfg.rampup_epochs)
    return _COUNTED[key]


def train_step_flops(method: OnlineKDMethod, batch_size: int, image_size: int, num_classes: int,
                     device: torch.device | str = "cpu", rampup_epochs: float = 80.0) -> int | None:
    """FLOPs of one training step of `method` at `batch_size` images (each in `method.views` views) of
    `image_size`; None when the counter cannot trace the method."""
    from torch.utils.flop_counter import FlopCounterMode

    state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        twin = copy.deepcopy(method).float().to(device).train()
        views = [torch.zeros(batch_size, 3, image_size, image_size, device=device) for _ in range(method.views)]
        target = torch.arange(batch_size, device=device) % num_classes
        counter = FlopCounterMode(display=False)
        with counter:
            terms = twin.losses(views, target, Progress(rampup_epochs, 1, rampup_epochs))
            total = sum(terms.values())
            if total.requires_grad:
                total.backward()
        return int(counter.get_total_flops())
    except Exception:  # noqa: BLE001  (a method the counter cannot trace: its training compute is missing)
        return None
    finally:
        torch.set_rng_state(state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)


def record(step_flops: int | None, steps: int) -> dict[str, Any]:
    """summary.json's training compute: the run's total FLOPs (`train_flops`), the step's and the steps taken."""
    return {"train_flops": None if step_flops is None else step_flops * steps, "train_step_flops": step_flops,
            "train_steps": steps}
