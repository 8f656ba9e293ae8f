"""The distilled network out of a run: an eval model that is one network of the backbone's size (PCL's mean
teacher of peer 0, ONE's branch 0, OKDDip's leader, DML's network 0, ...) reassembled into the plain backbone it
was cut from, with the backbone's own state-dict keys, so that `timm.create_model(backbone, num_classes=C)` +
`load_state_dict` runs it with no okd-bench class in between (`import backbones` for the `cifar_*` names).

Formats: safetensors (the weights; the default), TorchScript and ONNX (self-contained programs). Beside each
file a JSON says how to run it: backbone, timm keyword arguments, input size, mean/std, the eval model, its
final errors and the run's git commit. Ensembles (PCL-E, ONE-E, ...) are several networks and are refused:
export one of their networks instead.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.errors import UsageError, did_you_mean
from bench.files import sha256_of
from bench.store import records, runs

FORMATS = {"safetensors": "safetensors", "torchscript": "pt", "onnx": "onnx"}
SCHEMA = "okd-bench-export/1"
DEPLOYED = "deployed"  # <run>/deployed.safetensors + deployed.json: the headline model, written by every run
REFUSE_LOGIT_GAP = 1e-4  # a reassembled network further than this from the run's own logits is not written


@dataclass
class Network:
    """One exportable network: the plain backbone (eval mode, CPU, fp32) and how it was built."""

    module: nn.Module
    backbone: str
    timm_kwargs: dict[str, Any]
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pretrained_cfg: dict[str, Any]  # timm's fields for the evaluation transform (bench.data.eval_transform)


def plain_network(method, name: str, backbone: str, spec, backbone_options: dict | None = None) -> Network:
    """Eval model `name` of a trained `method` as the plain backbone; UsageError for an ensemble. `spec`: the run's
    dataset (a `dataset_spec` with its mean/std)."""
    from backbones import create_backbone_with_kwargs

    state = method.network_state_dict(name)
    if state is None:
        singles = [n for n in method.eval_names() if n != name and method.network_state_dict(n) is not None]
        kind = ("not one network of the deployed backbone (an ensemble of several networks, or a partner of another "
                "architecture)") if name in method.eval_names() else "not an eval model of it"
        raise UsageError(f"'{name}' of {method.name} is {kind} and cannot be exported as one network"
                         f"{did_you_mean(name, singles)} (exportable: {', '.join(singles) or 'none'})")
    module, kwargs = create_backbone_with_kwargs(backbone, spec.num_classes, img_size=spec.image_size,
                                                 **(backbone_options or {}))
    module.load_state_dict({k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype)
                            for k, v in state.items()}, strict=True)
    from bench.data import eval_transform

    return Network(module.eval(), backbone, kwargs, (3, spec.image_size, spec.image_size), spec.mean, spec.std,
                   eval_transform(spec))


def metadata(net: Network, summary: dict, name: str, fmt: str, file: Path) -> dict[str, Any]:
    final = (summary.get("final") or {}).get(name, {})
    return {
        "schema": SCHEMA, "format": fmt, "file": file.name, "sha256": sha256_of(file),
        "backbone": net.backbone, "timm_kwargs": net.timm_kwargs, "num_classes": net.timm_kwargs["num_classes"],
        "input_size": list(net.input_size), "mean": list(net.mean), "std": list(net.std),
        "pretrained_cfg": net.pretrained_cfg,
        "method": summary.get("method"), "eval_model": name, "headline": name == summary.get("headline_model"),
        "partners": summary.get("partners") or [],
        "pretrained": (summary.get("pretrained") or {}).get(summary.get("backbone")),  # where its weights started
        "dataset": summary.get("dataset"), "seed": summary.get("seed"), "epochs": summary.get("epochs_done"),
        "top1_error": final.get("top1_error"), "top5_error": final.get("top5_error"),
        "git_commit": summary.get("git_commit"),
        "preprocess": "timm.data.create_transform(**timm.data.resolve_data_config(pretrained_cfg=pretrained_cfg)) "
                      "on each image opened with PIL and converted to RGB",
        "load": (f"import backbones, timm; m = timm.create_model({net.backbone!r}, **timm_kwargs); "
                 "m.load_state_dict(safetensors.torch.load_file(file))" if fmt == "safetensors" else
                 "torch.jit.load(file)" if fmt == "torchscript" else "onnxruntime.InferenceSession(file)"),
    }


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format '{fmt}'{did_you_mean(fmt, FORMATS)} (valid: {', '.join(FORMATS)})")
    if fmt == "onnx":
        import importlib

        missing = []
        for name in ("onnx", "onnxscript"):
            try:
                importlib.import_module(name)
            except ImportError:
                missing.append(name)
        if missing:
            raise UsageError(f"--format onnx needs the optional packages {', '.join(missing)}: "
                             "pip install 'okd-bench[onnx]'")


def write_network(net: Network, path: Path, fmt: str) -> None:
    """The network as `fmt` at `path`, atomically (through a temp file in the same folder)."""
    example = torch.zeros(1, *net.input_size)
    if fmt == "safetensors":
        from safetensors.torch import save

        blob = save({k: v.contiguous() for k, v in net.module.state_dict().items()},
                    metadata={"backbone": net.backbone, "format": "pt"})
        runs.atomic_write(path, lambda f: f.write(blob), binary=True)
    elif fmt == "torchscript":
        import warnings

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, yet what many runtimes load
            program = torch.jit.trace(net.module, example)
            runs.atomic_write(path, lambda f: torch.jit.save(program, f), binary=True)
    else:
        import tempfile
        import warnings

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(net.module, (example,), dynamo=True, input_names=["image"],
                                        output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                        verbose=False)
        with tempfile.TemporaryDirectory() as tmp:  # ONNXProgram.save takes a path: save, then move atomically
            program.save(Path(tmp) / "model.onnx", external_data=False)
            blob = (Path(tmp) / "model.onnx").read_bytes()
        runs.atomic_write(path, lambda f: f.write(blob), binary=True)


def write_export(net: Network, summary: dict, name: str, path: Path, fmt: str) -> Path:
    """The network file and its JSON beside it (same stem); returns the JSON's path."""
    write_network(net, path, fmt)
    meta = path.with_suffix(".json")
    runs.write_json(meta, metadata(net, summary, name, fmt, path))
    return meta


