"""MCL and OKDPH against hand computations on tiny tensors (methods.md, "Methods after PCL")."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F

import backbones  # noqa: F401  (registers the CIFAR networks)
from bench.config import RunConfig
from bench.errors import UsageError
from methods import build_method
from methods.base import Progress
from methods.mcl import MCL, contrastive_loss


def resnet8(classes: int = 4):
    return lambda: timm.create_model("cifar_resnet8", num_classes=classes)


# ---------------------------------------------------------------------------------------------
# MCL


def hand_l(s: list[list[float]], y: list[int]) -> float:
    """l(S) by its definition: -mean over anchors with a positive of mean_p [S_ip - log sum_{k != i} exp S_ik]."""
    per_anchor = []
    for i in range(len(y)):
        positives = [p for p in range(len(y)) if p != i and y[p] == y[i]]
        if not positives:
            continue
        log_z = math.log(sum(math.exp(s[i][k]) for k in range(len(y)) if k != i))
        per_anchor.append(sum(s[i][p] - log_z for p in positives) / len(positives))
    return -sum(per_anchor) / len(per_anchor)


def test_contrastive_term_leaves_the_diagonal_out_and_an_anchor_without_positive():
    # between two networks: anchor 0's only positive is image 1 of the other network; its own image (the diagonal,
    # 5.0, the largest similarity) is in neither the positives nor the denominator; anchor 2 has no positive
    s = [[5.0, 1.0, -1.0], [0.5, 4.0, 2.0], [0.0, 0.3, 3.0]]
    y = [0, 0, 1]
    got = contrastive_loss(torch.tensor(s), torch.tensor(y))
    expected = -((1.0 - math.log(math.exp(1.0) + math.exp(-1.0))) + (0.5 - math.log(math.exp(0.5) + math.exp(2.0)))) / 2
    assert got.item() == pytest.approx(expected, abs=1e-6)
    assert got.item() == pytest.approx(hand_l(s, y), abs=1e-6)
    assert contrastive_loss(torch.tensor(s), torch.tensor([0, 1, 2])).item() == 0.0  # no anchor has a positive


def test_mcl_total_matches_the_official_formula_by_hand():
    torch.manual_seed(0)
    method = build_method("mcl", resnet8(), 4, {})
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 0, 1, 1, 2, 3])
    method.train()
    torch.manual_seed(1)
    terms = method.losses([x], y, Progress(1.0, 0))
    torch.manual_seed(1)  # the same forward again (BN in train mode: batch statistics, no randomness)
    outputs = method.forward_all(x)
    e = [F.normalize(head.proj(h), dim=1) for head, (_, h) in zip(method.embed, outputs)]
    s = {(a, b): (e[a] @ e[b].t() / 0.1).tolist() for a in range(2) for b in range(2)}

    def kd(student, teacher, t=3.0):  # row-wise, batch mean, T^2 KL(teacher || student)
        total = 0.0
        for rs, rt in zip(student, teacher):
            ps = torch.softmax(torch.tensor(rs) / t, 0)
            pt = torch.softmax(torch.tensor(rt) / t, 0)
            total += float((pt * (pt.log() - ps.log())).sum())
        return t * t * total / len(student)

    yl = y.tolist()
    ce = sum(F.cross_entropy(z, y).item() for z, _ in outputs)
    vcl = hand_l(s[0, 0], yl) + hand_l(s[1, 1], yl)
    icl = hand_l(s[0, 1], yl) + hand_l(s[1, 0], yl)
    soft_vcl = kd(s[0, 0], s[1, 1]) + kd(s[1, 1], s[0, 0])
    soft_icl = kd(s[0, 1], s[1, 0]) + kd(s[1, 0], s[0, 1])
    expected = {"ce": ce, "vcl": 0.1 * vcl, "soft_vcl": 1.0 * soft_vcl, "icl": 0.1 * icl, "soft_icl": 1.0 * soft_icl}
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-4, abs=1e-5), name


def test_mcl_soft_terms_send_no_gradient_to_their_teacher_rows():
    torch.manual_seed(0)
    method = build_method("mcl", resnet8(), 4, {})
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 0, 1, 1])
    method.train()
    soft = method.losses([x], y, Progress(1.0, 0))["soft_vcl"]
    # SoftVCL = KD(S11 -> S00) + KD(S00 -> S11): each network's head gets gradient only as a student
    grads = torch.autograd.grad(soft, [method.embed[0].proj[0].weight, method.embed[1].proj[0].weight])
    assert all(g.abs().sum() > 0 for g in grads)


def test_mcl_shared_trunk_x4_shares_stem_and_first_stage_and_exports_plain_networks():
    torch.manual_seed(0)
    method = build_method("mcl", resnet8(), 4, {"num_networks": 4, "shared_trunk": True})
    assert method.body.trunk.names[-1] == "layer1"  # conv1 + stage 1 shared, the branches start at layer2
    assert len(method.embed) == 4
    x = torch.randn(2, 3, 16, 16)
    method.eval()
    out = method.eval_logits(x)
    for i in range(4):
        net = timm.create_model("cifar_resnet8", num_classes=4).eval()
        net.load_state_dict(method.network_state_dict(f"net{i}"))  # no embedding head key: strict load passes
        assert torch.allclose(net(x), out[f"net{i}"], atol=1e-5)
    assert not any("embed" in k for k in method.network_state_dict("net0"))


def test_mcl_refuses_batches_without_positives():
    cfg = RunConfig(method="mcl")
    cfg.data.sampler, cfg.data.per_class = "class_balanced", 1
    with pytest.raises(UsageError, match="at least 2 images of a class"):
        MCL.check_settings(MCL.Options(), cfg)
    cfg.data.per_class = 2
    MCL.check_settings(MCL.Options(), cfg)


# ---------------------------------------------------------------------------------------------
# OKDPH


def okdph(**options):
    torch.manual_seed(0)
    return build_method("okdph", resnet8(), 4, options)


def float_state(net) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}


def sgd_step(method, views, y, batch: int, progress_epoch: float = 0.0):
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    terms = method.losses(views, y, Progress(progress_epoch, 0, batch=batch))
    opt.zero_grad()
    sum(terms.values()).backward()
    opt.step()
    method.after_step(1)
    return terms


def test_okdph_students_start_identical_unless_asked():
    same, different = okdph(), okdph(init="different")
    for a, b in zip(same.nets[0].state_dict().values(), same.nets[1].state_dict().values()):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(different.nets[0].state_dict().values(),
                                                     different.nets[1].state_dict().values()))
    assert same.views == 3  # each student and the HWM its own view


def test_okdph_hwm_is_the_mean_of_the_students_parameters_and_buffers_after_a_step():
    method = okdph(init="different", fusion_interval=1000)
    method.train()
    views, y = [torch.randn(4, 3, 16, 16) for _ in range(3)], torch.tensor([0, 1, 2, 3])
    sgd_step(method, views, y, batch=1)  # no fusion at batch 1
    students = [float_state(net) for net in method.nets]
    with torch.no_grad():
        method.losses(views, y, Progress(0.0, 1, batch=2))  # the next step rebuilds the HWM first
    hwm = method.hwm.state_dict()
    for key, value in students[0].items():
        if key.endswith(("running_mean", "running_var")):
            continue  # the HWM's own forward in train mode then moves its BN statistics
        assert torch.allclose(hwm[key], (value + students[1][key]) / 2, atol=1e-6), key
    students = [float_state(net) for net in method.nets]  # that forward moved the students' BN statistics too
    method.build_hwm(method.hybrid_ratios())  # what a step does first: buffers too
    for key, value in students[0].items():
        assert torch.allclose(method.hwm.state_dict()[key], (value + students[1][key]) / 2, atol=1e-6), key


@pytest.mark.parametrize("gamma", [0.5, 1.0])
def test_okdph_fusion_formula(gamma):
    method = okdph(init="different", gamma=gamma)
    before = [float_state(net) for net in method.nets]
    method.build_hwm([0.25, 0.75])
    hwm = float_state(method.hwm)
    method.fuse()
    for old, net in zip(before, method.nets):
        for key, value in float_state(net).items():
            assert torch.allclose(value, gamma * hwm[key] + (1 - gamma) * old[key], atol=1e-6), key


def test_okdph_fuses_every_g_batches_after_the_step():
    method = okdph(fusion_interval=3, gamma=1.0)
    method.train()
    views, y = [torch.randn(4, 3, 16, 16) for _ in range(3)], torch.tensor([0, 1, 2, 3])
    fused = []
    for batch in range(5):
        sgd_step(method, [v + batch for v in views], y, batch=batch)
        fused.append(all(torch.equal(a, b) for a, b in zip(float_state(method.nets[0]).values(),
                                                           float_state(method.nets[1]).values())))
    assert fused == [True, False, False, True, False]  # gamma 1: fused students are the HWM, equal


def test_okdph_code_variant_sends_no_gradient_through_the_hwm_and_the_paper_variant_scales_it_by_r():
    views, y = [torch.randn(4, 3, 16, 16) for _ in range(3)], torch.tensor([0, 1, 2, 3])
    code = okdph(init="different")
    code.train()
    assert not code.losses(views, y, Progress(0.0, 0, batch=1))["hwm_ce"].requires_grad

    paper = okdph(init="different", gradient="paper", hybrid="dirichlet", omega=0.6)
    paper.train()
    torch.manual_seed(5)
    ratios = paper.hybrid_ratios()
    torch.manual_seed(5)  # the same Dirichlet draw inside losses()
    term = paper.losses(views, y, Progress(0.0, 0, batch=1))["hwm_ce"]
    weight = [p for n, p in paper.nets[0].named_parameters() if n == "conv1.weight"]
    weight1 = [p for n, p in paper.nets[1].named_parameters() if n == "conv1.weight"]
    g0, g1 = torch.autograd.grad(term, [*weight, *weight1])
    # the same HWM as a plain network with the hybrid weights, its own gradient
    hwm = timm.create_model("cifar_resnet8", num_classes=4).train()
    hwm.load_state_dict(paper.hwm.state_dict())
    loss = 0.4 * F.cross_entropy(hwm(views[2]), y)
    (g_hwm,) = torch.autograd.grad(loss, [hwm.conv1.weight])
    assert torch.allclose(g0, ratios[0] * g_hwm, rtol=1e-3, atol=1e-7)
    assert torch.allclose(g1, ratios[1] * g_hwm, rtol=1e-3, atol=1e-7)
    assert abs(ratios[0] - ratios[1]) > 1e-3  # the scaling is really per student


def test_okdph_official_settings_follow_the_backbone():
    torch.manual_seed(0)
    from backbones import network_factory

    method = build_method("okdph", network_factory("cifar_resnet32", [], 4, 32), 4, {"settings": "official"})
    assert (method.opts.omega, method.opts.beta, method.opts.gamma, method.opts.fusion_interval,
            method.opts.fusion_unit) == (1.0, 0.5, 1.0, 5, "batch")
    method = build_method("okdph", network_factory("cifar_vgg16", [], 4, 32), 4, {"settings": "official"})
    assert (method.opts.omega, method.opts.fusion_unit) == (0.3, "epoch")
    with pytest.raises(UsageError, match="fusion_interval must be at least 1"):
        build_method("okdph", resnet8(), 4, {"fusion_interval": 0})


# ---------------------------------------------------------------------------------------------
# end to end: the "done when"


def test_mcl_and_okdph_train_digits_and_export_plain_networks_that_reproduce_their_error(tmp_path, capsys):
    import json

    from bench.cli import main
    from bench.store import runs
    from tests.conftest import exported_top1_error

    out = tmp_path / "sweep"
    assert main(["run", "--methods", "mcl,okdph", "--datasets", "digits", "--backbones", "cifar_resnet8", "--seeds",
                 "0", "--epochs", "3", "--out", str(out), "--launcher", "inline", "--no-progress"]) == 0
    for method in ("mcl", "okdph"):
        folder = runs.run_dir(out, "digits", "cifar_resnet8", method, 0)
        summary = json.loads((folder / runs.SUMMARY).read_text())
        assert summary["final"]["net0"]["top1_error"] < 50.0, method
        target = tmp_path / f"{method}.safetensors"
        assert main(["export", str(folder), "--out", str(target)]) == 0
        # loaded strictly: no embedding head, no HWM in the file
        assert exported_top1_error(target, folder) == pytest.approx(summary["final"]["net0"]["top1_error"])
    okdph = json.loads((runs.run_dir(out, "digits", "cifar_resnet8", "okdph", 0) / runs.SUMMARY).read_text())
    assert "hwm" in okdph["final"] and okdph["protocol"] == "common"
    capsys.readouterr()
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "mcl" in listing and "embedding_dim=128" in listing and "okdph" in listing and "fusion_interval=5" in listing


def test_the_official_presets_carry_their_authors_recipes(tmp_path):
    import json

    from bench.cli import main
    from bench.config import SweepConfig, from_dict
    from bench.store import records, runs
    from bench.sweep.settings import load_preset

    mcl = from_dict(SweepConfig, load_preset("mcl-official"))
    assert (mcl.optim.schedule, mcl.optim.nesterov, mcl.data.sampler, mcl.data.per_class, mcl.data.batch_size,
            mcl.protocol) == ("cosine", True, "class_balanced", 2, 128, "mcl-official")
    out = tmp_path / "okdph"
    assert main(["run", "--preset", "okdph-official", "--methods", "okdph", "--datasets", "digits", "--backbones",
                 "cifar_resnet8", "--seeds", "0", "--epochs", "1", "--out", str(out), "--launcher", "inline",
                 "--no-progress", "data.batch_size=256", "data.image_size=16"]) == 0  # its cutout:16 fits 16 px
    folder = runs.run_dir(out, "digits", "cifar_resnet8", "okdph", 0)
    summary = json.loads((folder / runs.SUMMARY).read_text())
    assert summary["options"]["view_augment"] == ["crop+flip+rotate:15", "crop+flip+cutout:16", "crop+randaugment"]
    assert summary["options"]["fusion_unit"] == "epoch"  # src/OKDPH.py's defaults for a backbone OKDPH.sh lacks
    assert records.load_config(folder).protocol == "okdph-official"
    assert "Training recipe: okdph-official" in (out / "tables" / "results.md").read_text()
