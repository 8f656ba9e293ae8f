"""A pretrained start (issue 33): every network of every method family starts from the weights (a file, or timm's
weights from a Hugging Face cache folder read offline), the classifier is new where the classes differ, bad sources
are one line before any run, the source is part of the run's identity and provenance, and tables keep pretrained runs
in their own cells."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bench.cli import main
from bench.store import runs

GRID = ["--datasets", "digits", "--seeds", "0", "--no-progress", "--launcher", "inline", "--preset", "demo"]
FAMILIES = "vanilla,pcl,one,cl,okddip,ffl_s,dml,kdcl,mcl,okdph,switokd,kd"


def is_parameter(key: str) -> bool:
    return not key.endswith(("running_mean", "running_var", "num_batches_tracked"))


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to what one epoch at lr 1e-30 can move (a parameter at exactly 0 moves by ~1e-30)."""
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """A cifar_resnet8 trained briefly on digits by the harness (10 classes), as safetensors and as a plain state dict
    (torch.save), and the same weights cut to a 5-class classifier."""
    root = tmp_path_factory.mktemp("weights")
    assert main(["run", "--methods", "vanilla", "--backbones", "cifar_resnet8", "--epochs", "1", "--out",
                 str(root / "pre"), *GRID]) == 0
    file = root / "pre" / "digits" / "cifar_resnet8" / "vanilla" / "seed0" / "deployed.safetensors"
    state = load_file(str(file))
    torch.save(state, root / "state.pt")
    save_file({k: (v[:5].clone() if k.startswith("fc.") else v) for k, v in state.items()}, str(root / "five.st"))
    return {"safetensors": file, "state": root / "state.pt", "five": root / "five.st"}


