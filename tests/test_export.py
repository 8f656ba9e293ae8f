"""Export: every single-network eval model reassembled into the plain backbone gives the eval model's logits; a
finished run's exported file, read by a script that knows nothing of okd-bench, reproduces summary.json."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch

import backbones
from bench.cli import main
from bench.store import runs
from methods import METHODS, build_method
from methods.base import Progress

ROOT = Path(__file__).resolve().parents[1]


def trained_a_little(method, size: int = 32, steps: int = 2):
    """A few SGD steps in train mode (BN running statistics and the mean teacher move away from their init)."""
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05)
    method.train()
    for step in range(steps):
        views = [torch.randn(6, 3, size, size) for _ in range(method.views)]
        loss = sum(method.losses(views, torch.arange(6) % 4, Progress(40, step)).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(step + 1)
    return method.eval()


def check_every_network(method, backbone: str, num_classes: int, size: int, img_size: int | None = None) -> list:
    """Each exportable eval model, loaded the way a user would (timm.create_model + load_state_dict, strict),
    gives the method's own logits; ensembles are not exportable."""
    x = torch.randn(5, 3, size, size)
    with torch.no_grad():
        expected = method.eval_logits(x)
    exported = []
    for name in method.eval_names():
        state = method.network_state_dict(name)
        if name == "ensemble":
            assert state is None
            continue
        assert state is not None, name
        net, kwargs = backbones.create_backbone_with_kwargs(backbone, num_classes, img_size=img_size)
        net.load_state_dict(state, strict=True)
        with torch.no_grad():
            got = net.eval()(x)
        assert torch.allclose(got, expected[name], rtol=0, atol=1e-5), (name, (got - expected[name]).abs().max())
        exported.append(name)
    return exported


@pytest.mark.parametrize("method_name", METHODS.names())
def test_every_method_exports_each_of_its_networks(method_name):
    torch.manual_seed(0)
    method = build_method(method_name, lambda: timm.create_model("cifar_resnet8", num_classes=4), 4, {})
    exported = check_every_network(trained_a_little(method), "cifar_resnet8", 4, 32)
    assert method.headline in exported
    assert len(exported) == len(method.eval_names()) - ("ensemble" in method.eval_names())


@pytest.mark.parametrize("backbone", backbones.CIFAR_BACKBONES)
def test_every_cifar_backbone_exports_from_a_shared_trunk(backbone):
    torch.manual_seed(0)
    method = build_method("pcl", lambda: timm.create_model(backbone, num_classes=4), 4, {"num_peers": 2})
    assert set(check_every_network(trained_a_little(method, steps=1), backbone, 4, 32)) == {
        "mean_teacher0", "mean_teacher1", "peer0", "peer1"}


@pytest.mark.parametrize("family,size", [("resnet10t", 32), ("convnext_atto", 32), ("efficientnet_b0", 32),
                                         ("vit_tiny_patch16_224", 32)])
def test_timm_families_export_at_their_default_split(family, size):
    torch.manual_seed(0)
    img = size if family.startswith("vit") else None
    method = build_method("one", lambda: backbones.create_backbone(family, 4, img_size=img), 4,
                          {"num_branches": 2})
    assert check_every_network(trained_a_little(method, size, steps=1), family, 4, size, img_size=img) == [
        "branch0", "branch1"]


# ---------------------------------------------------------------------------------------------
# end to end: bench run, bench export, a script with no okd-bench in it

CONSUMER = textwrap.dedent("""
    # Knows nothing of okd-bench but `import backbones` (which registers the cifar_* names into timm).
    import json, sys
    import numpy as np, safetensors.torch, timm, torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    import backbones  # noqa: F401

    meta = json.load(open(sys.argv[1]))
    model = timm.create_model(meta["backbone"], **meta["timm_kwargs"])
    model.load_state_dict(safetensors.torch.load_file(sys.argv[1].replace(".json", ".safetensors")))
    model.eval()
    digits = load_digits()  # the project's fixed stratified 80/20 split, grey levels 0..16 -> 0..255
    _, test = train_test_split(np.arange(len(digits.images)), test_size=0.2, stratify=digits.target,
                               random_state=0)
    pixels = np.round(digits.images[test] * (255.0 / 16.0)).astype(np.uint8) / 255.0
    x = torch.tensor(pixels, dtype=torch.float32)[:, None].repeat(1, 3, 1, 1)
    x = (x - torch.tensor(meta["mean"])[:, None, None]) / torch.tensor(meta["std"])[:, None, None]
    with torch.no_grad():
        predicted = model(x).argmax(1).numpy()
    wrong = int((predicted != digits.target[test]).sum())
    print(json.dumps({"top1_error": 100.0 * wrong / len(test), "method_classes_loaded": "methods" in sys.modules}))
""")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "R"
    assert main(["run", "--methods", "pcl,one,okddip,dml", "--datasets", "digits", "--backbones", "cifar_resnet8",
                 "--seeds", "0", "--epochs", "2", "--out", str(out), "--launcher", "inline", "--no-progress"]) == 0
    return out