def write_deployed(method, summary: dict, folder: Path, spec, backbone_options: dict | None = None
                   ) -> dict[str, Any] | None:
    """Every finished run's headline model as `deployed.safetensors` + `deployed.json`; returns the summary's
    `deployed` record, or None when the method cannot export it (a plug-in without `network_state_dict`)."""
    name = method.headline
    if method.network_state_dict(name) is None:
        return None
    net = plain_network(method, name, summary["backbone"], spec, backbone_options)
    path = Path(folder) / f"{DEPLOYED}.safetensors"
    write_export(net, summary, name, path, "safetensors")
    return {"file": path.name, "eval_model": name, "metadata": f"{DEPLOYED}.json"}


# ---------------------------------------------------------------------------------------------
# bench export


def activate_run_plugins(cfg, folder: Path) -> None:
    """Import the plug-ins a run was made with (its method may be one); a changed file is a warning here: the
    weights are the run's, only code that rebuilds the network may differ."""
    from bench import plugins

    plugins.load_plugins(cfg.plugins)
    try:
        plugins.check_unchanged(cfg.loaded_plugins, str(folder))
    except UsageError as err:
        print(f"warning: {err}", file=sys.stderr)


def load_finished_run(folder: Path):
    """(summary, config, method with the run's final weights) of a finished run; one UsageError otherwise."""
    from bench.train.checkpoint import load_method_weights
    from methods import build_method

    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"run folder not found: {folder}")
    try:
        summary = records.load_summary(folder)
        cfg = records.load_config(folder)
    except records.Malformed as err:
        raise UsageError(f"cannot export {folder}: {err}") from None
    if summary is None or cfg is None:
        missing = runs.SUMMARY if summary is None else runs.CONFIG
        raise UsageError(f"{folder} is not a finished run (no {missing}); 'bench status' shows where it stands")
    if summary["status"] != "done":
        raise UsageError(f"{folder} is not a finished run (status: {summary['status']}); only done runs export")
    if not (folder / runs.CHECKPOINT).is_file():
        raise UsageError(f"{folder} has no {runs.CHECKPOINT}: its weights were not kept, nothing to export")
    from backbones import network_factory
    from bench.data import run_dataset

    activate_run_plugins(cfg, folder)
    spec = run_dataset(cfg)
    torch.manual_seed(0)
    method = build_method(cfg.method, network_factory(cfg.backbone, cfg.partners, spec.num_classes, spec.image_size,
                                                      **cfg.backbone_options), spec.num_classes, cfg.options)
    epoch = load_method_weights(method, folder / runs.CHECKPOINT, cfg.epochs)
    if epoch != summary.get("epochs_done", epoch):
        raise UsageError(f"{folder / runs.CHECKPOINT} holds epoch {epoch}, but summary.json reports "
                         f"{summary['epochs_done']} epochs: these are not the weights it measured; not exported")
    return summary, cfg, method.eval()


