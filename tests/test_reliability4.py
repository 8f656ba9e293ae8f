"""Reliability, round four (issue 30): declared option ranges, the command line as written, paths, failures of the
machine, recipes against the images, warm-up and divergence, and the newcomer's stumbles."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from bench.cli import main
from bench.cli.grid import build_sweep
from bench.cli.parser import make_parser, parse_command_line
from bench.config import SweepConfig, from_dict
from bench.errors import UsageError
from bench.ranges import check_options, declared
from bench.store import runs
from bench.sweep.grid import resolve_variants
from bench.sweep.settings import load_preset
from methods import METHODS

GRID = ["--datasets", "digits", "--backbones", "cifar_resnet8", "--seeds", "0", "--no-progress", "--launcher",
        "inline"]


def refused(tmp_path, capsys, *args: str) -> str:
    """`bench run ARGS` exits 2 with one line and writes nothing; returns the line."""
    out = tmp_path / "never"
    assert main(["run", "--out", str(out), *GRID, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists()
    return err


# ---------------------------------------------------------------------------------------------
# 1. declared ranges, registry-wide


def numeric_fields():
    for name in METHODS.names():
        cls = METHODS.get(name).Options
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            item = (typing.get_args(tp) or (None,))[0] if typing.get_origin(tp) is list else tp
            if item in (int, float) or f.metadata.get("choices") is not None:
                yield name, f, item


FIELDS = list(numeric_fields())


def test_every_numeric_or_choice_option_of_every_method_declares_its_range():
    assert len(FIELDS) > 40
    undeclared = [f"{m}.{f.name}" for m, f, _ in FIELDS if not declared(f.metadata)]
    assert not undeclared, undeclared


def _resolve(method: str, option: str, value) -> None:
    sweep = from_dict(SweepConfig, load_preset("demo"))
    sweep.methods, sweep.options = [method], {method: {option: value}}
    resolve_variants(sweep)


@pytest.mark.parametrize("method,field,item", FIELDS, ids=[f"{m}.{f.name}" for m, f, _ in FIELDS])
def test_each_option_is_refused_just_outside_its_range_and_accepted_at_its_bounds(method, field, item):
    meta = field.metadata
    list_option = field.default is dataclasses.MISSING  # lr_scales: every item in the range

    def value(v):
        return [v, v] if list_option else v

    if meta.get("choices") is not None:
        for choice in meta["choices"]:
            _resolve(method, field.name, value(choice))
        with pytest.raises(UsageError, match=f"{method}.{field.name} must be one of"):
            _resolve(method, field.name, value(f"{meta['choices'][0]}x"))
        return
    step = 1 if item is int else 1e-6
    for key, outside, inside in (("ge", -step, 0), ("gt", 0, step), ("le", step, 0), ("lt", 0, -step)):
        bound = meta.get(key)
        if bound is None:
            continue
        _resolve(method, field.name, value(bound + inside))
        with pytest.raises(UsageError, match=rf"{method}\.{field.name} must be .*, got"):
            _resolve(method, field.name, value(bound + outside))


def test_a_plug_in_that_declares_nothing_keeps_working_and_nan_is_still_refused():
    @dataclasses.dataclass
    class Plain:
        weight: float = 1.0
        name: str = "x"

    check_options(Plain(-5.0, "anything"), "myplugin")
    with pytest.raises(UsageError, match="myplugin.weight must be a finite number"):
        check_options(Plain(float("nan")), "myplugin")


@pytest.mark.parametrize("args,message", [
    (["--methods", "pcl", "pcl.temperature=-1"], "pcl.temperature must be above 0, got -1"),
    (["--methods", "pcl", "pcl.temperature=0"], "pcl.temperature must be above 0, got 0"),
    (["--methods", "pcl[temperature=-1]"], "pcl.temperature must be above 0, got -1"),
    (["--methods", "pcl", "pcl.temperature=2,-1"], "pcl.temperature must be above 0, got -1"),
    (["--methods", "pcl", "pcl.ema_decay=2"], "pcl.ema_decay must be from 0 to 1, got 2"),
    (["--methods", "one", "one.temperature=-3"], "one.temperature must be above 0, got -3"),
    (["--methods", "cl", "cl.beta=-1"], "cl.beta must be at least 0, got -1"),
    (["--methods", "kdcl", "kdcl.kd_weight=-1"], "kdcl.kd_weight must be at least 0, got -1"),
    (["--methods", "mcl", "mcl.vcl_weight=-1"], "mcl.vcl_weight must be at least 0, got -1"),
    (["--methods", "dml", "dml.lr_scales=[1,-0.1,1]"], "dml.lr_scales must be above 0, got -0.1"),
    (["--methods", "okdph", "okdph.hybrid=dirichlett"], "did you mean 'dirichlet'"),
])
def test_the_issue_s_nonsense_options_are_refused_before_any_run(tmp_path, capsys, args, message):
    assert message in refused(tmp_path, capsys, *args)


# ---------------------------------------------------------------------------------------------
# 5-7. the command line as written


def test_no_subcommand_takes_an_abbreviated_long_flag(capsys):
    parser = make_parser()
    sub = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    tried = 0
    for name, command in sub.choices.items():
        flags = command.flags()
        for flag in flags:
            short = flag[:-1]
            if len(short) < 4 or short in flags or flag in ("--help",):
                continue
            with pytest.raises(UsageError, match=f"unrecognized argument '{short}'; did you mean"):
                parse_command_line(parser, [name, short, "1"] if name != "export" else [name, "r", short, "1"])
            tried += 1
    assert tried > 30
    assert main(["run", "--epoch", "3"]) == 2
    assert "unrecognized argument '--epoch'; did you mean '--epochs'?" in capsys.readouterr().err


def test_overrides_are_read_wherever_they_stand_among_the_options():
    args = parse_command_line(make_parser(), ["run", "--methods", "vanilla", "optim.lr=0.05", "--datasets", "digits",
                                              "compute.threads=1", "--seeds", "0", "data.batch_size=32"])
    sweep, _ = build_sweep(args)
    assert (sweep.optim.lr, sweep.compute.threads, sweep.data.batch_size, sweep.seeds) == (0.05, 1, 32, [0])
    with pytest.raises(UsageError, match="unrecognized argument 'stray'"):
        parse_command_line(make_parser(), ["run", "--methods", "vanilla", "optim.lr=0.05", "--datasets", "d", "stray"])
    with pytest.raises(UsageError, match="unrecognized argument 'optim.lr=1'"):
        parse_command_line(make_parser(), ["status", "results", "optim.lr=1"])


# ---------------------------------------------------------------------------------------------
# 2-3. paths


def test_a_name_too_long_a_dangling_symlink_and_a_loop_are_one_line_each(tmp_path, capsys):
    parent = tmp_path / "parent"
    long_name = parent / ("a" * 300)
    assert main(["run", "--out", str(long_name), *GRID, "--methods", "vanilla"]) == 2
    err = capsys.readouterr().err
    assert "is 300 bytes, longer than this file system allows" in err and err.count("\n") == 1
    assert not parent.exists()  # no empty parent folder left behind
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    for out, words in ((tmp_path / "dangling", "which does not exist"), (tmp_path / "dangling" / "sub", "which does "
                       "not exist"), (tmp_path / "loop_a" / "sub", "is a symlink loop")):
        assert main(["run", "--out", str(out), *GRID, "--methods", "vanilla"]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err
    assert not (tmp_path / "nowhere").exists()
    assert main(["table", "--csv", str(tmp_path / "dangling" / "x.csv"), str(tmp_path)]) == 2
    assert "which does not exist" in capsys.readouterr().err


def test_a_variant_whose_folder_name_is_too_long_is_refused(tmp_path, capsys):
    err = refused(tmp_path, capsys, "--methods", "pcl[branch_point=" + "x" * 260 + "]")
    assert "longer than this file system allows" in err


# ---------------------------------------------------------------------------------------------
# 4. failures of the machine are retried, failures of the method are not


def test_a_run_that_ran_out_of_disk_resumes_on_a_plain_run_to_the_uninterrupted_result(tmp_path, capsys,
                                                                                        monkeypatch):
    args = [*GRID, "--methods", "vanilla", "--epochs", "3"]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert main(["run", "--out", str(whole), *args]) == 0
    monkeypatch.setenv("OKD_BENCH_NO_SPACE_AT_EPOCH", "2")
    assert main(["run", "--out", str(broken), *args]) == 1
    folder = broken / "digits" / "cifar_resnet8" / "vanilla" / "seed0"
    summary = json.loads((folder / runs.SUMMARY).read_text())
    assert summary["status"] == "failed" and summary["failure"] == "machine" and summary["epochs_done"] == 2
    monkeypatch.delenv("OKD_BENCH_NO_SPACE_AT_EPOCH")
    capsys.readouterr()
    assert main(["run", "--out", str(broken), *args]) == 0  # space is back: no --retry-failed needed
    out = capsys.readouterr().out
    assert "1 to run" in out and "failed because of the machine" in out
    done = json.loads((folder / runs.SUMMARY).read_text())
    reference = json.loads((whole / "digits" / "cifar_resnet8" / "vanilla" / "seed0" / runs.SUMMARY).read_text())
    assert done["status"] == "done" and done["final"] == reference["final"]


def test_a_failure_of_the_method_needs_retry_failed_and_the_line_says_so(tmp_path, capsys, monkeypatch):
    args = ["run", "--out", str(tmp_path / "s"), *GRID, "--methods", "vanilla", "--epochs", "1"]
    monkeypatch.setenv("OKD_BENCH_FAIL_METHODS", "vanilla")
    assert main(args) == 1
    monkeypatch.delenv("OKD_BENCH_FAIL_METHODS")
    summary = json.loads((tmp_path / "s" / "digits" / "cifar_resnet8" / "vanilla" / "seed0" / runs.SUMMARY)
                         .read_text())
    assert summary["failure"] == "method"
    capsys.readouterr()
    assert main(args) == 0
    assert "0 to run (1 failed: skipped; --retry-failed reruns failed runs)" in capsys.readouterr().out


def test_failure_kinds_of_real_errors_and_of_old_summaries(tmp_path):
    import errno

    from bench.files import storage_error
    from bench.store.records import failed_by_machine, failure_kind

    full = storage_error(OSError(errno.ENOSPC, "No space left on device"), tmp_path / "last.pt")
    assert failure_kind(full) == "machine" and failure_kind(PermissionError(errno.EACCES, "denied")) == "machine"
    assert failure_kind(MemoryError()) == "machine" and failure_kind(RuntimeError("shape mismatch")) == "method"
    try:
        try:
            raise OSError(errno.EROFS, "Read-only file system")
        except OSError as inner:
            raise RuntimeError("checkpoint write failed") from inner
    except RuntimeError as wrapped:
        assert failure_kind(wrapped) == "machine"
    old = {"status": "failed", "error": "StorageError: no space left on /x (writing last.pt)"}
    assert failed_by_machine(old) and not failed_by_machine({"status": "failed", "error": "ValueError: bad"})
    assert not failed_by_machine({"status": "diverged", "error": "no space left"})


# ---------------------------------------------------------------------------------------------
# 8. recipes against the images


@pytest.mark.parametrize("recipe,message", [
    ("cutout:1000", "the cutout side must be from 1 to the image side (8 px), got 1000"),
    ("rotate:15:3", "rotate:15:3 gives 2 numbers; rotate takes one (rotate:D, degrees)"),
    ("randaugment:2:9:1", "randaugment takes at most two"),
    ("rotate:400", "rotate takes at most 180 degrees"),
])
def test_recipe_parameters_are_checked_against_the_images_and_their_count(tmp_path, capsys, recipe, message):
    assert message in refused(tmp_path, capsys, "--methods", "vanilla", f"data.view_augment=[{recipe}]")


# ---------------------------------------------------------------------------------------------
# 9. the smaller ones


def test_a_pickle_that_needs_code_as_teacher_weights_is_one_line_without_torch_s_warnings(tmp_path, capfd):
    import pickle

    bad = tmp_path / "teacher.pt"
    bad.write_bytes(pickle.dumps({"weights": ValueError("an object, not a tensor")}))  # a plain (non-zip) pickle
    code = main(["run", "--out", str(tmp_path / "o"), *GRID, "--methods", "kd",
                 "--backbones", "cifar_resnet8+cifar_resnet8", f"kd.teacher_weights={bad}"])
    err = capfd.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Warning" not in err and "PyTorch 2.6" not in err, err
    assert "holds objects other than tensors" in err and "torch.save(model.state_dict()" in err


def test_status_of_a_run_whose_config_is_not_utf8_is_corrupt_and_shows_no_other_model_s_error(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["run", "--out", str(out), *GRID, "--methods", "pcl", "--epochs", "1"]) == 0
    folder = out / "digits" / "cifar_resnet8" / "pcl" / "seed0"
    (folder / runs.SUMMARY).unlink()  # a run not finished, whose config was damaged
    (folder / runs.CONFIG).write_bytes(b"\xff\xfe epochs: 12\n")
    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("digits/"))
    assert " corrupt " in line and "config.yaml: not UTF-8" in line
    assert line.split()[3] == "-"  # no top-1 error: the headline is unknown, never the ensemble's shown instead


def test_a_preset_made_for_other_data_says_so_before_the_sweep(tmp_path, capsys):
    assert main(["run", "--preset", "imagenet", "--out", str(tmp_path / "o"), *GRID, "--methods", "vanilla",
                 "--epochs", "1"]) == 0
    err = capsys.readouterr().err
    assert "note: preset 'imagenet' is made for imagenet (90 epochs, batch 256" in err and "on digits as asked" in err


# ---------------------------------------------------------------------------------------------
# 10. warm-up and divergence


def test_the_warm_up_by_hand_per_step_composing_with_the_schedule(tmp_path):
    from bench.sweep.settings import run_config
    from bench.train.schedule import lr_at, warmup_factor
    from bench.train.trainer import Trainer

    sweep = from_dict(SweepConfig, load_preset("demo"))
    sweep.epochs, sweep.optim.warmup_fraction = 10, 0.2  # 2 epochs of warm-up, scaling with the run
    cfg = run_config(sweep, "vanilla", "cifar_resnet8", "digits", 0, {})
    assert cfg.optim.warmup_epochs == 2.0
    assert warmup_factor(cfg, 0.0) == pytest.approx(0.01) and warmup_factor(cfg, 1.0) == pytest.approx(0.505)
    assert warmup_factor(cfg, 2.0) == 1.0 and warmup_factor(cfg, 7.0) == 1.0
    trainer = Trainer(cfg, tmp_path / "run", progress_bar=False)
    trainer.setup()
    seen = []
    step = trainer.step_fn

    def spy(views, target, progress):
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        return step(views, target, progress)

    trainer.step_fn = spy
    trainer.train_epoch(0, None)
    steps = len(seen)
    assert seen == pytest.approx([lr_at(cfg, 0) * (0.01 + 0.99 * i / steps / 2) for i in range(steps)])


def test_a_diverged_run_names_its_likely_remedy(tmp_path):
    from bench.sweep.settings import run_config
    from bench.train.trainer import train_run

    sweep = from_dict(SweepConfig, load_preset("demo"))
    sweep.epochs, sweep.optim.lr = 2, 1e30
    summary = train_run(run_config(sweep, "vanilla", "cifar_resnet8", "digits", 0, {}), tmp_path, progress_bar=False)
    message = summary["divergence"]["message"]
    assert summary["status"] == "diverged" and "optim.warmup_epochs=1" in message and "optim.lr=5e+29" in message


# ---------------------------------------------------------------------------------------------
# 11. what a newcomer stumbled on


def test_the_sweep_eta_counts_runs_not_yet_started():
    from bench.results.status import estimate

    records = [{"run": "d/b/vanilla/seed0", "state": "done", "epoch": 10, "epochs": 10, "epoch_s": 2.0},
               {"run": "d/b/vanilla/seed1", "state": "running", "epoch": 5, "epochs": 10, "epoch_s": 2.0},
               {"run": "d/b/vanilla/seed2", "state": "missing", "epoch": 0, "epochs": None, "epoch_s": None}]
    eta, at_once = estimate(records)
    assert at_once == 1 and eta == pytest.approx(5 * 2.0 + 10 * 2.0)  # the missing run borrows the cell's epoch time


def test_help_names_every_preset(capsys):
    from bench.sweep.settings import preset_names

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text.replace("- ", "-") for name in preset_names()) and len(preset_names()) >= 7


def test_few_classes_have_no_top5_cpu_runs_no_gpu_hours_and_one_seed_no_spread(tmp_path, capsys):
    from bench.results.aggregate import TableSpec, cost_markdown, cost_table, load_runs, render

    out = tmp_path / "s"
    (tmp_path / "img" / "train").mkdir(parents=True)
    from PIL import Image

    for split in ("train", "val"):
        for c in range(3):
            (tmp_path / "img" / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            for i in range(6):
                Image.new("RGB", (16, 16), (80 * c, 10 * i, 0)).save(tmp_path / "img" / split / f"c{c}" / f"{i}.png")
    assert main(["run", "--out", str(out), "--datasets", f"three=imagefolder:{tmp_path / 'img'}", "--backbones",
                 "cifar_resnet8", "--seeds", "0", "--no-progress", "--launcher", "inline", "--methods", "vanilla",
                 "--epochs", "1", "--preset", "demo", "data.batch_size=8"]) == 0
    summary = json.loads((out / "three" / "cifar_resnet8" / "vanilla" / "seed0" / runs.SUMMARY).read_text())
    assert summary["num_classes"] == 3 and summary["final"]["net"]["top5_error"] is None
    collection = load_runs([out])
    table = render(collection, TableSpec(), "md")
    assert "± 0.00" not in table and "±" not in table.split("| three")[0].join(table.split("\n")[4:5])
    costs = cost_markdown(cost_table(collection))
    row = next(x for x in costs.splitlines() if "| three |" in x)
    assert row.split("|")[6].strip() == "–"  # GPU-hours of a CPU run
    capsys.readouterr()
    assert main(["table", str(out), "--metric", "top5"]) == 1
    assert "has top5" in capsys.readouterr().err


def test_curve_plots_of_five_epochs_tick_whole_epochs(tmp_path, monkeypatch):
    from bench.results import plots
    from bench.results.aggregate import load_runs

    out = tmp_path / "s"
    assert main(["run", "--out", str(out), *GRID, "--methods", "vanilla", "--epochs", "5"]) == 0
    ticks = []

    def keep(fig, folder, stem):
        ax = fig.axes[0]
        lo, hi = ax.get_xlim()
        ticks.extend(float(x) for x in ax.get_xticks() if lo <= x <= hi)
        return []

    monkeypatch.setattr(plots, "_save", keep)
    plots.plot_curves(load_runs([out]), tmp_path / "plots")
    assert ticks and all(x.is_integer() for x in ticks), ticks


def test_the_report_s_tables_scroll_instead_of_being_cut(tmp_path):
    from bench.results.report import STYLE

    rule = STYLE.split("table {")[1].split("}")[0]
    assert "overflow-x: auto" in rule and "display: block" in rule
