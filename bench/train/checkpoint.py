"""A run's `last.pt`: what it holds, the one validated reader, and the check that it fits the run about to use it.

A checkpoint is trusted only whole. `read_checkpoint` loads it with `weights_only` (no code runs) and checks every
entry the trainer reads (records.check_checkpoint: types, epoch range, history records, best, RNG states);
`check_fits` then compares its method and optimizer states with the live ones, key by key and shape by shape, so
that nothing is copied into a model before the whole file is known to fit. A rejection is one `Malformed` naming
the file and its first problem.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.errors import UsageError
from bench.store import records


def read_checkpoint(path: Path, epochs: int, device: torch.device | str = "cpu") -> dict[str, Any]:
    """last.pt loaded with weights_only (no code runs) and its contents checked against a run of `epochs` epochs;
    records.Malformed otherwise (a zero-byte or truncated file included)."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:
        first = (str(err).strip().splitlines() or ["no message"])[0][:200]
        raise records.Malformed(path, f"unreadable checkpoint ({type(err).__name__}: {first})") from None
    records.check_checkpoint(path, state, epochs)
    return state


def _shape(value: Any) -> str:
    return "x".join(map(str, value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def _first_and_count(names: list[str]) -> str:
    return f"'{names[0]}'" + (f" (and {len(names) - 1} more)" if len(names) > 1 else "")


def check_fits(path: Path, state: dict[str, Any], method: torch.nn.Module, optimizer: torch.optim.Optimizer | None
               ) -> None:
    """The checkpoint's method and optimizer states have exactly the live ones' entries and shapes: a checkpoint of
    another configuration (another peer count, backbone, option) is Malformed before any tensor is copied."""
    expected = method.state_dict()
    got = state["method"]
    missing = [k for k in expected if k not in got]
    if missing:
        raise records.Malformed(path, f"method state lacks {_first_and_count(missing)} of this run's model")
    extra = [k for k in got if k not in expected]
    if extra:
        raise records.Malformed(path, f"method state has {_first_and_count(extra)}, which this run's model lacks")
    for key, value in expected.items():
        if not isinstance(got[key], torch.Tensor) or got[key].shape != value.shape:
            raise records.Malformed(path, f"method state '{key}' is {_shape(got[key])} where this run's model has "
                                          f"{_shape(value)}")
    if optimizer is not None:
        _check_optimizer(path, state["optimizer"], optimizer)


def _check_optimizer(path: Path, saved: Any, optimizer: torch.optim.Optimizer) -> None:
    groups, saved_groups = optimizer.param_groups, saved.get("param_groups")
    if not isinstance(saved_groups, list) or not isinstance(saved.get("state"), dict):
        raise records.Malformed(path, "optimizer state lacks 'state' or 'param_groups'")
    if len(saved_groups) != len(groups):
        raise records.Malformed(path, f"optimizer state has {len(saved_groups)} parameter groups, this run "
                                      f"{len(groups)}")
    params: dict[int, torch.Tensor] = {}
    for i, (group, live) in enumerate(zip(saved_groups, groups)):
        ids = group.get("params") if isinstance(group, dict) else None
        if not isinstance(ids, list) or len(ids) != len(live["params"]):
            raise records.Malformed(path, f"optimizer group {i} holds {len(ids) if isinstance(ids, list) else '?'} "
                                          f"parameters, this run {len(live['params'])}")
        for key, value in live.items():
            if key != "params" and isinstance(value, (int, float)) and not isinstance(group.get(key, 0), (int, float)):
                raise records.Malformed(path, f"optimizer group {i}: '{key}' is {group.get(key)!r}, not a number")
        params.update(zip(ids, live["params"]))
    for pid, entry in saved["state"].items():
        if pid not in params or not isinstance(entry, dict):
            raise records.Malformed(path, f"optimizer state has an entry for parameter {pid!r}, which no group holds")
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != params[pid].shape:
                raise records.Malformed(path, f"optimizer state '{key}' of parameter {pid} is {_shape(value)} where "
                                              f"the parameter is {_shape(params[pid])}")


def load_method_weights(method: torch.nn.Module, path: Path, epochs: int) -> int:
    """The method's weights from a run's last.pt; returns the epoch they are from. UsageError naming the file when
    it does not fit."""
    try:
        state = read_checkpoint(path, epochs)
        check_fits(path, state, method, None)
    except records.Malformed as err:
        raise UsageError(str(err)) from None
    method.load_state_dict(state["method"])
    return int(state["epoch"])


# ---------------------------------------------------------------------------------------------
# RNG state, in a form torch.load(weights_only=True) accepts (records.check_rng validates it)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": [list(x) if isinstance(x, tuple) else x
                                                        for x in random.getstate()],
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore `rng_state()`; its tensors may come back on the training device (a checkpoint loaded with
    map_location=cuda), while every RNG state is set from a CPU byte tensor."""
    torch.set_rng_state(state["torch"].cpu())
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
