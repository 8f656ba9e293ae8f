"""Ablations and sensitivity as rows of one sweep, and what a paper reports beyond the error: method variants
(`pcl[mean_teacher=off]`, `pcl.temperature=2,4`), PCL's ablation switches, calibration (ECE, NLL) and diversity."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bench.cli import main
from bench.cli.grid import build_sweep
from bench.cli.parser import make_parser
from bench.errors import UsageError
from bench.store import runs
from bench.sweep.grid import expand, resolve_variants
from bench.train.metrics import Calibration, Diversity, ensemble_gain

CPU = torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# calibration and diversity against hand computations


def test_ece_and_nll_by_hand_with_an_empty_bin():
    # 4 images, 2 classes; confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right); bins of 1/15
    p = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    target = torch.tensor([0, 1, 0, 1])
    cal = Calibration(CPU)
    cal.add(p.log(), target)
    result = cal.result()
    # bin (0.867, 0.933]: 2 images, accuracy 0.5, confidence 0.9; bin (0.533, 0.6]: 2 images, accuracy 1, conf 0.6;
    # every other bin empty (contributes nothing)
    ece = 2 / 4 * abs(0.5 - 0.9) + 2 / 4 * abs(1.0 - 0.6)
    assert result["ece"] == pytest.approx(100 * ece)
    nll = -(math.log(0.9) + math.log(0.1) + math.log(0.6) + math.log(0.6)) / 4
    assert result["nll"] == pytest.approx(nll)


def test_a_perfectly_calibrated_model_has_zero_ece():
    # confidence 0.75 on every image, right on exactly 3 of 4
    p = torch.tensor([[0.75, 0.25]] * 4)
    target = torch.tensor([0, 0, 0, 1])
    cal = Calibration(CPU)
    cal.add(p.log()[:2], target[:2])  # in two batches: the sums accumulate
    cal.add(p.log()[2:], target[2:])
    assert cal.result()["ece"] == pytest.approx(0.0, abs=1e-4)  # percent; float32 softmax rounding only


def test_disagreement_kl_and_ensemble_gain_of_three_members_by_hand():
    a = torch.tensor([[0.7, 0.3], [0.2, 0.8]])
    b = torch.tensor([[0.4, 0.6], [0.2, 0.8]])
    c = torch.tensor([[0.7, 0.3], [0.5, 0.5]])  # argmax of [0.5, 0.5] is class 0
    div = Diversity(["a", "b", "c"], CPU)
    div.add({"a": a.log(), "b": b.log(), "c": c.log()})
    out = div.result()
    predicted = {"a": [0, 1], "b": [1, 1], "c": [0, 0]}
    pairs = [(i, j) for i in "abc" for j in "abc" if i != j]
    disagree = sum(sum(x != y for x, y in zip(predicted[i], predicted[j])) for i, j in pairs) / len(pairs) / 2
    assert out["disagreement"] == pytest.approx(100 * disagree)

    def kl(p, q):
        return float((p * (p / q).log()).sum(1).mean())

    probs = {"a": a, "b": b, "c": c}
    assert out["kl"] == pytest.approx(sum(kl(probs[i], probs[j]) for i, j in pairs) / len(pairs), rel=1e-5)
    assert ensemble_gain({"a": 10.0, "b": 12.0, "c": 11.0, "ensemble": 8.5}, ["a", "b", "c"]) == 1.5
    assert ensemble_gain({"a": 10.0}, ["a"]) is None


# ---------------------------------------------------------------------------------------------
# PCL's ablation switches


def _pcl(**options):
    from backbones import backbone_factory
    from methods import build_method

    torch.manual_seed(0)
    return build_method("pcl", backbone_factory("cifar_resnet8", 10, 8), 10, options)


@pytest.mark.parametrize("switch, kept", [("mean_teacher", {"ce", "ce_ensemble", "kd_ensemble"}),
                                          ("ensemble_teacher", {"ce", "kd_mean_teacher"}),
                                          ("multi_view", {"ce", "ce_ensemble", "kd_ensemble", "kd_mean_teacher"})])
def test_each_pcl_switch_removes_exactly_its_loss_terms(switch, kept):
    from methods import Progress

    full, ablated = _pcl(), _pcl(**{switch: False})
    torch.manual_seed(1)
    x, target = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    views = [x + 0.1 * i for i in range(3)]
    progress = Progress(10.0, 5, 4.0)
    # multi_view off: every peer sees the one view, as the full method fed that view three times
    full_terms = full.train().losses([views[0]] * 3 if switch == "multi_view" else views, target, progress)
    ablated_terms = ablated.train().losses(views[:ablated.views], target, progress)
    assert set(ablated_terms) == kept and set(full_terms) >= kept
    for name in kept:
        assert torch.allclose(ablated_terms[name], full_terms[name], atol=1e-6), name
    names = ablated.eval_names()
    if switch == "mean_teacher":
        assert ablated.headline == "peer0" and not any(n.startswith("mean_teacher") for n in names)
        assert not hasattr(ablated, "mean_teacher")
    if switch == "ensemble_teacher":
        assert "ensemble" not in names and ablated.headline == "mean_teacher0"
    if switch == "multi_view":
        assert ablated.views == 1


# ---------------------------------------------------------------------------------------------
# the variant syntax


def _sweep(*argv: str):
    args = make_parser().parse_args(["run", "--datasets", "digits", "--backbones", "cifar_resnet8", *argv])
    return build_sweep(args)[0]


def test_variants_resolve_into_runs_labels_and_folders(tmp_path):
    from bench.sweep.variants import variant_label
    from methods import METHODS

    sweep = _sweep("--methods", "vanilla,pcl,pcl[mean_teacher=off,temperature=4]", "--seeds", "0,1", "--out",
                   str(tmp_path), "pcl.temperature=2,3.5", "pcl.num_peers=2")
    variants = resolve_variants(sweep)
    keys = [v.key for v, _ in variants]
    assert keys == ["vanilla", "pcl+temperature=2", "pcl+temperature=3.5", "pcl+mean_teacher=off+temperature=4"]
    resolved = dict(zip(keys, (o for _, o in variants)))
    assert resolved["pcl+temperature=3.5"]["temperature"] == 3.5 and resolved["pcl+temperature=2"]["num_peers"] == 2
    assert resolved["pcl+mean_teacher=off+temperature=4"]["mean_teacher"] is False
    assert variant_label(METHODS.get("pcl").Options, variants[3][0].options) == "w/o mean teacher, T=4"
    specs = expand(sweep, variants)
    assert len(specs) == 8
    assert specs[-1].folder == runs.run_dir(tmp_path, "digits", "cifar_resnet8", "pcl+mean_teacher=off+temperature=4",
                                            1)
    assert specs[-1].folder.parent.name == "pcl+mean_teacher=off+temperature=4"
    assert specs[-1].config.method == "pcl" and specs[-1].config.variant == {"mean_teacher": False, "temperature": 4.0}


@pytest.mark.parametrize("argv, expected", [
    (["--methods", "pcl[temprature=4]"], "has no option 'temprature'; did you mean 'temperature'"),
    (["--methods", "pcl[temperature=]"], "'temperature=' is not option=value"),
    (["--methods", "pcl["], "a '[' is not closed"),
    (["--methods", "pcl]"], "a ']' without its '['"),
    (["--methods", "pcx[temperature=4]"], "unknown method 'pcx'; did you mean 'pcl'"),
    (["--methods", "pcl,pcl[temperature=3]"], "resolve to the same options"),
    (["--methods", "pcl", "pcl.temperature=2,abc"], "expected a number, got 'abc'"),
    (["--methods", "pcl[mean_teacher=maybe]"], "expected true or false (or on/off), got 'maybe'"),
])
def test_bad_variants_are_one_line_and_write_nothing(argv, expected, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["run", "--datasets", "digits", "--backbones", "cifar_resnet8", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not out.exists()


def test_an_unknown_table_metric_is_one_line(tmp_path, capsys):
    assert main(["table", str(tmp_path), "--metric", "eec"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'ece'" in err


# ---------------------------------------------------------------------------------------------
# end to end: the component study as rows of one table, ECE and sensitivity, old runs


def test_an_ablation_and_a_temperature_study_in_one_sweep(tmp_path, capsys):
    from bench.results.aggregate import TableSpec, load_runs, render

    out = tmp_path / "sweep"
    grid = ["--methods", "vanilla,pcl,pcl[mean_teacher=off],pcl[ensemble_teacher=off],pcl[multi_view=off]",
            "--datasets", "digits", "--backbones", "cifar_resnet8", "--seeds", "0", "--epochs", "1", "--launcher",
            "inline", "--no-progress", "--out", str(out), "data.batch_size=256"]
    assert main(["run", *grid, "pcl.temperature=2,4"]) == 0
    printed = capsys.readouterr().out
    for label in ("| Vanilla |", "| PCL T=2 |", "| PCL T=4 |", "| PCL w/o mean teacher, T=2 |",
                  "| PCL w/o ensemble teacher, T=4 |", "| PCL w/o multi-view, T=2 |", "| PCL-E T=2 |"):
        assert label in printed, label
    assert "PCL-E w/o ensemble teacher" not in printed  # no ensemble teacher: no PCL-E row
    assert "PCL w/o mean teacher, T=2 reports peer0" in printed
    summary = json.loads((runs.run_dir(out, "digits", "cifar_resnet8", "pcl+mean_teacher=off+temperature=2", 0)
                          / runs.SUMMARY).read_text())
    assert summary["headline_model"] == "peer0" and summary["variant"] == {"mean_teacher": False, "temperature": 2.0}
    assert set(summary["final"]["peer0"]) == {"top1_error", "top5_error", "ece", "nll"}
    assert summary["diversity"]["final"]["disagreement"] >= 0
    ece = render(load_runs([out]), TableSpec(quantity="ece"))
    assert "| Vanilla |" in ece and "| PCL T=4 |" in ece
    plots = {p.stem for p in (out / "plots").glob("*.png")}
    assert {"sensitivity_digits_pcl_temperature", "ece_digits_cifar_resnet8", "diversity_digits_cifar_resnet8"} <= plots
    assert main(["table", str(out), "--metric", "disagreement"]) == 0
    assert "| Vanilla |" not in capsys.readouterr().out  # one network: no members, no row


def test_a_run_made_before_calibration_still_tables_with_its_new_metrics_missing(tmp_path, capsys):
    from tests.test_aggregate import fake_run

    fake_run(tmp_path, "cifar100", "cifar_resnet32", "vanilla", 0, 30.0)  # written as before: no ece, no nll
    assert main(["table", str(tmp_path)]) == 0
    assert "30.00" in capsys.readouterr().out
    assert main(["table", str(tmp_path), "--metric", "ece"]) == 1  # missing, never a 0.00 cell
    assert "0.00" not in capsys.readouterr().out


def test_a_variant_sweep_killed_and_resumed_ends_as_the_uninterrupted_one(tmp_path):
    from bench.config import SweepConfig
    from bench.train.trainer import train_run
    from tests.conftest import train_until_interrupted

    sweep = _sweep("--methods", "pcl[mean_teacher=off]", "--seeds", "0", "--epochs", "2", "--out", str(tmp_path),
                   "--preset", "demo")
    assert isinstance(sweep, SweepConfig)
    (spec,) = expand(sweep, resolve_variants(sweep))
    train_until_interrupted(spec.config, spec.folder, epoch=1)
    assert main(["run", "--methods", "pcl[mean_teacher=off]", "--datasets", "digits", "--backbones", "cifar_resnet8",
                 "--seeds", "0", "--epochs", "2", "--out", str(tmp_path), "--preset", "demo", "--launcher", "inline",
                 "--no-progress"]) == 0
    resumed = json.loads((spec.folder / runs.SUMMARY).read_text())
    assert resumed["resumes"][0]["epoch"] == 1
    clean = train_run(spec.config, tmp_path / "clean", progress_bar=False)
    assert resumed["final"] == clean["final"]


def test_the_paper_schedule_on_an_image_folder_at_20_epochs(tmp_path):
    """--epochs 20 with the paper preset: lr 0.1 up to epoch 10, 0.01 up to 15, 0.001 after (metrics.jsonl)."""
    from bench.store import records
    from tests.conftest import write_image_folder

    root = write_image_folder(tmp_path / "images", classes=2, per_class=4, size=16)
    out = tmp_path / "sweep"
    assert main(["run", "--preset", "paper", "--methods", "vanilla", "--datasets", f"tiny=imagefolder:{root}",
                 "--backbones", "cifar_resnet8", "--seeds", "0", "--epochs", "20", "--out", str(out), "--launcher",
                 "inline", "--no-progress", "data.batch_size=8"]) == 0
    lrs = {r["epoch"]: r["lr"] for r in records.load_metrics(runs.run_dir(out, "tiny", "cifar_resnet8", "vanilla", 0))}
    assert all(lrs[e] == pytest.approx(0.1) for e in range(1, 11))
    assert all(lrs[e] == pytest.approx(0.01) for e in range(11, 16))
    assert all(lrs[e] == pytest.approx(0.001) for e in range(16, 21))


def test_the_pcl_ablation_preset_is_the_component_study():
    sweep = _sweep("--preset", "pcl-ablation")
    assert [v.key for v, _ in resolve_variants(sweep)] == ["pcl", "pcl+multi_view=off", "pcl+ensemble_teacher=off",
                                                            "pcl+mean_teacher=off"]
    with pytest.raises(UsageError):
        _sweep("--preset", "pcl-ablaton")
