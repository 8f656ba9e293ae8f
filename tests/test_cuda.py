"""Every CUDA path, checked on a GPU in one command: `pytest -m cuda` (skipped where there is no CUDA).

bf16 autocast against fp32 (the references train in fp32), fused SGD against foreach, the device data pipeline
against the CPU one, batched PCL views against per-view calls, CUDA graphs and torch.compile against eager,
resume on CUDA against an uninterrupted run, branches on concurrent streams against one stream, DDP over NCCL
(needs two GPUs)."""

from __future__ import annotations

import json
import statistics

import pytest
import timm
import torch

from bench.config import SweepConfig, from_dict
from bench.store import records, runs
from bench.sweep.settings import load_preset, run_config
from bench.train.trainer import train_run
from methods import build_method
from methods.base import Progress
from tests.conftest import train_until_interrupted

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")


def config(method: str = "vanilla", epochs: int = 3, seed: int = 0, **compute):
    sweep = from_dict(SweepConfig, load_preset("demo"))
    sweep.epochs = epochs
    cfg = run_config(sweep, method, "cifar_resnet8", "digits", seed, {})
    cfg.compute.device = "cuda"
    cfg.compute.cudnn_benchmark = "off"  # the same algorithms in every process: exact comparisons
    for key, value in compute.items():
        setattr(cfg.compute, key, value)
    return cfg


def losses(folder) -> list[float]:
    return [r["loss"]["total"] for r in records.load_metrics(folder)]


@pytest.fixture(autouse=True)
def deterministic_kernels():
    """cuDNN's fastest backward kernels add in a non-fixed order; the exact-equality checks need fixed ones."""
    before = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True
    yield
    torch.backends.cudnn.deterministic = before


@pytest.mark.parametrize("method", ["vanilla", "pcl"])
def test_bf16_autocast_agrees_with_fp32_within_seed_noise(method, tmp_path):
    """Same data order, 3 seeds each: the mean final error under bf16 is within the seed noise of fp32's."""
    errors = {}
    for amp in ("off", "bf16"):
        errors[amp] = []
        for seed in (0, 1, 2):
            summary = train_run(config(method, 10, seed, amp=amp), tmp_path / f"{amp}{seed}", progress_bar=False)
            assert summary["amp"] == ("off" if amp == "off" else "bfloat16")
            errors[amp].append(summary["final"][summary["headline_model"]]["top1_error"])
    noise = max(statistics.stdev(errors["off"]), statistics.stdev(errors["bf16"]), 1.0)
    gap = abs(statistics.mean(errors["bf16"]) - statistics.mean(errors["off"]))
    print(f"{method}: fp32 {errors['off']}, bf16 {errors['bf16']}, gap {gap:.2f} (noise {noise:.2f})")
    assert gap <= 2 * noise, errors


def test_fused_sgd_takes_the_foreach_step():
    from bench.config import OptimConfig
    from bench.train.compute import build_optimizer

    torch.manual_seed(0)
    params = {impl: [torch.nn.Parameter(torch.randn(64, 32, device=CUDA)), torch.nn.Parameter(
        torch.randn(32, device=CUDA))] for impl in ("fused", "foreach")}
    params["fused"] = [torch.nn.Parameter(p.detach().clone()) for p in params["foreach"]]
    optims = {impl: build_optimizer(ps, OptimConfig(), impl) for impl, ps in params.items()}
    for _ in range(5):
        grads = [torch.randn_like(p) for p in params["foreach"]]
        for impl, ps in params.items():
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            optims[impl].step()
    for a, b in zip(params["fused"], params["foreach"]):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_device_data_pipeline_gives_the_cpu_batches():
    from bench.data import DATASETS, TensorSplit, TensorTrainLoader

    split = TensorSplit(torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8), torch.arange(300) % 100)
    spec = DATASETS.get("cifar100")
    cpu = TensorTrainLoader(split, spec, 64, 3, seed=7, device=torch.device("cpu"), channels_last=True)
    gpu = TensorTrainLoader(split, spec, 64, 3, seed=7, device=CUDA, channels_last=True)
    for (cv, ct), (gv, gt) in zip(cpu.epoch(4), gpu.epoch(4)):
        assert torch.equal(ct, gt.cpu())
        for a, b in zip(cv, gv):
            assert torch.allclose(a, b.cpu(), atol=1e-6)


def test_batched_pcl_views_equal_per_view_calls():
    torch.manual_seed(0)
    batched = build_method("pcl", lambda: timm.create_model("cifar_resnet32", num_classes=10), 10,
                           {"batch_views": "on"}).to(CUDA)
    plain = build_method("pcl", lambda: timm.create_model("cifar_resnet32", num_classes=10), 10,
                         {"batch_views": "off"}).to(CUDA)
    plain.load_state_dict(batched.state_dict())
    views = [torch.randn(32, 3, 32, 32, device=CUDA) for _ in range(3)]
    target = torch.arange(32, device=CUDA) % 10
    a = batched.losses(views, target, Progress(40, 0))
    b = plain.losses(views, target, Progress(40, 0))
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-5), name
    for (name, x), (_, y) in zip(batched.state_dict().items(), plain.state_dict().items()):
        assert torch.allclose(x.float(), y.float(), rtol=1e-4, atol=1e-5), name