@torch.no_grad()
def reevaluate(net: Network, method, name: str, spec, data_cfg) -> tuple[dict[str, float], float]:
    """({top1_error, top5_error} of the exported network on the test split of `spec` (the run's dataset, with its
    mean/std), max |logit difference| against the run's own eval model on that split), fp32 on the CPU, plain
    NCHW input as a user would feed it."""
    from bench.data import build_eval_loader

    loader = build_eval_loader(spec, data_cfg, torch.device("cpu"), channels_last=False)
    n = top1 = top5 = 0
    gap = 0.0
    for x, y in loader:
        z = net.module(x)
        gap = max(gap, float((z - method.eval_logits(x)[name]).abs().max()))
        top = z.topk(min(5, z.shape[1]), dim=1).indices
        top1 += int((top[:, 0] == y).sum())
        top5 += int((top == y[:, None]).any(1).sum())
        n += len(y)
    return {"top1_error": 100.0 * (n - top1) / n, "top5_error": 100.0 * (n - top5) / n}, gap


def export_run(folder: Path, model: str | None = None, fmt: str = "safetensors", out: Path | None = None) -> int:
    """`bench export`: check everything, rebuild the network, prove it is the reported one, write it."""
    check_format(fmt)
    folder = Path(folder)
    summary, cfg, method = load_finished_run(folder)
    name = model or summary["headline_model"]
    if name not in method.eval_names():
        names = method.eval_names()
        raise UsageError(f"unknown eval model '{name}' of {cfg.method}{did_you_mean(name, names)} "
                         f"(valid: {', '.join(names)})")
    from bench.data import run_dataset, with_statistics

    spec = with_statistics(run_dataset(cfg), cfg.data)
    net = plain_network(method, name, cfg.backbone, spec, cfg.backbone_options)
    stem = DEPLOYED if name == summary["headline_model"] else f"{DEPLOYED}_{name}"
    path = Path(out) if out else folder / f"{stem}.{FORMATS[fmt]}"
    runs.check_output_file(path, folder)
    errors, gap = reevaluate(net, method, name, spec, cfg.data)
    if gap > REFUSE_LOGIT_GAP:
        raise UsageError(f"the reassembled {name} does not reproduce the run's logits (max difference {gap:.2e}); "
                         "not written")
    meta = write_export(net, summary, name, path, fmt)
    reported = summary["final"][name]
    note = "" if summary.get("amp", "off") == "off" else f" (the run evaluated under {summary['amp']} autocast)"
    print(f"exported {cfg.method} '{name}' ({net.backbone}, {sum(p.numel() for p in net.module.parameters()):,} "
          f"parameters) to {path}")
    top5 = spec.num_classes > 5 and reported.get("top5_error") is not None  # (top-5 of <= 5 classes is always 0)
    print(f"  re-evaluated on the {cfg.dataset} test split: top-1 error {errors['top1_error']:.2f}%"
          + (f", top-5 {errors['top5_error']:.2f}%" if top5 else "")
          + f"; summary.json: top-1 {reported['top1_error']:.2f}%" + (f", top-5 {reported['top5_error']:.2f}%"
                                                                      if top5 else "")
          + f"{note}; max |logit difference| {gap:.1e}")
    print(f"  how to load it: {meta}")
    return 0
