"""Fidelity variants methods.md keeps reachable: CL's hierarchical (tree) sharing and the VGG-16 classifier
dropout of the official OKDDip code, set from the config."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from backbones import backbone_factory
from bench.cli import main
from bench.cli.grid import build_sweep
from bench.cli.parser import make_parser
from bench.sweep.settings import run_config
from methods import Progress, build_method


def grads(method, rescale: bool) -> dict[str, torch.Tensor]:
    method.opts.backprop_rescale = rescale
    method.zero_grad()
    torch.manual_seed(1)
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 10, (6,))
    sum(method.losses([x], y, Progress(5.0, 1)).values()).backward()
    return {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}


def test_cl_tree_shares_a_root_and_two_middles_and_halves_the_gradient_at_each_split():
    torch.manual_seed(0)
    cl = build_method("cl", backbone_factory("cifar_resnet8", 10, 16), 10, {"sharing": "tree", "num_heads": 4})
    tree = cl.net
    assert len(tree.middles) == 2 and len(tree.heads) == 4
    assert tree.root.names[-1] == "layer1" and tree.middles[0].names == ["layer2"]  # split before layer2, then layer3
    cl.eval()  # BatchNorm in eval: the two passes see the same statistics
    on, off = grads(cl, True), grads(cl, False)
    for name, g in off.items():
        # every path into the root crosses both splits (x 1/2 x 1/2), into a middle part one split, into a head none
        scale = 0.25 if name.startswith("net.root.") else 0.5 if name.startswith("net.middles.") else 1.0
        assert torch.allclose(on[name], scale * g, rtol=1e-4, atol=1e-7), name
    assert any(n.startswith("net.root.") for n in off) and any(n.startswith("net.middles.") for n in off)
    # head 3 (group 1) is root + middle 1 + its branch: a plain cifar_resnet8 computing the same logits
    x = torch.randn(2, 3, 16, 16)
    plain = timm.create_model("cifar_resnet8", num_classes=10)
    plain.load_state_dict(cl.network_state_dict("head3"))
    assert torch.allclose(plain.eval()(x), cl.eval_logits(x)["head3"], atol=1e-5)
    flat = build_method("cl", backbone_factory("cifar_resnet8", 10, 16), 10, {"num_heads": 4})
    assert sum(p.numel() for p in cl.parameters()) > sum(p.numel() for p in flat.parameters())


@pytest.mark.parametrize("options, expected", [
    ({"sharing": "tree", "num_heads": 3}, "num_heads must be even and at least 4"),
    ({"sharing": "tre"}, "did you mean 'tree'"),
    ({"sharing": "tree", "num_heads": 4, "tree_point": "layer3"}, "valid: "),
])
def test_cl_tree_bad_options_are_one_line(options, expected, tmp_path, capsys):
    overrides = [f"cl.{k}={v}" for k, v in options.items()]
    assert main(["run", "--methods", "cl", "--datasets", "digits", "--backbones", "cifar_resnet8",
                 "--out", str(tmp_path / "o"), *overrides]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err


def test_vgg16_classifier_dropout_is_set_from_the_config_in_every_branch(tmp_path):
    cfg = tmp_path / "okddip_vgg.yaml"
    cfg.write_text("backbone_options:\n  classifier_dropout: 0.5\n")
    args = make_parser().parse_args(["run", "--config", str(cfg), "--methods", "okddip", "--datasets", "digits",
                                     "--backbones", "cifar_vgg16"])
    sweep, _ = build_sweep(args)
    run = run_config(sweep, "okddip", "cifar_vgg16", "digits", 0, {})
    assert run.backbone_options == {"classifier_dropout": 0.5}
    method = build_method("okddip", backbone_factory("cifar_vgg16", 10, 32, **run.backbone_options), 10, {})
    drops = [m.p for m in method.modules() if isinstance(m, nn.Dropout)]
    assert drops == [0.5] * 8  # 4 branches (3 peers + leader) x 2 dropouts in each classifier
    default = build_method("okddip", backbone_factory("cifar_vgg16", 10, 32), 10, {})
    assert {m.p for m in default.modules() if isinstance(m, nn.Dropout)} == {0.0}  # PCL re-implementation's 0


def test_unknown_backbone_option_is_one_line(tmp_path, capsys):
    assert main(["run", "--methods", "vanilla", "--datasets", "digits", "--backbones", "cifar_vgg16",
                 "--out", str(tmp_path / "o"), "backbone_options.clasifier_dropout=0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "clasifier_dropout" in err, err
