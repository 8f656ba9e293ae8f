"""Big teaches small: `--backbones STUDENT+PARTNER`, two-stage KD with the teacher trained in the same sweep,
DML/KDCL between networks of different sizes, and SwitOKD."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from backbones import network_factory
from bench.cli import main
from bench.config import OptimConfig
from bench.store import records, runs
from bench.train.compute import build_optimizer, optimisation_step
from methods import Progress, build_method
from tests.slurm_helpers import require_slurm

ROOT = Path(__file__).resolve().parents[1]
GRID = ["--datasets", "digits", "--seeds", "0", "--epochs", "1", "--no-progress", "data.batch_size=256"]
PAIR = "cifar_resnet8+cifar_resnet32"


def factory(partners=("cifar_resnet32",)):
    return network_factory("cifar_resnet8", list(partners), 10, 8)


def batch(n: int = 6):
    torch.manual_seed(3)
    return torch.randn(n, 3, 8, 8), torch.arange(n) % 10


# ---------------------------------------------------------------------------------------------
# losses and gradients by hand


def test_kd_loss_with_a_frozen_teacher_by_hand():
    torch.manual_seed(0)
    kd = build_method("kd", factory(), 10, {})
    x, y = batch()
    kd.train()
    assert not kd.teacher.training and all(not p.requires_grad for p in kd.teacher.parameters())
    bn_before = {k: v.clone() for k, v in kd.teacher.state_dict().items()}
    terms = kd.losses([x], y, Progress(0.0, 0))
    with torch.no_grad():
        z_s, z_t = kd.student(x), kd.teacher(x)
    p_t, log_p_s = F.softmax(z_t / 3, 1), F.log_softmax(z_s / 3, 1)
    hand_kd = 9 * (p_t * (p_t.log() - log_p_s)).sum(1).mean()  # T^2 KL(p_t || p_s), alpha = 1
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(z_s, y).item(), rel=1e-5)
    assert terms["kd"].item() == pytest.approx(hand_kd.item(), rel=1e-4)
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in kd.student.parameters())
    assert all(p.grad is None for p in kd.teacher.parameters())
    assert all(torch.equal(bn_before[k], v) for k, v in kd.teacher.state_dict().items())  # eval mode: BN frozen


@pytest.mark.parametrize("method", ["dml", "kdcl"])
def test_heterogeneous_networks_and_which_parameters_get_gradient(method):
    from methods.losses import kd_loss

    torch.manual_seed(0)
    m = build_method(method, factory(), 10, {"num_networks": 2})
    small, large = (sum(p.numel() for p in net.parameters()) for net in m.nets)
    assert small < large  # network 1 is the ResNet-32 partner
    x, y = batch()
    terms = m.train().losses([x] * m.views, y, Progress(100.0, 0))
    sum(terms.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for net in m.nets for p in net.parameters()
               if p.dim() > 1)
    if method == "dml":
        z0, z1 = m.nets[0](x), m.nets[1](x)
        hand = kd_loss(z0, z1.detach(), 1.0) + kd_loss(z1, z0.detach(), 1.0)
        assert terms["kl"].item() == pytest.approx(hand.item(), rel=1e-4)


def test_switokd_mode_decision_on_constructed_logits():
    from methods.switokd import switch_state

    def by_hand(p_s, p_t, y):
        onehot = F.one_hot(y, p_s.shape[1]).float()
        d_s, d_t = (p_s - onehot).abs().sum(1).mean(), (p_t - onehot).abs().sum(1).mean()
        gap = (p_t - p_s).abs().sum(1).mean()
        delta = d_s - torch.exp(-d_t / (d_t + d_s)) * d_t
        return bool(gap > delta and d_t < d_s), d_s, d_t, gap

    y = torch.tensor([0])
    # expert mode: the teacher is closer to the label (d_t 0.8 < d_s 1.2) and the two disagree more than
    # delta = d_s - exp(-d_t / (d_t + d_s)) d_t = 0.664 (G = 1.2)
    p_t, p_s = torch.tensor([[0.6, 0.4, 1e-9]]), torch.tensor([[0.4, 1e-9, 0.6]])
    # learning mode: both right, the teacher surer (G = 2 (p_t0 - p_s0) < delta whenever eps < 1)
    q_t, q_s = torch.tensor([[0.9, 0.05, 0.05]]), torch.tensor([[0.5, 0.25, 0.25]])
    for (ps, pt), expected in (((p_s, p_t), True), ((q_s, q_t), False)):
        expert, d_s, d_t, gap = switch_state(ps.log(), pt.log(), y)
        hand = by_hand(ps / ps.sum(1, keepdim=True), pt / pt.sum(1, keepdim=True), y)
        assert bool(expert) is expected is hand[0]
        assert (d_s.item(), d_t.item(), gap.item()) == pytest.approx(tuple(v.item() for v in hand[1:]), rel=1e-5)


def test_switokd_expert_mode_leaves_the_teachers_weights_and_momentum_untouched(monkeypatch):
    import methods.switokd as switokd

    torch.manual_seed(0)
    method = build_method("switokd", factory(), 10, {})
    optimizer = build_optimizer(method.param_groups(), OptimConfig(), "foreach")
    x, y = batch()

    def step():
        return optimisation_step(method.train(), optimizer, contextlib.nullcontext, [x], y, Progress(1.0, 0))

    for _ in range(2):  # learning mode first: both networks step, the teacher gets momentum buffers
        monkeypatch.setattr(switokd, "switch_state", lambda *a: (torch.tensor(False), 0, 0, 0))
        step()
    teacher, student = method.nets[1], method.nets[0]
    weights = {k: v.clone() for k, v in teacher.named_parameters()}
    momentum = {k: optimizer.state[p]["momentum_buffer"].clone() for k, p in teacher.named_parameters()}
    running = {k: v.clone() for k, v in teacher.named_buffers() if "running_mean" in k}
    student_before = {k: v.clone() for k, v in student.named_parameters()}
    monkeypatch.setattr(switokd, "switch_state", lambda *a: (torch.tensor(True), 0, 0, 0))
    terms, _ = step()
    assert method.step_stats() == {"expert_share": 1.0} and terms["ce_teacher"].item() == 0.0
    assert all(torch.equal(weights[k], v) for k, v in teacher.named_parameters())
    assert all(torch.equal(momentum[k], optimizer.state[p]["momentum_buffer"]) for k, p in teacher.named_parameters())
    assert any(not torch.equal(running[k], v) for k, v in teacher.named_buffers() if k in running)  # BN moved
    assert any(not torch.equal(student_before[k], v) for k, v in student.named_parameters())


# ---------------------------------------------------------------------------------------------
# the grid: teacher once, students after it, export of the students


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("bigsmall") / "R"
    assert main(["run", "--methods", "vanilla,kd,dml,switokd,pcl", "--backbones", PAIR, *GRID, "--out", str(out),
                 "--launcher", "inline"]) == 0
    return out


def test_the_teacher_trains_once_then_the_students_and_one_table_labels_them(sweep, capsys):
    teacher = runs.run_dir(sweep, "digits", "cifar_resnet32", "vanilla", 0)
    students = {m: runs.run_dir(sweep, "digits", PAIR, m, 0) for m in ("kd", "dml", "switokd")}
    plain = {m: runs.run_dir(sweep, "digits", "cifar_resnet8", m, 0) for m in ("vanilla", "pcl")}
    for folder in (teacher, *students.values(), *plain.values()):
        assert json.loads((folder / runs.SUMMARY).read_text())["status"] == "done", folder
    assert not (sweep / "digits" / PAIR / "vanilla").exists()  # no partner: the plain student run, trained once
    started = {m: json.loads((f / runs.SUMMARY).read_text()) for m, f in students.items()}
    assert started["kd"]["partners"] == ["cifar_resnet32"] and started["kd"]["backbone"] == "cifar_resnet8"
    assert (teacher / "best.safetensors").is_file()
    assert main(["table", str(sweep)]) == 0
    table = capsys.readouterr().out
    for label in ("| Vanilla |", "| KD (T: ResNet-32) |", "| DML (with ResNet-32) |", "| SwitOKD (T: ResNet-32) |",
                  "| PCL |"):
        assert label in table, label
    switch = records.load_metrics(students["switokd"])[-1]["stats"]["expert_share"]
    assert 0.0 <= switch <= 1.0


@pytest.mark.parametrize("method", ["kd", "dml", "switokd"])
def test_each_student_exports_as_a_plain_student_network_reproducing_its_error(sweep, method, tmp_path):
    from tests.conftest import exported_top1_error

    folder = runs.run_dir(sweep, "digits", PAIR, method, 0)
    out = tmp_path / "student.safetensors"
    assert main(["export", str(folder), "--out", str(out)]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["backbone"] == "cifar_resnet8"
    assert exported_top1_error(out, folder) == pytest.approx(meta["top1_error"])


def test_a_killed_teacher_and_a_killed_student_resume(tmp_path):
    from bench.cli.grid import build_sweep
    from bench.cli.parser import make_parser
    from bench.sweep.grid import expand, resolve_variants
    from tests.conftest import train_until_interrupted

    argv = ["run", "--methods", "kd", "--backbones", PAIR, "--datasets", "digits", "--seeds", "0", "--epochs", "2",
            "--no-progress", "--launcher", "inline", "--out", str(tmp_path / "R"), "data.batch_size=256"]
    sweep = build_sweep(make_parser().parse_args(argv))[0]
    teacher, student = expand(sweep, resolve_variants(sweep))
    assert student.depends_on == (teacher.folder,)
    train_until_interrupted(teacher.config, teacher.folder, epoch=1)
    assert main(argv) == 0  # the teacher resumes, then the student trains
    assert json.loads((teacher.folder / runs.SUMMARY).read_text())["resumes"][0]["epoch"] == 1
    finished = json.loads((student.folder / runs.SUMMARY).read_text())
    runs.reset_run_folder(student.folder)
    train_until_interrupted(student.config, student.folder, epoch=1)
    assert main(argv) == 0
    resumed = json.loads((student.folder / runs.SUMMARY).read_text())
    assert resumed["resumes"][0]["epoch"] == 1 and resumed["final"] == finished["final"]


def test_a_failed_teacher_leaves_its_student_not_started(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OKD_BENCH_FAIL_METHODS", "vanilla")
    out = tmp_path / "R"
    assert main(["run", "--methods", "kd", "--backbones", PAIR, *GRID, "--out", str(out), "--launcher", "local"]) == 1
    err = capsys.readouterr().err
    assert (f"digits/{PAIR}/kd/seed0: not started, its teacher digits/cifar_resnet32/vanilla/seed0 is failed"
            in err), err
    assert not (runs.run_dir(out, "digits", PAIR, "kd", 0) / runs.CHECKPOINT).exists()
    assert main(["status", str(out)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "/kd/" in x)
    assert "blocked" in line and "its teacher digits/cifar_resnet32/vanilla/seed0 is failed" in line


@pytest.mark.parametrize("argv, expected", [
    (["--backbones", "cifar_resnet8+cifar_resnet3", "--methods", "dml"], "did you mean 'cifar_resnet32'"),
    (["--backbones", "cifar_resnt8+cifar_resnet32", "--methods", "dml"], "did you mean 'cifar_resnet8'"),
    (["--backbones", "cifar_resnet32+", "--methods", "dml"], "has an empty side"),
    (["--backbones", "cifar_resnet8+cifar_resnet32+cifar_resnet8", "--methods", "kd"], "kd takes at most 1 partner"),
    (["--backbones", "cifar_resnet8", "--methods", "kd"], "kd needs 1 partner network: give --backbones STUDENT+T"),
    (["--backbones", PAIR, "--methods", "dml", "dml.num_networks=3"], "num_networks=3, but the backbone entry names 2"),
    (["--backbones", PAIR, "--methods", "kd", "kd.teacher_weights=/nonexistent.safetensors"], "is not a file"),
])
def test_bad_big_small_input_is_one_line_and_writes_nothing(argv, expected, tmp_path, capsys):
    out = tmp_path / "R"
    assert main(["run", "--datasets", "digits", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not out.exists()


def test_teacher_weights_that_do_not_fit_name_the_key_and_both_shapes(tmp_path, capsys):
    import safetensors.torch

    from backbones import create_backbone

    wrong = tmp_path / "resnet8.safetensors"  # a ResNet-8 where a ResNet-32 teacher belongs
    safetensors.torch.save_file(create_backbone("cifar_resnet8", 10, 8).state_dict(), wrong)
    out = tmp_path / "R"
    assert main(["run", "--datasets", "digits", "--out", str(out), "--methods", "kd", "--backbones",
                 "cifar_resnet8+cifar_wrn_20_8", f"kd.teacher_weights={wrong}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kd.teacher_weights" in err and "of shape" in err, err
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# the real local SLURM cluster: students wait on their teachers


def _sacct_times(job_id: str) -> tuple[str, str]:
    done = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "Start,End", "-j", job_id], capture_output=True,
                          text=True, timeout=20)
    start, end = done.stdout.strip().splitlines()[0].split("|")
    return start, end


@pytest.mark.slurm
def test_on_slurm_the_student_job_starts_after_its_teacher_and_not_when_it_failed(tmp_path):
    require_slurm()
    profile = ROOT / "slurm" / "local.yaml"
    for fail in (False, True):
        out = tmp_path / ("failed" if fail else "ok")
        env = {**__import__("os").environ, **({"OKD_BENCH_FAIL_METHODS": "vanilla"} if fail else {})}
        proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--launcher", "slurm", "--cluster",
                               str(profile), "--methods", "kd", "--backbones", PAIR, *GRID, "--out", str(out)],
                              capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
        manifest = json.loads((out / "sweep.json").read_text())["runs"]
        teacher_job = manifest["digits/cifar_resnet32/vanilla/seed0"]["job_id"]
        student_job = manifest[f"digits/{PAIR}/kd/seed0"]["job_id"]
        if not fail:
            assert proc.returncode == 0, proc.stderr[-2000:]
            assert "1 jobs that wait on their teachers (afterok)" in proc.stdout
            deadline = time.time() + 60
            while "Unknown" in "".join(_sacct_times(student_job)) and time.time() < deadline:
                time.sleep(1)
            teacher_end, (student_start, _) = _sacct_times(teacher_job)[1], _sacct_times(student_job)
            assert student_start >= teacher_end, (teacher_end, student_start)  # ISO times compare as text
        else:
            assert proc.returncode == 1
            assert "not started, its teacher digits/cifar_resnet32/vanilla/seed0 is failed" in proc.stderr
            assert not (runs.run_dir(out, "digits", PAIR, "kd", 0) / runs.CONFIG).exists()


def test_the_big_small_preset_is_one_comparison_table():
    from bench.cli.grid import build_sweep
    from bench.cli.parser import make_parser
    from bench.sweep.grid import expand, resolve_variants

    sweep = build_sweep(make_parser().parse_args(["run", "--preset", "big-small", "--seeds", "0"]))[0]
    specs = expand(sweep, resolve_variants(sweep))
    folders = {s.folder.relative_to(sweep.out).as_posix().rsplit("/", 1)[0] for s in specs}
    assert folders == {"cifar100/cifar_resnet32/vanilla", "cifar100/cifar_resnet32/pcl", "cifar100/cifar_resnet32/one",
                       "cifar100/cifar_resnet32/okddip", "cifar100/cifar_resnet110/vanilla",
                       "cifar100/cifar_wrn_20_8/vanilla",
                       *(f"cifar100/cifar_resnet32+{p}/{m}" for p in ("cifar_resnet110", "cifar_wrn_20_8")
                         for m in ("kd", "dml", "kdcl", "switokd"))}


def test_kd_takes_its_teacher_at_its_best_epoch_when_asked_and_says_so(sweep, capsys):
    import safetensors.torch

    assert main(["run", "--methods", "kd[teacher_epoch=best]", "--backbones", PAIR, *GRID, "--out", str(sweep),
                 "--launcher", "inline"]) == 0
    assert "T: ResNet-32, best epoch)" in capsys.readouterr().out
    folder = runs.run_dir(sweep, "digits", PAIR, "kd+teacher_epoch=best", 0)
    teacher = torch.load(folder / runs.CHECKPOINT, weights_only=True)["method"]
    best = safetensors.torch.load_file(runs.run_dir(sweep, "digits", "cifar_resnet32", "vanilla", 0)
                                       / "best.safetensors")
    assert all(torch.equal(teacher[f"teacher.{k}"], v) for k, v in best.items())
