"""Starting weights of a backbone: timm's pretrained weights for a model (`pretrained.<backbone>=true`, through timm and
huggingface_hub with their cache, so it works offline once cached) or a file (`pretrained.<backbone>=FILE`:
safetensors, or a plain state dict read with `weights_only`, in timm's key naming, such as `bench export` writes).

A source is resolved once before any run into a record that is part of the run's identity: `{"source": "timm",
"model": "resnet18.a1_in1k"}` or `{"source": "file", "path": ..., "sha256": ...}`. Every network a factory builds
then starts from the same state; the classifier is new when the weights' number of classes differs from the
dataset's (as timm does), and loaded when it fits.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from bench.errors import UsageError
from bench.files import sha256_of
from bench.weights import read_weights


def timm_weights_of(name: str) -> Any | None:
    """timm's pretrained config of `name` (a tagged name such as `resnet18.a1_in1k`, or the model's default tag), or
    None when timm has no weights for it (the CIFAR networks, plug-ins)."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001  (an unknown tag: check_backbone names it)
        return None
    return cfg if cfg is not None and (cfg.hf_hub_id or cfg.url or cfg.file) else None


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "true", "yes")


def resolve_source(backbone: str, value: Any, base: Path | None = None) -> dict[str, Any] | None:
    """The record of `value` (true, false or a file path) for `backbone`; UsageError when it cannot be a start."""
    if value is False or value is None:
        return None
    where = f"pretrained.{backbone}"
    if value is True:
        cfg = timm_weights_of(backbone)
        if cfg is None:
            raise UsageError(f"{where}=true: timm has no pretrained weights for {backbone}; give a FILE "
                             f"({where}=weights.safetensors, e.g. what 'bench export' wrote)")
        tag = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
        if offline() and cfg.hf_hub_id and not in_cache(cfg):
            raise UsageError(f"{where}=true: the weights of {tag} are not in the Hugging Face cache ({hub_cache()}) "
                             "and HF_HUB_OFFLINE is set; fetch them once online, or give a FILE")
        return {"source": "timm", "model": tag}
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{where} must be true, false or a weights file, got {value!r}")
    path = Path(value.strip()).expanduser()
    path = (base / path if base is not None and not path.is_absolute() else path).resolve()
    read_weights(path, where)  # missing, unreadable, not a state dict, a pickle that needs code: one line each
    return {"source": "file", "path": str(path), "sha256": sha256_of(path)}


def in_cache(cfg: Any) -> bool:
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors"):
        found = try_to_load_from_cache(cfg.hf_hub_id.split("@")[0], filename, cache_dir=hub_cache())
        if isinstance(found, str):
            return True
    return False


def describe(record: dict[str, Any] | None) -> str:
    """'timm resnet18.a1_in1k' or 'file weights.safetensors (sha256 1a2b3c4d5e6f)'; '' for none."""
    if not record:
        return ""
    if record.get("source") == "timm":
        return f"timm {record.get('model')}"
    return f"file {Path(str(record.get('path'))).name} (sha256 {str(record.get('sha256'))[:12]})"


_STATES: dict[tuple, dict[str, Tensor]] = {}  # (record, backbone, kwargs) -> the source's state dict, once per process


def source_state(record: dict[str, Any], backbone: str, build_kwargs: dict[str, Any]) -> dict[str, Tensor]:
    """The weights of `record` in timm's key naming, loaded once per process."""
    key = (repr(sorted(record.items())), backbone, repr(sorted(build_kwargs.items())))
    if key not in _STATES:
        if record["source"] == "timm":
            kwargs = {k: v for k, v in build_kwargs.items() if k != "num_classes"}  # its own head: each network
            try:  # then gets a new one of its own where the classes differ (fit_state), as timm would
                model = timm.create_model(record["model"], pretrained=True, **kwargs)
            except Exception as err:  # noqa: BLE001  (a hub or network error: one line)
                first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
                raise UsageError(f"pretrained.{backbone}: timm could not load the weights of {record['model']} "
                                 f"({first}); cache: {hub_cache()}") from None
            _STATES[key] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            path = Path(record["path"])
            if sha256_of(path) != record.get("sha256"):
                raise UsageError(f"pretrained.{backbone}: {path} changed since the sweep resolved it (sha256 "
                                 f"{str(record.get('sha256'))[:12]} then); restore it or start the sweep again")
            _STATES[key] = read_weights(path, f"pretrained.{backbone}")
    return _STATES[key]


def classifier_prefixes(model: nn.Module) -> list[str]:
    """The state-dict prefixes of the model's classifier (timm's `pretrained_cfg['classifier']`, one or several)."""
    named = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "fc"
    names = [named] if isinstance(named, str) else list(named)
    return [f"{n}." for n in names]


def fit_state(model: nn.Module, state: dict[str, Tensor], backbone: str) -> bool:
    """Load `state` into `model`: every key must fit, except the classifier, which is left new when its shape differs
    (another number of classes). Returns whether the classifier was new. UsageError names the first key that does
    not fit, with both shapes."""
    own = model.state_dict()
    heads = classifier_prefixes(model)
    new_head = False
    kept: dict[str, Tensor] = {}
    where = f"pretrained.{backbone}"
    for key, value in own.items():
        is_head = any(key.startswith(p) for p in heads)
        if key not in state:
            if is_head:
                new_head = True
                continue
            raise UsageError(f"{where}: the weights lack '{key}' of {backbone} (shape {tuple(value.shape)}); they are "
                             "not weights of this backbone")
        theirs = state[key]
        if tuple(theirs.shape) != tuple(value.shape):
            if is_head:
                new_head = True
                continue
            raise UsageError(f"{where}: '{key}' has shape {tuple(theirs.shape)} in the weights and "
                             f"{tuple(value.shape)} in {backbone}")
        kept[key] = theirs
    extra = [k for k in state if k not in own]
    if extra:
        raise UsageError(f"{where}: the weights have '{extra[0]}', which {backbone} lacks; they are not weights of "
                         "this backbone")
    with torch.no_grad():
        model.load_state_dict(kept, strict=False)
    return new_head


def pretrained_builder(build, record: dict[str, Any], backbone: str, build_kwargs: dict[str, Any]):
    """`build()` (a fresh backbone), then the source's weights loaded into it (a new classifier where it differs)."""

    def create() -> nn.Module:
        model = build()
        fit_state(model, source_state(record, backbone, build_kwargs), backbone)
        return model

    return create
