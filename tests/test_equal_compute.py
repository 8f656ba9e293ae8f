"""Equal compute (issue 32): training FLOPs counted per step against hand counts, budget-matched baselines as variants,
the independent ensemble, and the tables, plot and report that compare methods at equal training compute."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from bench.cli import main
from bench.store import runs
from bench.train.flops import train_step_flops
from methods import build_method

GRID = ["--datasets", "digits", "--backbones", "cifar_resnet8", "--no-progress", "--launcher", "inline", "--preset",
        "demo"]


def factory():
    from backbones import network_factory

    return network_factory("cifar_resnet8", [], 10, 8)


def hand_forward_flops(model: torch.nn.Module, size: int) -> int:
    """Forward FLOPs of one image counted by hand: 2 x (multiply-adds) of every convolution (Cin/groups x k x k per
    output element) and linear layer, from the output shapes hooks record."""
    total = 0

    def conv(module, inputs, output):
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        total += 2 * (module.in_channels // module.groups) * k * output[0].numel()

    def linear(module, inputs, output):
        nonlocal total
        total += 2 * module.in_features * module.out_features

    hooks = [m.register_forward_hook(conv) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    hooks += [m.register_forward_hook(linear) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    return total


def test_vanilla_s_step_is_three_forward_passes_of_the_batch_by_hand():
    method = build_method("vanilla", factory(), 10, {})
    counted = train_step_flops(method, 64, 8, 10)
    by_hand = 3 * 64 * hand_forward_flops(factory()(), 8)  # forward, and a backward of twice its FLOPs
    assert counted == pytest.approx(by_hand, rel=0.02)


def test_pcl_s_step_is_the_sum_of_its_parts_counted_separately():
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    method = build_method("pcl", factory(), 10, {})
    views = [torch.zeros(32, 3, 8, 8) for _ in range(3)]

    def count(fn) -> int:
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        return counter.get_total_flops()

    def peers():  # trunk and peers on the three views, forward and backward
        out = method.peer_views(method.net, views)
        sum(z.sum() + h.sum() for z, h in out).backward()

    def mean_teacher():  # forward only
        with torch.no_grad():
            method.peer_views(method.mean_teacher, views, False)

    features = torch.zeros(32, 3 * method.net.feature_dim, requires_grad=True)

    def ensemble_head():
        method.ensemble_head(features).sum().backward()

    parts = count(peers) + count(mean_teacher) + count(ensemble_head)
    assert train_step_flops(method, 32, 8, 10) == pytest.approx(parts, rel=0.01)


def test_the_count_does_not_change_with_amp_or_the_method_s_dtype(tmp_path):
    counts = []
    for amp in ("off", "bf16"):
        out = tmp_path / amp
        assert main(["run", "--methods", "dml", "--seeds", "0", "--epochs", "1", "--out", str(out), *GRID,
                     f"compute.amp={amp}", "data.batch_size=256"]) == 0
        summary = json.loads(next(out.rglob(runs.SUMMARY)).read_text())
        assert summary["train_flops"] == summary["train_step_flops"] * summary["train_steps"] > 0
        counts.append(summary["train_step_flops"])
    assert counts[0] == counts[1]
    method = build_method("dml", factory(), 10, {})
    assert train_step_flops(method.to(torch.bfloat16), 64, 8, 10) == train_step_flops(method.float(), 64, 8, 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_count_is_the_same_on_the_gpu():
    method = build_method("pcl", factory(), 10, {})
    assert train_step_flops(method, 64, 8, 10, "cuda") == train_step_flops(method, 64, 8, 10, "cpu")


def test_independent_networks_each_learn_from_cross_entropy_alone():
    torch.manual_seed(0)
    method = build_method("independent", factory(), 10, {})
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    terms = method.losses([x], y, None)
    assert set(terms) == {"ce"} and len(method.nets) == 3
    by_hand = sum(F.cross_entropy(net(x), y) for net in method.nets)
    assert terms["ce"].item() == pytest.approx(by_hand.item(), rel=1e-6)
    terms["ce"].backward()  # network i's gradient is that of its own cross-entropy, nothing from the others
    own = torch.autograd.grad(F.cross_entropy(method.nets[1](x), y), list(method.nets[1].parameters()))
    assert all(torch.allclose(p.grad, g, atol=1e-6) for p, g in zip(method.nets[1].parameters(), own))
    method.eval()
    with torch.no_grad():
        logits = method.eval_logits(x)
        mean = torch.stack([z.softmax(1) for k, z in logits.items() if k != "ensemble"]).mean(0)
        assert torch.allclose(logits["ensemble"].softmax(1), mean, atol=1e-6)  # the mean of probabilities


def test_a_budget_matched_baseline_runs_end_to_end_with_tables_plot_and_report(tmp_path, capsys):
    from bench.cli.grid import build_sweep
    from bench.cli.parser import make_parser, parse_command_line
    from bench.sweep.grid import prepare

    out = tmp_path / "s"
    args = ["run", "--methods", "vanilla,pcl,vanilla[budget=pcl],independent", "--seeds", "0", "--epochs", "2",
            "--out", str(out), *GRID, "data.batch_size=256"]
    planned = {s.label: s.config for s in prepare(build_sweep(parse_command_line(make_parser(), args))[0])}
    assert not out.exists()  # the epochs are known before anything trains (or is written)
    assert planned["digits/cifar_resnet8/vanilla+budget=pcl/seed0"].budget["epochs"] > 2
    assert main(args) == 0
    captured = capsys.readouterr()
    folder = out / "digits" / "cifar_resnet8" / "vanilla+budget=pcl" / "seed0"
    summary = json.loads((folder / runs.SUMMARY).read_text())
    budget = summary["budget"]
    spend = 2 * budget["budget_step_flops"]
    assert budget["epochs"] == min(range(1, 20), key=lambda e: abs(e * budget["step_flops"] - spend))
    assert summary["epochs"] == budget["epochs"] > 2 and budget["method"] == "pcl"
    assert f"budget: vanilla+budget=pcl on digits/cifar_resnet8: {budget['epochs']} epochs" in captured.err
    assert planned["digits/cifar_resnet8/vanilla+budget=pcl/seed0"].budget == budget
    pcl = json.loads((out / "digits" / "cifar_resnet8" / "pcl" / "seed0" / runs.SUMMARY).read_text())
    assert abs(summary["train_flops"] - pcl["train_flops"]) <= summary["train_step_flops"] * summary["train_steps"] / (
        2 * summary["epochs"])  # within half an epoch of PCL's training compute
    table = (out / "tables" / "results.md").read_text()
    assert f"Vanilla at PCL's compute ({budget['ratio']:.1f}x epochs)" in table and "| Independent |" in table
    costs = (out / "tables" / "costs.md").read_text()
    assert "train PFLOPs" in costs and "x vanilla" in costs
    budget_md = (out / "tables" / "budget.md").read_text()
    assert "| digits | cifar_resnet8 | PCL |" in budget_md and "Vanilla at PCL's compute" in budget_md
    assert (out / "plots" / "compute_digits_cifar_resnet8.png").stat().st_size > 1000
    assert main(["table", str(out), "--budget"]) == 0 and "gain (pp)" in capsys.readouterr().out
    assert main(["run", *args[1:]]) == 0 and "0 to run (4 done: skipped)" in capsys.readouterr().out  # resumes/skips
    assert main(["export", str(folder)]) == 0
    assert main(["report", str(out)]) == 0 and "At equal training compute" in (out / "report.html").read_text()


@pytest.mark.parametrize("entry,message", [
    ("vanilla[budget=pcll]", "unknown method 'pcll'; did you mean 'pcl'?"),
    ("pcl[budget=pcl]", "budget=pcl names the baseline itself"),
    ("vanilla[budget=kd]", "kd cannot run on 'cifar_resnet8', so it sets no budget there"),
])
def test_a_bad_budget_is_one_line_before_any_run(tmp_path, capsys, entry, message):
    out = tmp_path / "o"
    assert main(["run", "--methods", entry, "--seeds", "0", "--out", str(out), *GRID]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists(), err


def test_the_equal_compute_preset_pairs_every_method_with_vanilla_at_its_compute():
    from bench.config import SweepConfig, from_dict
    from bench.sweep.settings import load_preset

    sweep = from_dict(SweepConfig, load_preset("equal-compute"))
    paper = {"dml", "cl", "one", "okddip", "kdcl", "ffl_s", "pcl"}
    assert paper | {"vanilla", "independent"} <= set(sweep.methods)
    assert {f"vanilla[budget={m}]" for m in paper} <= set(sweep.methods) and sweep.epochs == 300
