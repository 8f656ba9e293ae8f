"""Configuration: dataclasses whose defaults are the common CIFAR protocol (methods.md), YAML presets,
dotted command-line overrides, and strict keys (an unknown key is an error with a close match).

Precedence, lowest first: dataclass defaults < preset YAML < `--config` YAML < CLI flags < `key=value`."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.errors import UsageError, did_you_mean


class Settings:
    """Base of the settings dataclasses. An instance unpickled from an older okd-bench (a SLURM job queued, or a
    local job started, before an upgrade: submitit pickles its arguments) gets this version's defaults for the
    settings added since, exactly as an older config.yaml does when it is read, instead of an AttributeError
    deep inside the run."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name not in state:
                state[f.name] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        self.__dict__.update(state)


@dataclass
class OptimConfig(Settings):
    """SGD with a multistep schedule (OKDDip defaults; ONE's script used wd 1e-4, no Nesterov)."""

    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    milestones: list[int] | None = None  # epochs where lr *= gamma; None: milestone_fractions of the run's epochs
    milestone_fractions: list[float] = field(default_factory=lambda: [0.5, 0.75])  # the paper's 150/225 of 300
    gamma: float = 0.1
    schedule: str = "step"  # step: lr x gamma at each milestone; cosine: lr 0.5 (1 + cos(pi e / epochs)), to 0
    warmup_epochs: float | None = None  # linear lr warm-up, per step, from lr/100; None: warmup_fraction of the run
    warmup_fraction: float = 0.0  # of the run's epochs (0: no warm-up, the paper's protocol)


@dataclass
class DataConfig(Settings):
    root: str = "data"
    download: bool = False
    batch_size: int = 128
    eval_batch_size: int = 512
    workers: int = 4
    image_size: Any = 0  # resize every image once to this square size (0: the dataset's own); checked in sweep
    resident_gb: float = 8.0  # a dataset whose augmented store fits in this many GB is held whole on the device
    sampler: str = "random"  # random (a permutation per epoch) or class_balanced (per_class images of each class)
    per_class: int = 2  # images of each class in a class-balanced batch (MCL: 2 of 64 classes at batch 128)
    view_augment: list[str] = field(default_factory=list)  # each view's recipe (bench.data.recipes); empty: crop+flip
    mean: list[float] = field(default_factory=list)  # normalisation; empty: the dataset's (or, for a run that starts
    std: list[float] = field(default_factory=list)  # from timm's weights, their pretrained_cfg's)


@dataclass
class DatasetSource(Settings):
    """Where a dataset named on the command line comes from: `NAME=imagefolder:ROOT` (ROOT/train/<class>/*,
    ROOT/val/<class>/*) or `NAME=tinyimagenet:ROOT` (Tiny-ImageNet as distributed)."""

    kind: str = "imagefolder"
    root: str = ""
    image_size: int = 0  # square size to resize to (0: data.image_size, else the first training image's height)
    mean: list[float] = field(default_factory=list)  # empty: computed once from the training split, cached
    std: list[float] = field(default_factory=list)
    pad: int = -1  # zero padding of the random crop; -1: image size // 8 (CIFAR's 4 at 32)
    flip: bool = True


@dataclass
class ComputeConfig(Settings):
    device: str = "auto"  # auto (cuda when available), cpu, cuda, cuda:N, mps
    amp: str = "auto"  # auto (bf16 on CUDA, off elsewhere), bf16, off
    channels_last: bool = True
    compile: bool = False  # torch.compile the training step's module
    optimizer_impl: str = "auto"  # auto (fused on CUDA, foreach elsewhere), fused, foreach, loop
    cuda_graphs: str = "auto"  # auto (on for single-process CUDA runs without compile), on, off
    cudnn_benchmark: str = "auto"  # auto (on for CUDA: cuDNN times its algorithms per shape), on, off
    branch_streams: str = "off"  # on: a method's independent branches/networks on concurrent CUDA streams (same math)
    threads: int = 0  # CPU intra-op threads per run; 0: the cores divided by the runs sharing them (lone or packed)


@dataclass
class LoggingConfig(Settings):
    """Optional trackers mirroring metrics.jsonl (bench.train.loggers); not part of what makes a run's config."""

    tensorboard: bool = False  # event files in <run>/tensorboard
    wandb: str = "off"  # off, offline (files in <run>/wandb, sync later), online
    wandb_project: str = "okd-bench"
    wandb_entity: str = ""


@dataclass
class TrainConfig(Settings):
    """Everything about one run except which grid cell it is."""

    protocol: str = "common"  # the training recipe's name: common (the harness's shared protocol) or a preset's,
    # e.g. mcl-official (its authors' settings); tables name it
    epochs: int = 300
    rampup_epochs: float | None = None  # KD ramp-up length in epochs; None: rampup_fraction of the run's epochs
    rampup_fraction: float = 80 / 300  # the paper's 80 of 300 epochs
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    backbone_options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the backbone, e.g.
    # drop_rate (timm) or classifier_dropout (cifar_vgg16: 0.5 in every branch classifier, as official OKDDip)
    plugins: list[str] = field(default_factory=list)  # plug-in modules or .py files (see bench.plugins)


