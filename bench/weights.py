"""Reading network weights from a file a user names (a KD teacher, later pretrained starts): safetensors, or a torch
file read with `weights_only` (no pickled code ever runs). Every way a file can be wrong is one UsageError naming it;
torch's own warnings and its multi-paragraph errors never reach the user."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch
from torch import Tensor

from bench.errors import UsageError

REWRITE = "save it with torch.save(model.state_dict(), FILE) or as safetensors (what 'bench export' writes)"


def read_weights(path: Path, what: str) -> dict[str, Tensor]:
    """The state dict in `path` (tensors by name); UsageError for a missing or unreadable file, a file that is not
    weights, or a pickle that holds objects other than tensors (it would need their code)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"{what}: {path} is not a file")
    try:
        with path.open("rb") as f:
            head = f.read(9)
    except OSError as err:
        raise UsageError(f"{what}: cannot read {path} ({err.strerror or err})") from None
    if path.suffix == ".safetensors" or head[8:9] == b"{":  # safetensors: an 8-byte length, then a JSON header
        return _safetensors(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "unsupported global" not in str(err).lower() and head[:1] != b"\x80":  # not a pickle at all
            raise UsageError(f"{what}: {path} is not a weights file torch can read; {REWRITE}") from None
        raise UsageError(f"{what}: {path} holds objects other than tensors, which would need their code to load (only "
                         f"weights are read); {REWRITE}") from None
    except Exception as err:  # noqa: BLE001  (torch reports a file that is no torch file in many ways)
        first = (str(err).strip().splitlines() or [""])[0][:120]
        first = first if " " in first else type(err).__name__
        raise UsageError(f"{what}: {path} is not a weights file torch can read ({first}); {REWRITE}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint of the usual form
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise UsageError(f"{what}: {path} holds no state dict (a mapping of names to tensors); {REWRITE}")
    return state


def _safetensors(path: Path, what: str) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise UsageError(f"{what}: {path} is not a readable safetensors file ({str(err)[:120]})") from None
