"""Any timm backbone as a multi-branch network: branch(trunk(x)) == model(x) at every valid split point,
over many timm families (no pretrained weights, small inputs, CPU), and one PCL step on each."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

import backbones
from backbones.branching import _probe_input, default_split_point, split_model, split_points
from bench.errors import UsageError
from methods import build_method
from methods.base import Progress

# family (timm module) -> a small model of it; models with a fixed input size get img_size
FAMILIES = {
    "resnet": "resnet18", "resnet_deep_stem": "resnet10t", "res2net": "res2net50_14w_8s",
    "byobnet_resnext": "resnext26ts", "repvgg": "repvgg_a0", "regnet": "regnetx_002",
    "efficientnet": "efficientnet_b0", "mobilenetv2": "mobilenetv2_050", "mobilenetv3": "mobilenetv3_small_050",
    "lcnet": "lcnet_050", "mnasnet": "mnasnet_small", "ghostnet": "ghostnet_050", "rexnet": "rexnet_100",
    "convnext": "convnext_atto", "densenet": "densenet121", "cspnet": "cspresnet50", "vovnet": "ese_vovnet19b_dw",
    "nfnet": "nf_resnet26", "hgnet": "hgnetv2_b0", "poolformer": "poolformer_s12", "edgenext": "edgenext_xx_small",
    "efficientvit": "efficientvit_b0", "mobilevit": "mobilevit_xxs", "fastvit": "fastvit_t8",
    "pvt_v2": "pvt_v2_b0", "mambaout": "mambaout_femto", "starnet": "starnet_s050", "dla": "dla34",
    "vit": "vit_tiny_patch16_224", "deit": "deit_tiny_patch16_224", "mlp_mixer": "mixer_s16_224",
}
IMG_SIZE = {"vit": 32, "deit": 32, "mlp_mixer": 32}


def build(family: str, num_classes: int = 10):
    return backbones.create_backbone(FAMILIES[family], num_classes, img_size=IMG_SIZE.get(family))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_trunk_and_branch_reproduce_the_model_at_every_split_point(family):
    torch.manual_seed(0)
    model = build(family).eval()
    points = split_points(model)
    assert len(points) >= 2, points
    x = _probe_input(model)
    with torch.no_grad():
        expected = model(x)
        for point in points:
            split = split_model(copy.deepcopy(model), point, name=family)
            logits, feature = split.branch.eval()(split.trunk.eval()(x))
            assert torch.allclose(logits, expected, rtol=1e-4, atol=1e-4), point
            assert feature.shape == (2, split.feature_dim)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_one_pcl_step_on_every_family(family):
    torch.manual_seed(0)
    method = build_method("pcl", lambda: build(family), 10, {"num_peers": 2})
    x = _probe_input(build(family))
    views = [x + 0.1 * torch.randn_like(x) for _ in range(2)]
    terms = method.losses(views, torch.tensor([1, 7]), Progress(40, 0))
    assert all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    assert not [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None]
    method.after_step(1)


def test_impossible_split_names_the_valid_points():
    model = timm.create_model("resnet18", num_classes=10)
    with pytest.raises(UsageError, match="valid split points are act1, layer1, layer2, layer3, layer4"):
        split_model(model, "fc")


def test_imagenet_default_branch_point_is_layer4():
    assert default_split_point(timm.create_model("resnet18")) == "layer4"


def test_imagenet_preset_on_a_tiny_image_folder(tmp_path):
    import json

    from bench.cli import main
    from tests.conftest import write_image_folder

    root = write_image_folder(tmp_path / "imagenet", classes=3, per_class=4, size=64)
    out = tmp_path / "out"
    assert main(["run", "--preset", "imagenet", "--methods", "pcl,one", "--data-root", str(root), "--epochs", "1",
                 "--launcher", "inline", "--no-progress", "--out", str(out), "data.workers=0",
                 "data.batch_size=6", "data.eval_batch_size=6"]) == 0
    for method in ("pcl", "one"):
        summary = json.loads((out / "imagenet" / "resnet18" / method / "seed0" / "summary.json").read_text())
        assert summary["status"] == "done" and summary["backbone"] == "resnet18"
        assert summary["options"]["branch_point"] == ""  # default: layer4, the ImageNet protocol's branch point