@dataclass
class RunConfig(TrainConfig):
    """One run: a method x backbone x dataset x seed cell with its training settings and options."""

    method: str = "vanilla"
    backbone: str = "cifar_resnet32"
    dataset: str = "cifar100"
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    dataset_source: DatasetSource | None = None  # a dataset named on the command line (None: a registered one)
    loaded_plugins: list[dict[str, str]] = field(default_factory=list)  # {name, source, file, sha256} each
    partners: list[str] = field(default_factory=list)  # the backbones of networks 1.. (`--backbones A+B`); [] alone
    variant: dict[str, Any] = field(default_factory=dict)  # the options that make this run a variant of its method
    # (bench.sweep.variants; {} for the method as such): its folder and table row are `method+opt=value`
    budget: dict[str, Any] = field(default_factory=dict)  # a budget-matched run (`vanilla[budget=pcl]`): the method
    # whose training compute it matches, its epochs and theirs (bench.sweep.budget); {}: the sweep's epochs
    pretrained: dict[str, Any] = field(default_factory=dict)  # backbone -> the source of its starting weights
    # (backbones.pretrained: {source: timm, model} or {source: file, path, sha256}); {}: from scratch
    runtime: dict[str, Any] = field(default_factory=dict)  # what the run found where it ran (threads, device,
    # packing, deterministic algorithms): recorded, not part of the run's identity (Trainer.runtime_record)


@dataclass
class SweepConfig(TrainConfig):
    """A grid of runs. `options` maps a method name to its option overrides."""

    methods: list[str] = field(default_factory=lambda: ["vanilla"])
    backbones: list[str] = field(default_factory=lambda: ["cifar_resnet32"])
    datasets: list[str] = field(default_factory=lambda: ["cifar100"])
    seeds: list[int] = field(default_factory=lambda: [0])
    out: str = "results/default"
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    dataset_sources: dict[str, DatasetSource] = field(default_factory=dict)  # from `NAME=KIND:ROOT` entries
    pretrained: dict[str, Any] = field(default_factory=dict)  # backbone -> true (timm's weights), false or a FILE;
    # "*": every backbone of the sweep (`pretrained=true`); resolved into each run's `pretrained` before any run


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass with strict keys and types


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp` (a small subset of typing), converting where exact."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except UsageError as err:
                errors.append(err)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{where}: expected a mapping, got {value!r}")
        key_tp, val_tp = typing.get_args(tp) or (Any, Any)
        return {str(k): coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("on", "off"):
            return value.strip().lower() == "on"
        raise UsageError(f"{where}: expected true or false (or on/off), got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UsageError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UsageError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UsageError(f"{where}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config type {_type_name(tp)} at {where}")


def from_dict(cls: type, data: Any, where: str = "config", base: Any = None) -> Any:
    """Build dataclass `cls` from a mapping, starting from `base` (or the defaults); unknown keys fail."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a mapping, got {data!r}")
    obj = base if base is not None else cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in data.items():
        if key not in names:
            raise UsageError(f"{where}: unknown key '{key}'{did_you_mean(key, names)} (valid: {', '.join(names)})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            value = from_dict(tp, value, f"{where}.{key}", base=getattr(obj, key))
        elif key == "pretrained" and not isinstance(value, dict) and isinstance(obj, SweepConfig):
            value = {**getattr(obj, key), "*": value}  # `pretrained: true` / `pretrained=FILE`: every backbone
        elif key == "pretrained" and isinstance(value, dict) and isinstance(obj, SweepConfig):
            value = {**getattr(obj, key), **{str(k): v for k, v in value.items()}}
        elif typing.get_origin(tp) is dict and key == "options" and isinstance(value, dict):
            merged = dict(getattr(obj, key))
            for k, v in coerce(value, tp, f"{where}.{key}").items():
                merged[k] = {**merged.get(k, {}), **v} if isinstance(v, dict) else v
            value = merged
        else:
            value = coerce(value, tp, f"{where}.{key}")
        setattr(obj, key, value)
    return obj


def to_dict(obj: Any) -> Any:
    """A dataclass as plain YAML/JSON-ready data."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


# ---------------------------------------------------------------------------------------------
# YAML files and presets


class YamlLoader(yaml.SafeLoader):
    """safe_load with YAML 1.2 booleans (only true/false are booleans, so `amp: off` stays a string) and no key given
    twice in one mapping (YAML forbids it; PyYAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' is given twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
# YAML 1.2 floats: 1e-4 and 5E3 are numbers too (YAML 1.1 wants 1.0e-4)
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*|[0-9]+(?=[eE]))(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)"
               r"|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506  (a SafeLoader subclass)


def load_yaml(path: str | Path) -> dict:
    """A YAML mapping from a file (safe_load only); errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"config file {path} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except OSError as err:
        raise UsageError(f"cannot read config file {path}: {err.strerror or err}") from None
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UsageError(f"malformed YAML in {path}{line}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data
