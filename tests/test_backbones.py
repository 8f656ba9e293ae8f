"""The CIFAR backbones: registered in timm, timm's model contract, methods.md's parameter counts."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

import backbones
from backbones.branching import split_model, split_points
from bench.errors import UsageError

# methods.md, 100 classes, a single network
PARAMS_M = {"cifar_resnet32": 0.47, "cifar_resnet110": 1.17, "cifar_wrn_20_8": 6.87, "cifar_vgg16": 15.30,
            "cifar_densenet40_12": 0.19}


@pytest.mark.parametrize("name", sorted(PARAMS_M))
def test_parameter_count_matches_methods_md(name):
    model = timm.create_model(name, num_classes=100)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    # within 1%, or equal at the precision methods.md gives (0.1881M is "0.19M")
    assert abs(count - PARAMS_M[name]) / PARAMS_M[name] < 0.01 or round(count, 2) == PARAMS_M[name], count


@pytest.mark.parametrize("name", backbones.CIFAR_BACKBONES)
def test_timm_model_contract(name):
    model = timm.create_model(name, num_classes=7).eval()
    assert name in timm.list_models("cifar_*")
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32) and len(cfg["mean"]) == 3 and len(cfg["std"]) == 3
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape[1] == model.num_features == model.feature_info[-1]["num_chs"]
    pooled = model.forward_head(feats, pre_logits=True)
    assert pooled.shape == (2, model.num_features)
    assert torch.allclose(model(x), model.get_classifier()(pooled), atol=1e-5)
    assert model(x).shape == (2, 7)
    reductions = [info["reduction"] for info in model.feature_info]
    assert reductions == sorted(reductions)
    inters = model.forward_intermediates(x, intermediates_only=True)
    assert [t.shape[1] for t in inters] == [info["num_chs"] for info in model.feature_info]
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.num_classes == 3


@pytest.mark.parametrize("name", backbones.CIFAR_BACKBONES + ["resnet18"])
def test_every_split_point_reproduces_the_model(name):
    model = backbones.create_backbone(name, 10).eval()
    x = torch.randn(2, 3, 32, 32)
    for point in split_points(model):
        split = split_model(copy.deepcopy(model), point)
        logits, _ = split.branch.eval()(split.trunk.eval()(x))
        assert torch.allclose(logits, model(x), atol=1e-5), point


def test_default_split_is_before_the_last_stage():
    assert split_model(timm.create_model("cifar_resnet32")).branch.stage_names == ["layer3"]
    assert split_model(timm.create_model("cifar_vgg16")).branch.stage_names == ["block5"]
    assert split_model(timm.create_model("cifar_densenet40_12")).branch.stage_names == ["block3", "norm_final"]
    assert split_model(timm.create_model("resnet18")).branch.stage_names == ["layer4"]


def test_bad_split_point_names_the_valid_ones():
    with pytest.raises(UsageError, match="valid split points are layer1, layer2, layer3"):
        split_model(timm.create_model("cifar_resnet8"), "layer9")


def test_any_timm_model_is_a_backbone():
    model = backbones.create_backbone("resnet18", 10)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_unknown_backbone_suggests_a_close_name():
    with pytest.raises(UsageError, match="did you mean 'cifar_resnet32'"):
        backbones.check_backbone("cifar_resnet33")


def test_list_backbones_puts_cifar_first():
    names = backbones.list_backbones()
    assert names[: len(backbones.CIFAR_BACKBONES)] == backbones.CIFAR_BACKBONES
    assert "resnet18" in names


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_global_avg_pool_gradient_keeps_the_input_memory_format(memory_format):
    """Same value and gradient as torch's pooling, but the gradient comes back in the input's layout (so the
    ReLU backward before it does not mix layouts)."""
    from backbones._base import global_avg_pool

    torch.manual_seed(0)
    x = torch.randn(4, 6, 5, 3).contiguous(memory_format=memory_format).requires_grad_()
    weights = torch.randn(4, 6)
    (global_avg_pool(x) * weights).sum().backward()
    ours = x.grad.clone()
    x.grad = None
    reference = torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
    torch.testing.assert_close(global_avg_pool(x), reference)
    (reference * weights).sum().backward()
    torch.testing.assert_close(ours, x.grad)
    torch.testing.assert_close(ours, (weights / 15)[:, :, None, None].expand(4, 6, 5, 3))
    assert ours.is_contiguous(memory_format=memory_format)