def folder_of(out: Path, method: str) -> Path:
    return runs.run_dir(out, "digits", "cifar_resnet8", method, 0)


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("method_name", ["pcl", "one", "okddip", "dml"])
def test_exported_file_alone_reproduces_the_summary(sweep, method_name, tmp_path, capsys):
    folder = folder_of(sweep, method_name)
    summary = json.loads((folder / runs.SUMMARY).read_text())
    assert summary["deployed"]["eval_model"] == summary["headline_model"]  # written by the run itself
    (folder / "deployed.safetensors").unlink()  # bench export writes it again, from last.pt
    assert main(["export", str(folder)]) == 0
    out = capsys.readouterr().out
    reported = summary["final"][summary["headline_model"]]["top1_error"]
    assert f"top-1 error {reported:.2f}%" in out and f"summary.json: top-1 {reported:.2f}%" in out
    meta = json.loads((folder / "deployed.json").read_text())
    assert meta["eval_model"] == summary["headline_model"] and meta["git_commit"] == summary["git_commit"]
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    result = subprocess.run([sys.executable, str(script), str(folder / "deployed.json")], capture_output=True,
                            text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout) == {"top1_error": reported, "method_classes_loaded": False}


def test_torchscript_and_onnx_are_self_contained(sweep, tmp_path):
    folder = folder_of(sweep, "pcl")
    x = torch.randn(7, 3, 8, 8)
    from safetensors.torch import load_file

    net = timm.create_model("cifar_resnet8", num_classes=10)
    net.load_state_dict(load_file(folder / "deployed.safetensors"))
    with torch.no_grad():
        expected = net.eval()(x)
    assert main(["export", str(folder), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(tmp_path / "m.pt"))(x), expected, atol=1e-5)
    ort = pytest.importorskip("onnxruntime")
    assert main(["export", str(folder), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert torch.allclose(torch.from_numpy(got), expected, atol=1e-4)
    assert json.loads((tmp_path / "m.json").read_text())["format"] == "onnx"


def test_a_run_made_before_export_existed_exports_from_last_pt(sweep, tmp_path, capsys):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(folder_of(sweep, "okddip"), old)
    for name in ("deployed.safetensors", "deployed.json"):
        (old / name).unlink()
    summary = json.loads((old / runs.SUMMARY).read_text())
    del summary["deployed"]
    (old / runs.SUMMARY).write_text(json.dumps(summary))
    assert main(["export", str(old), "--model", "peer2"]) == 0
    meta = json.loads((old / "deployed_peer2.json").read_text())
    assert meta["eval_model"] == "peer2" and meta["top1_error"] == summary["final"]["peer2"]["top1_error"]


@pytest.mark.parametrize("case,message", [
    ("unfinished", "is not a finished run (no summary.json)"),
    ("failed", "is not a finished run (status: failed)"),
    ("no_checkpoint", "has no last.pt"),
    ("unknown_model", "did you mean 'mean_teacher1'?"),
    ("ensemble", "(an ensemble of several networks, or a partner of another architecture)"),
    ("unwritable_out", "does not exist"),
    ("onnx_missing", "pip install 'okd-bench[onnx]'"),
    ("zero_byte_checkpoint", "last.pt: unreadable checkpoint (EOFError"),
    ("earlier_checkpoint", "holds epoch 1, but summary.json reports 2 epochs"),
])
def test_bad_export_is_one_line_and_touches_nothing(sweep, case, message, tmp_path, capsys, monkeypatch):
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(folder_of(sweep, "pcl"), folder)
    args = ["export", str(folder)]
    if case == "unfinished":
        (folder / runs.SUMMARY).unlink()
    elif case == "failed":
        summary = json.loads((folder / runs.SUMMARY).read_text())
        (folder / runs.SUMMARY).write_text(json.dumps({**summary, "status": "failed", "error": "boom"}))
    elif case == "no_checkpoint":
        (folder / runs.CHECKPOINT).unlink()
    elif case == "unknown_model":
        args += ["--model", "mean_teacher_1"]
    elif case == "ensemble":
        args += ["--model", "ensemble"]
    elif case == "unwritable_out":
        args += ["--out", str(tmp_path / "nowhere" / "m.safetensors")]
    elif case == "zero_byte_checkpoint":
        (folder / runs.CHECKPOINT).write_bytes(b"")
    elif case == "earlier_checkpoint":  # last.pt of epoch 1 beside the summary of epoch 2
        import torch

        state = torch.load(folder / runs.CHECKPOINT, weights_only=True)
        state.update(epoch=1, history=state["history"][:1])
        state["best"] = {k: {**v, "epoch": 1} for k, v in state["best"].items()}
        torch.save(state, folder / runs.CHECKPOINT)
    else:
        monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if the optional package were not installed
        args += ["--format", "onnx"]
    before = snapshot(folder)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert snapshot(folder) == before
