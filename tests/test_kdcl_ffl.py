"""KDCL and FFL-S: teachers and loss terms against hand computations, gradient flow."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from methods import build_method
from methods.base import Progress
from methods.kdcl import linear_teacher, minlogit_teacher, naive_teacher
from tests.conftest import FixedNet
from tests.test_losses import TARGET, X, Y, ce, dummy_backbone, kd, logits, tensor

C = 5


def test_minlogit_teacher_by_hand():
    z = np.array([[[2.0, 1.0, 0.0]], [[0.5, 3.0, -1.0]]])  # two networks, one sample, label 1
    teacher = minlogit_teacher(torch.tensor(z), torch.tensor([1]))
    # network 0 shifted: [1, 0, -1]; network 1 shifted: [-2.5, 0, -4]; min per class: [-2.5, 0, -4]
    assert torch.allclose(teacher, torch.tensor([[-2.5, 0.0, -4.0]], dtype=teacher.dtype))


def test_naive_teacher_picks_the_lowest_loss_network_per_sample():
    zs = logits(3)
    teacher = naive_teacher(torch.tensor(np.stack(zs)), TARGET).numpy()
    for b in range(len(Y)):
        best = int(np.argmin([ce(z[b:b + 1], Y[b:b + 1]) for z in zs]))
        assert np.allclose(teacher[b], zs[best][b])


def test_linear_teacher_is_a_simplex_combination_no_worse_than_the_mean():
    zs = torch.tensor(np.stack(logits(3)), dtype=torch.float32)
    teacher = linear_teacher(zs, TARGET)
    weights = torch.linalg.lstsq(zs.reshape(3, -1).T, teacher.reshape(-1, 1)).solution.flatten()
    assert torch.allclose(weights.sum(), torch.tensor(1.0), atol=1e-4) and (weights > -1e-4).all()
    ce_teacher = torch.nn.functional.cross_entropy(teacher, TARGET)
    assert ce_teacher <= torch.nn.functional.cross_entropy(zs.mean(0), TARGET) + 1e-6


@pytest.mark.parametrize("teacher", ["minlogit", "naive"])
def test_kdcl_losses(teacher):
    zs = logits(2)
    method = build_method("kdcl", dummy_backbone, C, {"teacher": teacher, "temperature": 2.0, "kd_weight": 0.5})
    method.nets = nn.ModuleList(FixedNet(tensor(z)) for z in zs)
    terms = method.losses(X, TARGET, Progress(0, 0))
    target = (minlogit_teacher if teacher == "minlogit" else naive_teacher)(torch.tensor(np.stack(zs)), TARGET)
    assert terms["ce"].item() == pytest.approx(sum(ce(z, Y) for z in zs), rel=1e-5)
    expected = 0.5 * sum(kd(z, target.numpy(), 2.0) for z in zs)
    assert terms["kd"].item() == pytest.approx(expected, rel=1e-4)
    (g0,) = torch.autograd.grad(terms["kd"], [method.nets[0].logits])
    z0 = tensor(zs[0]).requires_grad_()
    from methods.losses import kd_loss

    (expected_grad,) = torch.autograd.grad(0.5 * kd_loss(z0, target.float(), 2.0), [z0])
    assert torch.allclose(g0, expected_grad, atol=1e-6)  # the teacher is detached


def test_kdcl_distinct_views_feed_each_network_its_own_view():
    method = build_method("kdcl", dummy_backbone, C, {"distinct_views": True, "num_networks": 3})
    assert method.views == 3


def test_ffl_s_losses_and_gradient_flow():
    torch.manual_seed(0)
    method = build_method("ffl_s", dummy_backbone, C, {})
    x = torch.randn(4, 3, 32, 32)
    terms = method.losses([x], TARGET, Progress(40, 0))
    torch.manual_seed(0)
    subs, fused = method.forward_all(x)  # same train-mode batch statistics: same logits
    subs = [s.detach().numpy() for s in subs]
    fused = fused.detach().numpy()
    w = np.exp(-1.25)
    assert terms["ce"].item() == pytest.approx(sum(ce(z, Y) for z in subs), rel=1e-4)
    assert terms["ce_fused"].item() == pytest.approx(ce(fused, Y), rel=1e-4)
    assert terms["kd_ensemble"].item() == pytest.approx(w * kd(fused, np.mean(subs, 0), 3.0), rel=1e-3)
    assert terms["kd_fusion"].item() == pytest.approx(w * sum(kd(z, fused, 3.0) for z in subs), rel=1e-3)
    fusion = list(method.fusion.parameters())
    branches = list(method.net.branches.parameters())
    grads = torch.autograd.grad(terms["kd_fusion"], fusion + branches, allow_unused=True, retain_graph=True)
    assert all(g is None or not g.any() for g in grads[:len(fusion)])  # the fused teacher is detached
    assert any(g is not None and g.any() for g in grads[len(fusion):])
    classifiers = [p for b in method.net.branches for p in b.model.get_classifier().parameters()]
    grads = torch.autograd.grad(terms["kd_ensemble"], fusion + classifiers, allow_unused=True)
    assert any(g is not None and g.any() for g in grads[:len(fusion)])
    # the sub-networks' classifiers only make the ensemble teacher, which is detached
    assert all(g is None or not g.any() for g in grads[len(fusion):])
