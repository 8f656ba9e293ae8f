"""Methods: gradient flow, PCL's mean teacher and views, every method x every CIFAR backbone, learning."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import backbones
from bench.config import SweepConfig, from_dict
from bench.errors import UsageError
from bench.sweep.settings import load_preset, run_config
from bench.train.trainer import train_run
from methods import METHODS, build_method
from methods.base import Progress
from methods.losses import kd_loss
from tests.conftest import FixedNet
from tests.test_losses import TARGET, X, dummy_backbone, logits, tensor, with_fixed_branches

C = 5


def grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
    return list(torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True))


def test_dml_teachers_get_no_gradient_from_kl():
    zs = logits(3)
    method = build_method("dml", dummy_backbone, C, {})
    method.nets = nn.ModuleList(FixedNet(tensor(z)) for z in zs)
    kl = method.losses(X, TARGET, Progress(0, 0))["kl"]
    (g0,) = grads(kl, [method.nets[0].logits])
    z0 = tensor(zs[0]).requires_grad_()
    as_student_only = sum(kd_loss(z0, tensor(zs[j]), 1.0) for j in (1, 2)) / 2
    (expected,) = torch.autograd.grad(as_student_only, [z0])
    assert torch.allclose(g0, expected, atol=1e-6)


def test_cl_target_is_detached_and_trunk_gradient_is_rescaled_by_one_over_m():
    zs = logits(3)
    method = build_method("cl", dummy_backbone, C, {})
    with_fixed_branches(method, zs)
    kd = method.losses(X, TARGET, Progress(0, 0))["kd"]
    (g0,) = grads(kd, [method.net.branches[0].logits])
    z0 = tensor(zs[0]).requires_grad_()
    (expected,) = torch.autograd.grad(0.5 * kd_loss(z0, tensor((zs[1] + zs[2]) / 2), 2.0), [z0])
    assert torch.allclose(g0, expected, atol=1e-6)

    x = torch.randn(4, 3, 32, 32)
    trunk_grads = {}
    for rescale in (True, False):
        torch.manual_seed(0)
        m = build_method("cl", dummy_backbone, C, {"backprop_rescale": rescale})
        loss = sum(m.losses([x], TARGET, Progress(0, 0)).values())
        trunk_grads[rescale] = grads(loss, list(m.net.trunk.parameters()))
    for scaled, full in zip(trunk_grads[True], trunk_grads[False]):
        assert torch.allclose(scaled, full / 3, rtol=1e-4, atol=1e-7)


def test_one_kd_term_sends_no_gradient_to_the_gated_teacher():
    method = build_method("one", dummy_backbone, C, {})
    terms = method.losses([torch.randn(4, 3, 32, 32)], TARGET, Progress(80, 0))
    gate_params = list(method.gate.parameters())
    assert all(g is None or not g.any() for g in grads(terms["kd"], gate_params))
    assert any(g is not None and g.any() for g in grads(terms["ce_ensemble"], gate_params))


def test_okddip_attention_learns_through_the_kd_term():
    method = build_method("okddip", dummy_backbone, C, {})
    kd = method.losses([torch.randn(4, 3, 32, 32)], TARGET, Progress(80, 0))["kd"]
    for g in grads(kd, [method.query.weight, method.key.weight]):
        assert g is not None and g.abs().sum() > 0
    detached = build_method("okddip", dummy_backbone, C, {"detach_targets": True})
    kd = detached.losses([torch.randn(4, 3, 32, 32)], TARGET, Progress(80, 0))["kd"]
    assert all(g is None for g in grads(kd, [detached.query.weight, detached.key.weight]))


def test_pcl_teachers_are_detached_and_mean_teacher_gets_no_gradient():
    method = build_method("pcl", dummy_backbone, C, {})
    views = [torch.randn(4, 3, 32, 32) for _ in range(3)]
    terms = method.losses(views, TARGET, Progress(80, 0))
    head = list(method.ensemble_head.parameters())
    assert all(g is None for g in grads(terms["kd_ensemble"] + terms["kd_mean_teacher"], head))
    sum(terms.values()).backward()
    assert all(p.grad is None and not p.requires_grad for p in method.mean_teacher.parameters())
    assert all(p.grad is not None for p in method.net.parameters())


def test_pcl_mean_teacher_follows_the_alpha_schedule_exactly():
    method = build_method("pcl", dummy_backbone, C, {})
    student = list(method.net.parameters())
    teacher = list(method.mean_teacher.parameters())
    for step in (1, 2, 10, 5000):
        with torch.no_grad():
            for p in student:
                p.add_(torch.randn_like(p))
        before = [t.clone() for t in teacher]
        method.after_step(step)
        alpha = min(1 - 1 / (step + 1), 0.999)
        for t, t0, s in zip(teacher, before, student):
            assert torch.allclose(t, alpha * t0 + (1 - alpha) * s, atol=1e-6)


def test_pcl_each_peer_sees_its_own_view_and_the_ensemble_sees_concatenated_features():
    method = build_method("pcl", dummy_backbone, C, {})
    views = [torch.randn(4, 3, 32, 32) for _ in range(3)]
    seen, outputs, head_input = {}, {}, {}
    def record(i):
        def hook(module, inputs, output):
            seen[i], outputs[i] = inputs[0], output[1]
        return hook

    def record_head(module, inputs, output):
        head_input["x"] = inputs[0]

    for i, branch in enumerate(method.net.branches):
        branch.register_forward_hook(record(i))
    method.ensemble_head.register_forward_hook(record_head)
    method.losses(views, TARGET, Progress(0, 0))
    for i, view in enumerate(views):
        assert torch.allclose(seen[i], method.net.trunk(view), atol=1e-5)
    assert not torch.allclose(seen[0], seen[1])
    assert torch.equal(head_input["x"], torch.cat([outputs[i] for i in range(3)], 1))
    assert method.views == 3


def test_peers_are_independently_initialised_unless_copy():
    method = build_method("pcl", dummy_backbone, C, {})
    a, b = (list(br.parameters())[0] for br in method.net.branches[:2])
    assert not torch.equal(a, b)
    copied = build_method("pcl", dummy_backbone, C, {"peer_init": "copy"})
    a, b = (list(br.parameters())[0] for br in copied.net.branches[:2])
    assert torch.equal(a, b)


def test_unknown_option_suggests_the_close_name():
    with pytest.raises(UsageError, match="did you mean 'temperature'"):
        build_method("pcl", dummy_backbone, C, {"temprature": 2})


@pytest.mark.parametrize("backbone", backbones.CIFAR_BACKBONES)
@pytest.mark.parametrize("method_name", METHODS.names())
def test_every_method_trains_one_step_on_every_cifar_backbone(method_name, backbone):
    torch.manual_seed(0)
    method = build_method(method_name, lambda: timm.create_model(backbone, num_classes=10), 10, {})
    method.train()
    views = [torch.randn(4, 3, 32, 32) for _ in range(method.views)]
    terms = method.losses(views, torch.tensor([0, 1, 2, 3]), Progress(40, 0))
    assert terms and all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    chosen = method.groups_to_step()  # a group the method leaves out of this step (SwitOKD's teacher) gets none
    idle = {id(p) for group, on in zip(method.param_groups(), chosen or []) if not on for p in group["params"]}
    missing = [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None and id(p) not in idle]
    assert not missing, missing
    method.after_step(1)
    method.eval()
    with torch.no_grad():
        out = method.eval_logits(views[0])
    assert list(out) and set(out) == set(method.eval_names()) and method.headline in out
    assert all(z.shape == (4, 10) for z in out.values())


@pytest.mark.parametrize("method_name", METHODS.names())
def test_every_method_learns_digits(method_name, tmp_path):
    sweep = from_dict(SweepConfig, load_preset("demo"))
    sweep.epochs, sweep.seeds = 6, [0]
    partners = []
    if METHODS.get(method_name).partner_range[0] > 0:  # KD: its teacher trained first, where the sweep keeps it
        train_run(run_config(sweep, "vanilla", "cifar_resnet8", "digits", 0, {}),
                  tmp_path / "digits" / "cifar_resnet8" / "vanilla" / "seed0", progress_bar=False)
        partners = ["cifar_resnet8"]
    cfg = run_config(sweep, method_name, "cifar_resnet8", "digits", 0, {}, partners=partners)
    folder = tmp_path / "digits" / "+".join(["cifar_resnet8", *partners]) / method_name / "seed0"
    summary = train_run(cfg, folder, progress_bar=False)
    assert summary["status"] == "done"
    error = summary["final"][summary["headline_model"]]["top1_error"]
    assert error < 35.0, f"{method_name}: headline top-1 error {error:.1f}% (chance: 90%)"


@pytest.mark.parametrize("backbone", ["cifar_resnet8", "cifar_densenet40_12"])
def test_pcl_batched_views_give_the_same_losses_and_bn_statistics(backbone):
    torch.manual_seed(0)
    batched = build_method("pcl", lambda: timm.create_model(backbone, num_classes=10), 10, {"batch_views": "on"})
    plain = build_method("pcl", lambda: timm.create_model(backbone, num_classes=10), 10, {"batch_views": "off"})
    plain.load_state_dict(batched.state_dict())
    views = [torch.randn(4, 3, 32, 32) for _ in range(3)]
    a = batched.losses(views, torch.tensor([0, 1, 2, 3]), Progress(40, 0))
    b = plain.losses(views, torch.tensor([0, 1, 2, 3]), Progress(40, 0))
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-5), name
    for (name, x), (_, y) in zip(batched.state_dict().items(), plain.state_dict().items()):
        assert torch.allclose(x.float(), y.float(), rtol=1e-4, atol=1e-5), name  # running statistics too
