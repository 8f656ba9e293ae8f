"""Every loss term against a hand computation (numpy) on small fixed logits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from methods import build_method
from methods.base import Progress
from methods.losses import kd_loss, sigmoid_rampup
from tests.conftest import FixedBranch, FixedNet

B, C = 4, 5
RNG = np.random.default_rng(0)


def logits(k: int) -> list[np.ndarray]:
    return [RNG.normal(size=(B, C)) * 2 for _ in range(k)]


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def ce(z: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(softmax(z)[np.arange(len(y)), y]).mean())


def kd(student: np.ndarray, teacher: np.ndarray, t: float) -> float:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), summed over classes, mean over the batch."""
    p, q = softmax(teacher / t), softmax(student / t)
    return float((p * (np.log(p) - np.log(q))).sum(1).mean() * t * t)


def tensor(z: np.ndarray) -> torch.Tensor:
    return torch.tensor(z, dtype=torch.float32)


Y = np.array([0, 1, 2, 3])
TARGET = torch.tensor(Y)
X = [torch.zeros(B, 3, 8, 8)]


def dummy_backbone():
    import timm

    return timm.create_model("cifar_resnet8", num_classes=C)


def with_fixed_branches(method, zs, hs=None) -> None:
    method.net.trunk = nn.Identity()
    method.net.branches = nn.ModuleList(
        FixedBranch(tensor(z), None if hs is None else tensor(h)) for z, h in zip(zs, hs or [None] * len(zs)))


def test_kd_loss_matches_hand_computation_with_t_squared_and_batch_mean():
    s, t = logits(2)
    for temp in (1.0, 3.0):
        assert kd_loss(tensor(s), tensor(t), temp).item() == pytest.approx(kd(s, t, temp), rel=1e-5)
    assert kd_loss(tensor(s), tensor(s), 3.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("epoch,expected", [(0, math.exp(-5)), (40, math.exp(-5 * 0.25)), (80, 1.0), (100, 1.0)])
def test_rampup_values(epoch, expected):
    assert sigmoid_rampup(epoch, 80) == pytest.approx(expected)
    assert Progress(epoch=epoch, step=0, rampup_epochs=80).rampup == pytest.approx(expected)


def test_dml_losses():
    zs = logits(3)
    method = build_method("dml", dummy_backbone, C, {"temperature": 2.0})
    method.nets = nn.ModuleList(FixedNet(tensor(z)) for z in zs)
    terms = method.losses(X, TARGET, Progress(0, 0))
    assert terms["ce"].item() == pytest.approx(sum(ce(z, Y) for z in zs), rel=1e-5)
    expected = sum(kd(zs[i], zs[j], 2.0) for i in range(3) for j in range(3) if j != i) / 2
    assert terms["kl"].item() == pytest.approx(expected, rel=1e-5)


def test_cl_losses():
    zs = logits(3)
    method = build_method("cl", dummy_backbone, C, {})
    with_fixed_branches(method, zs)
    terms = method.losses(X, TARGET, Progress(0, 0))
    beta, t = 0.5, 2.0
    assert terms["ce"].item() == pytest.approx(beta * sum(ce(z, Y) for z in zs), rel=1e-5)
    targets = [(sum(zs) - z) / 2 for z in zs]
    assert terms["kd"].item() == pytest.approx((1 - beta) * sum(kd(z, tz, t) for z, tz in zip(zs, targets)), rel=1e-5)


def test_one_losses_use_the_gate_weighted_teacher():
    zs = logits(3)
    method = build_method("one", dummy_backbone, C, {})
    with_fixed_branches(method, zs)
    x = torch.randn(B, method.net.trunk_channels, 2, 2)
    gate = method.gate(x.mean((2, 3))).detach().numpy()
    assert np.allclose(gate.sum(1), 1.0)
    teacher = sum(gate[:, k:k + 1] * zs[k] for k in range(3))
    terms = method.losses([x], TARGET, Progress(40, 0))
    w = math.exp(-1.25)
    assert terms["ce"].item() == pytest.approx(sum(ce(z, Y) for z in zs), rel=1e-5)
    assert terms["ce_ensemble"].item() == pytest.approx(ce(teacher, Y), rel=1e-5)
    assert terms["kd"].item() == pytest.approx(w * sum(kd(z, teacher, 3.0) for z in zs), rel=1e-4)


def test_okddip_losses_use_attention_targets_and_the_leader_term():
    zs, d = logits(4), 16
    hs = [RNG.normal(size=(B, d)) for _ in range(4)]
    method = build_method("okddip", dummy_backbone, C, {})
    method.query, method.key = nn.Linear(d, d // 8, bias=False), nn.Linear(d, d // 8, bias=False)
    with_fixed_branches(method, zs, hs)
    wq, wk = method.query.weight.detach().numpy(), method.key.weight.detach().numpy()
    peers, leader = zs[:3], zs[3]
    q = np.stack([h @ wq.T for h in hs[:3]], 1)  # [B, m, d/8]
    k = np.stack([h @ wk.T for h in hs[:3]], 1)
    energy = np.einsum("bad,bcd->bac", q, k)
    alpha = np.exp(energy - energy.max(2, keepdims=True))
    alpha /= alpha.sum(2, keepdims=True)
    stacked = np.stack(peers, 1)
    targets = np.einsum("bac,bcn->ban", alpha, stacked)
    terms = method.losses(X, TARGET, Progress(80, 0))
    assert terms["ce"].item() == pytest.approx(sum(ce(z, Y) for z in peers), rel=1e-5)
    assert terms["ce_leader"].item() == pytest.approx(ce(leader, Y), rel=1e-5)
    assert terms["kd"].item() == pytest.approx(sum(kd(peers[a], targets[:, a], 3.0) for a in range(3)), rel=1e-4)
    assert terms["kd_leader"].item() == pytest.approx(kd(leader, stacked.mean(1), 3.0), rel=1e-5)


def test_pcl_losses_ensemble_and_mean_teacher_terms():
    zs, teacher_zs, d = logits(3), logits(3), 4
    hs = [RNG.normal(size=(B, d)) for _ in range(3)]
    method = build_method("pcl", dummy_backbone, C, {})
    method.ensemble_head = nn.Linear(3 * d, C)
    with_fixed_branches(method, zs, hs)
    method.mean_teacher.trunk = nn.Identity()
    method.mean_teacher.branches = nn.ModuleList(FixedBranch(tensor(z)) for z in teacher_zs)
    w_e = method.ensemble_head.weight.detach().numpy()
    b_e = method.ensemble_head.bias.detach().numpy()
    ensemble = np.concatenate(hs, 1) @ w_e.T + b_e
    terms = method.losses(X * 3, TARGET, Progress(40, 0))
    w, t = math.exp(-1.25), 3.0
    assert terms["ce_ensemble"].item() == pytest.approx(ce(ensemble, Y), rel=1e-5)
    assert terms["ce"].item() == pytest.approx(sum(ce(z, Y) for z in zs), rel=1e-5)
    assert terms["kd_ensemble"].item() == pytest.approx(w * sum(kd(z, ensemble, t) for z in zs), rel=1e-4)
    expected = w / 2 * sum(kd(zs[i], teacher_zs[j], t) for i in range(3) for j in range(3) if j != i)
    assert terms["kd_mean_teacher"].item() == pytest.approx(expected, rel=1e-4)