@pytest.mark.parametrize("method", ["vanilla", "one", "okddip", "pcl", "kdcl"])
def test_cuda_graphs_train_like_eager(method, tmp_path):
    """The same run with the step replayed as CUDA graphs and eagerly: losses and errors agree (fp32)."""
    eager = train_run(config(method, 3, amp="off", cuda_graphs="off"), tmp_path / "eager", progress_bar=False)
    graphed = train_run(config(method, 3, amp="off", cuda_graphs="on"), tmp_path / "graphs", progress_bar=False)
    assert graphed["cuda_graphs"] is True and eager["cuda_graphs"] is False
    for a, b in zip(losses(tmp_path / "eager"), losses(tmp_path / "graphs")):
        assert b == pytest.approx(a, rel=1e-4)
    head = eager["headline_model"]
    assert abs(graphed["final"][head]["top1_error"] - eager["final"][head]["top1_error"]) <= 1.0


@pytest.mark.parametrize("method", ["vanilla", "pcl"])
def test_compiled_step_equals_the_eager_step(method):
    """torch.compile'd step vs eager from the same state: the same loss terms and the same parameters after it
    (inductor fuses and reorders float sums, so up to rounding: 1% of a step). Whole runs then drift apart as any
    two float orders do over hundreds of steps; this checks the step itself."""
    from bench.config import OptimConfig
    from bench.train.compute import autocast_context, build_optimizer, optimisation_step

    torch.manual_seed(0)
    eager = build_method(method, lambda: timm.create_model("cifar_resnet8", num_classes=10), 10, {}).to(CUDA)
    twin = build_method(method, lambda: timm.create_model("cifar_resnet8", num_classes=10), 10, {}).to(CUDA)
    twin.load_state_dict(eager.state_dict())
    views = [torch.randn(32, 3, 32, 32, device=CUDA) for _ in range(eager.views)]
    target = torch.arange(32, device=CUDA) % 10
    results = []
    for module, compiled in ((eager, False), (twin, True)):
        opt = build_optimizer([p for p in module.parameters() if p.requires_grad], OptimConfig(), "fused")
        step_module = torch.compile(module) if compiled else module
        terms, _ = optimisation_step(step_module.train(), opt, lambda: autocast_context(CUDA, None), views, target,
                                     Progress(40, 0))
        results.append((terms, [p.detach().clone() for p in module.parameters()]))
    (terms_a, params_a), (terms_b, params_b) = results
    for name in terms_a:
        assert torch.allclose(terms_a[name], terms_b[name], rtol=1e-4, atol=1e-5), name
    for a, b in zip(params_a, params_b):
        assert torch.allclose(a, b, rtol=1e-2, atol=1e-4)


def test_concurrently_runs_each_call_on_its_own_stream_and_joins_back():
    from methods.batching import branch_streams, concurrently

    x = torch.randn(64, 64, device=CUDA)
    calls = [lambda: (torch.cuda.current_stream().cuda_stream, x @ x), lambda: (torch.cuda.current_stream().cuda_stream,
                                                                              x.relu())]
    main_stream = torch.cuda.current_stream().cuda_stream
    with branch_streams(True):
        (s0, a), (s1, b) = concurrently(calls, inputs=x)
    assert len({main_stream, s0, s1}) == 3 and torch.cuda.current_stream().cuda_stream == main_stream
    assert torch.equal(a, x @ x) and torch.equal(b, x.relu())


@pytest.mark.parametrize("method", ["pcl", "dml", "one"])
@pytest.mark.parametrize("graphs", ["off", "on"])
def test_branch_streams_train_exactly_like_one_stream(method, graphs, tmp_path):
    """compute.branch_streams=on runs the same kernels, overlapped: with deterministic kernels the losses and
    errors are those of the one-stream run exactly (a difference would be a missing stream synchronisation)."""
    one = train_run(config(method, 2, cuda_graphs=graphs), tmp_path / "one", progress_bar=False)
    streamed = train_run(config(method, 2, cuda_graphs=graphs, branch_streams="on"), tmp_path / "streams",
                         progress_bar=False)
    assert streamed["branch_streams"] is True and one["branch_streams"] is False
    assert streamed["cuda_graphs"] == (graphs == "on")  # the graph captured the fork and join (no eager fallback)
    assert losses(tmp_path / "streams") == losses(tmp_path / "one")
    assert streamed["final"] == one["final"]


@pytest.mark.parametrize("graphs", ["off", "on"])
def test_resume_on_cuda_reproduces_the_uninterrupted_run(graphs, tmp_path):
    reference = train_run(config("pcl", 3, cuda_graphs=graphs), tmp_path / "ref", progress_bar=False)
    train_until_interrupted(config("pcl", 3, cuda_graphs=graphs), tmp_path / "cut", epoch=2)
    resumed = train_run(config("pcl", 3, cuda_graphs=graphs), tmp_path / "cut", progress_bar=False)
    assert resumed["resumes"] and resumed["final"] == reference["final"] and resumed["best"] == reference["best"]
    assert losses(tmp_path / "cut") == losses(tmp_path / "ref")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs one GPU per rank: two GPUs")
def test_ddp_over_nccl(tmp_path):
    from bench.cli import main

    out = tmp_path / "sweep"
    assert main(["run", "--methods", "pcl", "--datasets", "digits", "--backbones", "cifar_resnet8", "--seeds", "0",
                 "--epochs", "2", "--out", str(out), "--launcher", "local", "--tasks-per-node", "2",
                 "--no-progress"]) == 0
    summary = json.loads(next(out.rglob(runs.SUMMARY)).read_text())
    assert summary["world_size"] == 2 and summary["ranks_in_sync"] is True and summary["device"].startswith("cuda")
