"""The training loop end to end on digits: files, determinism, resume, skip, divergence."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from bench.config import SweepConfig, from_dict
from bench.store import records, runs
from bench.sweep.settings import load_preset, run_config
from bench.train.trainer import train_run
from tests.conftest import train_until_interrupted


def config(method="vanilla", epochs=3, **kw):
    sweep = from_dict(SweepConfig, load_preset("demo"))
    sweep.epochs = epochs
    for key, value in kw.items():
        setattr(sweep, key, value)
    return run_config(sweep, method, "cifar_resnet8", "digits", 0, {})


def test_run_writes_config_metrics_summary_and_checkpoint(tmp_path):
    cfg = config("pcl", epochs=2)
    summary = train_run(cfg, tmp_path, progress_bar=False)
    saved = yaml.safe_load((tmp_path / runs.CONFIG).read_text())
    assert saved["method"] == "pcl" and saved["optim"]["lr"] == cfg.optim.lr and saved["options"]["num_peers"] == 3
    lines = [json.loads(x) for x in (tmp_path / runs.METRICS).read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert set(lines[0]["loss"]) == {"ce_ensemble", "ce", "kd_ensemble", "kd_mean_teacher", "total"}
    assert set(lines[0]["top1_error"]) == set(summary["eval_models"]) and lines[0]["images_per_s"] > 0
    on_disk = json.loads((tmp_path / runs.SUMMARY).read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for key in ("method", "backbone", "dataset", "seed", "status", "headline_model", "final", "best", "epochs",
                "wall_clock_s", "device", "params", "versions", "git_commit"):
        assert key in on_disk
    assert on_disk["headline_model"] == "mean_teacher0" and on_disk["status"] == "done"
    assert (on_disk["amp"], on_disk["channels_last"], on_disk["compile"], on_disk["optimizer_impl"]) == (
        "off", True, False, "foreach")  # the compute settings, as resolved on this CPU
    assert on_disk["final"]["mean_teacher0"]["top1_error"] == lines[-1]["top1_error"]["mean_teacher0"]
    best = min(r["top1_error"]["peer0"] for r in lines)
    assert on_disk["best"]["peer0"]["top1_error"] == best
    assert on_disk["params"]["deployed"] < on_disk["params"]["training_total"]
    state = torch.load(tmp_path / runs.CHECKPOINT, weights_only=True)
    assert state["epoch"] == 2


@pytest.mark.parametrize("impl", ["foreach", "loop"])
def test_optimizer_implementations_take_the_same_step(impl):
    """compute.optimizer_impl changes how SGD runs, not what it computes: one step of each equals a
    hand-written Nesterov SGD step with weight decay."""
    from bench.config import OptimConfig
    from bench.train.compute import build_optimizer

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4))]
    grads = [torch.randn_like(p) for p in params]
    optim = OptimConfig(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    opt = build_optimizer(params, optim, impl)
    before = [p.detach().clone() for p in params]
    for _ in range(2):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    for p, w, g in zip(params, before, grads):
        d = g + 5e-4 * w  # step 1: buffer = d, update = d + 0.9 * buffer
        w1 = w - 0.1 * (d + 0.9 * d)
        d2 = g + 5e-4 * w1  # step 2: buffer = 0.9 * d + d2
        w2 = w1 - 0.1 * (d2 + 0.9 * (0.9 * d + d2))
        torch.testing.assert_close(p.detach(), w2)


def test_same_seed_same_metrics(tmp_path):
    a = train_run(config("one", epochs=2), tmp_path / "a", progress_bar=False)
    b = train_run(config("one", epochs=2), tmp_path / "b", progress_bar=False)
    assert a["final"] == b["final"] and a["best"] == b["best"]


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    reference = train_run(config("pcl", epochs=3), tmp_path / "ref", progress_bar=False)
    train_until_interrupted(config("pcl", epochs=3), tmp_path / "cut", epoch=2)
    assert len(records.load_metrics(tmp_path / "cut")) == 2
    resumed = train_run(config("pcl", epochs=3), tmp_path / "cut", progress_bar=False)
    assert resumed["final"] == reference["final"] and resumed["best"] == reference["best"]
    epochs = [r["epoch"] for r in records.load_metrics(tmp_path / "cut")]
    assert epochs == [1, 2, 3]


def test_nan_loss_stops_the_run_as_diverged(tmp_path):
    cfg = config("vanilla", epochs=2)
    cfg.optim.lr = 1e30
    summary = train_run(cfg, tmp_path, progress_bar=False)
    assert summary["status"] == "diverged"
    assert summary["divergence"]["terms"] == ["ce"] and summary["divergence"]["epoch"] == 1
    assert json.loads((tmp_path / runs.SUMMARY).read_text())["status"] == "diverged"


def test_compiled_training_matches_eager(tmp_path):
    """compute.compile=true: the torch.compile'd step trains to the same losses as eager (up to float
    reordering) and the summary says it was compiled."""
    eager = config("vanilla", epochs=1)
    compiled = config("vanilla", epochs=1)
    compiled.compute.compile = True
    for cfg in (eager, compiled):  # digits' 1,437 training images in 3 equal batches: one shape, one compilation
        cfg.data.batch_size = 479
    a = train_run(eager, tmp_path / "eager", progress_bar=False)
    b = train_run(compiled, tmp_path / "compiled", progress_bar=False)
    assert b["status"] == "done" and b["compile"] is True and a["compile"] is False
    loss_a = json.loads((tmp_path / "eager" / runs.METRICS).read_text().splitlines()[0])["loss"]
    loss_b = json.loads((tmp_path / "compiled" / runs.METRICS).read_text().splitlines()[0])["loss"]
    assert loss_b["total"] == pytest.approx(loss_a["total"], rel=1e-3)
