"""A schedule that follows the budget: the preset's milestones and ramp-up are fractions of the run."""

from __future__ import annotations

import math

import pytest

from bench.cli import main
from bench.config import SweepConfig, from_dict
from bench.sweep.settings import load_preset, parse_override, resolved_schedule, run_config
from bench.train.schedule import lr_at
from methods.base import Progress


def paper(epochs: int, *overrides: str) -> SweepConfig:
    sweep = from_dict(SweepConfig, load_preset("paper"))
    sweep.epochs = epochs
    for text in overrides:
        sweep = from_dict(SweepConfig, parse_override(text, ["pcl"]), base=sweep)
    return sweep


# epochs -> (lr at each of a few 1-based epochs, ramp-up length), worked out by hand from 150/225 and 80 of 300
HAND = {
    300: ({1: 0.1, 150: 0.1, 151: 0.01, 225: 0.01, 226: 0.001, 300: 0.001}, 80.0),
    100: ({1: 0.1, 50: 0.1, 51: 0.01, 75: 0.01, 76: 0.001, 100: 0.001}, 26.667),
    15: ({1: 0.1, 8: 0.1, 9: 0.01, 11: 0.01, 12: 0.001, 15: 0.001}, 4.0),  # 7.5 -> 8, 11.25 -> 11
}


@pytest.mark.parametrize("epochs", sorted(HAND))
def test_the_paper_schedule_scales_with_the_epochs(epochs):
    lrs, rampup = HAND[epochs]
    cfg = run_config(paper(epochs), "pcl", "cifar_resnet32", "cifar100", 0, {})
    assert cfg.rampup_epochs == pytest.approx(rampup)
    for epoch, lr in lrs.items():  # metrics.jsonl numbers epochs from 1; the trainer passes the 0-based index
        assert lr_at(cfg, epoch - 1) == pytest.approx(lr), epoch
    half = rampup / 2  # w(e) = exp(-5 (1 - e/L)^2): at L/2, exp(-1.25); at L and after, 1
    assert Progress(half, 0, cfg.rampup_epochs).rampup == pytest.approx(math.exp(-1.25))
    assert Progress(rampup, 0, cfg.rampup_epochs).rampup == 1.0


def test_an_explicit_schedule_wins_over_the_fractions():
    assert resolved_schedule(paper(100, "optim.milestones=[30,60]", "rampup_epochs=10")) == ([30, 60], 10.0)
    assert resolved_schedule(paper(100, "optim.milestone_fractions=[0.3]")) == ([30], 26.667)


def test_the_sweep_prints_its_schedule_and_warns_when_it_cannot_act(tmp_path, capsys):
    args = ["run", "--methods", "vanilla,one", "--datasets", "digits", "--backbones", "cifar_resnet8", "--seeds", "0",
            "--epochs", "2", "--launcher", "inline", "--no-progress", "--out", str(tmp_path / "s")]
    assert main([*args, "optim.milestones=[1,5]", "rampup_epochs=30"]) == 0
    captured = capsys.readouterr()
    assert "schedule: 2 epochs, lr 0.1 x0.1 at epochs 1, 5 (as given); KD ramp-up over 30 epochs" in captured.out
    assert "lr milestone 5 is not before the last epoch (2)" in captured.out
    assert "KD ramp-up (30 epochs) is longer than the run (2)" in captured.out


def test_the_schedule_line_names_a_ramp_up_only_for_methods_that_have_one():
    """Issue 30, item 11: a sweep of methods without a KD ramp-up (vanilla, DML, KD, ...) prints none; a warm-up is
    named with its epochs, resolved from its fraction of the run."""
    from bench.sweep.grid import schedule_line

    sweep = paper(100, "rampup_epochs=300", "optim.warmup_fraction=0.05")
    line = schedule_line(sweep, ["vanilla", "dml", "kd"])
    assert "ramp-up" not in line and "linear warm-up over 5 epochs" in line
    assert "KD ramp-up over 300 epochs" in schedule_line(sweep, ["vanilla", "pcl"])


def test_the_cosine_schedule_by_hand_and_its_bad_name(tmp_path, capsys):
    cfg = run_config(paper(100, "optim.schedule=cosine"), "pcl", "cifar_resnet32", "cifar100", 0, {})
    for epoch, expected in ((0, 0.1), (25, 0.1 * (1 + math.cos(math.pi / 4)) / 2), (50, 0.05), (99, 0.1 * (
            1 + math.cos(math.pi * 0.99)) / 2)):
        assert lr_at(cfg, epoch) == pytest.approx(expected)
    out = tmp_path / "s"
    assert main(["run", "--datasets", "digits", "--out", str(out), "optim.schedule=cosin"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'cosine'" in err and not out.exists()