def networks(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Every eval model of a finished run that is one plain network, as its state dict."""
    from bench.results.export import load_finished_run

    _, _, method = load_finished_run(folder)
    found = {name: method.network_state_dict(name) for name in method.eval_names()}
    return {name: state for name, state in found.items() if state is not None}


def test_every_method_family_starts_every_network_from_the_file(weights, tmp_path):
    """At a vanishing learning rate for one epoch, every network of every family (the student, each peer or branch, the
    networks of DML/KDCL/MCL/OKDPH/SwitOKD, mean teachers and the hybrid-weight model, KD's teacher fine-tuned in the
    same sweep) holds the file's parameters."""
    out = tmp_path / "s"
    assert main(["run", "--methods", FAMILIES, "--backbones", "cifar_resnet8+cifar_resnet8", "--epochs", "1",
                 "--out", str(out), *GRID, "optim.lr=1e-30", "data.batch_size=256",
                 f"pretrained.cifar_resnet8={weights['state']}"]) == 0
    reference = load_file(str(weights["safetensors"]))
    checked = set()
    for summary_path in out.rglob(runs.SUMMARY):
        folder = summary_path.parent
        assert "cifar_resnet8@pretrained" in folder.relative_to(out).parts[1]
        summary = json.loads(summary_path.read_text())
        assert summary["pretrained"]["cifar_resnet8"]["source"] == "file"
        for name, state in networks(folder).items():
            for key, value in reference.items():
                if is_parameter(key):
                    assert same(state[key], value), (folder, name, key)
            checked.add(f"{summary['method']}:{name}")
    assert {"pcl:mean_teacher0", "pcl:peer2", "okdph:hwm", "dml:net1", "mcl:net1", "kd:student", "kd:teacher",
            "switokd:net1", "one:branch2", "cl:head2", "okddip:peer1", "ffl_s:branch1", "kdcl:net1"} <= checked
    costs = (out / "tables" / "costs.md").read_text()
    assert "KD (T: ResNet-8) | 1 |" in costs.replace("cifar_resnet8@pretrained | ", "") and "*" in costs


def test_a_new_classifier_where_the_classes_differ_and_the_table_marks_pretrained_cells(weights, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["run", "--methods", "vanilla", "--backbones", "cifar_resnet8", "--epochs", "1", "--out", str(out),
                 *GRID, "optim.lr=1e-30", f"pretrained.cifar_resnet8={weights['five']}"]) == 0
    five = load_file(str(weights["five"]))
    folder = out / "digits" / "cifar_resnet8@pretrained" / "vanilla" / "seed0"
    state = networks(folder)["net"]
    assert state["fc.weight"].shape == (10, five["fc.weight"].shape[1])  # the dataset's 10 classes: a new head
    assert all(same(state[k], v) for k, v in five.items() if is_parameter(k) and not k.startswith("fc."))
    # beside a run from scratch: two cells, never one
    assert main(["run", "--methods", "vanilla", "--backbones", "cifar_resnet8", "--epochs", "1", "--out", str(out),
                 *GRID]) == 0
    table = capsys.readouterr().out
    assert "digits / cifar_resnet8 |" in table and "digits / cifar_resnet8@pretrained |" in table
    assert "@pretrained: the runs start from pretrained weights (cifar_resnet8: file five.st (sha256" in table
    deployed = json.loads((folder / "deployed.json").read_text())
    assert deployed["pretrained"]["source"] == "file" and len(deployed["pretrained"]["sha256"]) == 64
    assert "five.st" in (out / "tables" / "runs.csv").read_text()
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "starting weights" in page and "cifar_resnet8: file five.st (sha256" in page


def test_timm_weights_from_a_hugging_face_cache_folder_offline(tmp_path, monkeypatch, capsys):
    """timm's `test_resnet.r160_in1k` written into a hub cache folder as huggingface_hub lays it out, read with
    HF_HUB_OFFLINE=1: the run starts from it (a new 10-class head for its 1,000), at its mean/std."""
    import timm

    cache = tmp_path / "hub"
    snapshot = cache / "models--timm--test_resnet.r160_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (cache / "models--timm--test_resnet.r160_in1k" / "refs").mkdir()
    (cache / "models--timm--test_resnet.r160_in1k" / "refs" / "main").write_text("0" * 40)
    torch.manual_seed(1)
    source = {k: v.contiguous() for k, v in timm.create_model("test_resnet", num_classes=1000).state_dict().items()}
    save_file(source, str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text(json.dumps({"architecture": "test_resnet", "num_classes": 1000}))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    out = tmp_path / "s"
    assert main(["run", "--methods", "vanilla", "--backbones", "test_resnet", "--epochs", "1", "--out", str(out),
                 *GRID, "optim.lr=1e-30", "data.image_size=32", "pretrained=true"]) == 0
    captured = capsys.readouterr()
    assert "note: test_resnet starts from timm test_resnet.r160_in1k (1000 classes); its classifier is new for " \
           "digits (10 classes)" in captured.err
    folder = out / "digits" / "test_resnet@pretrained" / "vanilla" / "seed0"
    config = (folder / runs.CONFIG).read_text()
    assert "model: test_resnet.r160_in1k" in config and "- 0.5" in config  # the weights' mean/std
    state = networks(folder)["net"]
    assert all(same(state[k], v) for k, v in source.items() if is_parameter(k) and not k.startswith("fc."))
    assert state["fc.weight"].shape[0] == 10
    # not in the cache while offline: one line naming the model and the cache folder
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty"))
    assert main(["run", "--methods", "vanilla", "--backbones", "test_efficientnet", "--out", str(tmp_path / "o"),
                 *GRID, "pretrained=true"]) == 2
    err = capsys.readouterr().err
    assert "test_efficientnet.r160_in1k are not in the Hugging Face cache" in err and str(tmp_path / "empty") in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value,message", [
    ("true", "timm has no pretrained weights for cifar_resnet8; give a FILE"),
    ("{missing}", "is not a file"),
    ("{folder}", "is not a file"),
    ("{junk}", "is not a weights file torch can read"),
    ("{pickle}", "holds objects other than tensors"),
    ("{a_list}", "holds no state dict"),
    ("{other_net}", "'layer1.0.conv1.weight' has shape (128, 16, 1, 1) in the weights and (16, 16, 3, 3) in "
                    "cifar_resnet8"),
])
def test_a_bad_source_is_one_line_before_any_run(weights, tmp_path, capsys, value, message):
    import pickle

    files = {"missing": tmp_path / "nope.safetensors", "folder": tmp_path, "junk": tmp_path / "junk.bin",
             "pickle": tmp_path / "code.pkl", "a_list": tmp_path / "list.pt", "other_net": tmp_path / "other.st"}
    files["junk"].write_bytes(b"\x00not weights at all")
    files["pickle"].write_bytes(pickle.dumps({"w": ValueError("code")}))
    torch.save([torch.zeros(2)], files["a_list"])
    import timm

    import backbones  # noqa: F401  (registers the CIFAR networks)

    save_file(timm.create_model("cifar_wrn_20_8", num_classes=10).state_dict(), str(files["other_net"]))
    out = tmp_path / "o"
    code = main(["run", "--methods", "vanilla", "--backbones", "cifar_resnet8", "--epochs", "1", "--out", str(out),
                 *GRID, f"pretrained.cifar_resnet8={value.format(**files)}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert not out.exists()


def test_an_unknown_backbone_or_tag_is_named(tmp_path, capsys):
    assert main(["run", "--methods", "vanilla", "--backbones", "cifar_resnet8", "--out", str(tmp_path / "o"), *GRID,
                 "pretrained.cifar_resnet9=true"]) == 2
    assert "cifar_resnet9 is not a backbone of this sweep; did you mean 'cifar_resnet8'?" in capsys.readouterr().err
    assert main(["run", "--methods", "vanilla", "--backbones", "resnet18.a1_in1kk", "--out", str(tmp_path / "o"),
                 *GRID]) == 2
    assert "unknown weights tag of resnet18 'resnet18.a1_in1kk'; did you mean 'resnet18.a1_in1k'?" in \
        capsys.readouterr().err


def test_a_file_changed_under_a_half_done_run_is_refused(weights, tmp_path, capsys, monkeypatch):
    import shutil

    file = tmp_path / "w.safetensors"
    shutil.copy(weights["safetensors"], file)
    args = ["run", "--methods", "vanilla", "--backbones", "cifar_resnet8", "--epochs", "2", "--out",
            str(tmp_path / "s"), *GRID, f"pretrained.cifar_resnet8={file}"]
    monkeypatch.setenv("OKD_BENCH_NO_SPACE_AT_EPOCH", "1")  # half done: stopped after its first epoch
    assert main(args) == 1
    monkeypatch.delenv("OKD_BENCH_NO_SPACE_AT_EPOCH")
    state = load_file(str(file))
    state["conv1.weight"] = state["conv1.weight"] + 1
    save_file(state, str(file))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "the pretrained weights of cifar_resnet8" in err and "changed since the run started" in err
