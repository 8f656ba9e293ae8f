"""The broken-tree corpus: every file the tools read back, damaged in every way we know of. `bench table`,
`bench plot` and `bench status` never crash: each bad file is named in a warning, and the good runs still count."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from bench.cli import main
from bench.results.aggregate import load_runs
from bench.results.status import run_states
from bench.store import runs


def _json_edit(change):
    def apply(path: Path) -> None:
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))

    return apply


def _metrics_edit(change):
    def apply(path: Path) -> None:
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        change(lines)
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))

    return apply


def _set(key, value):
    return _json_edit(lambda d: d.__setitem__(key, value))


def _final(value):
    return _json_edit(lambda d: d["final"]["net"].__setitem__("top1_error", value))


def _write(content: bytes):
    return lambda path: path.write_bytes(content)


def _make_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _stray(level: int):
    def apply(path: Path) -> None:  # `path` is the run's summary.json; a file `level` folders up
        (path.parents[level] / "notes.txt").write_text("a stray file")

    return apply


# (case, file it damages, damage, who must name it: "table" = load_runs, "status" = run_states)
BOTH, STATUS, TABLE = ("table", "status"), ("status",), ("table",)
CASES = [
    ("summary_undecodable", runs.SUMMARY, _write(b'{"method": "\xff\xfe"}'), BOTH),
    ("summary_truncated", runs.SUMMARY, _write(b'{"method": "vanilla", "fin'), BOTH),
    ("summary_empty", runs.SUMMARY, _write(b""), BOTH),
    ("summary_array", runs.SUMMARY, _write(b"[1, 2, 3]"), BOTH),
    ("summary_final_number", runs.SUMMARY, _set("final", 3.5), BOTH),
    ("summary_final_list", runs.SUMMARY, _set("final", [1, 2]), BOTH),
    ("summary_model_list", runs.SUMMARY, _json_edit(lambda d: d["final"].__setitem__("net", [4.0])), BOTH),
    ("summary_error_string", runs.SUMMARY, _final("4.2"), BOTH),
    ("summary_error_nan", runs.SUMMARY, _final(math.nan), BOTH),
    ("summary_error_negative", runs.SUMMARY, _final(-5.0), BOTH),
    ("summary_error_above_100", runs.SUMMARY, _final(250.0), BOTH),
    ("summary_seed_string", runs.SUMMARY, _set("seed", "zero"), BOTH),
    ("summary_status_unknown", runs.SUMMARY, _set("status", "finished"), BOTH),
    ("summary_method_list", runs.SUMMARY, _set("method", ["vanilla"]), BOTH),
    ("summary_headline_missing", runs.SUMMARY, _set("headline_model", "net7"), BOTH),
    ("summary_wall_clock_string", runs.SUMMARY, _set("wall_clock_s", "long"), BOTH),
    ("summary_params_list", runs.SUMMARY, _set("params", [1, 2]), BOTH),
    ("summary_best_list", runs.SUMMARY, _set("best", [1]), BOTH),
    ("summary_a_folder", runs.SUMMARY, _make_dir, BOTH),
    ("summary_failure_unknown", runs.SUMMARY, _set("failure", "cosmic rays"), BOTH),
    ("summary_num_classes_string", runs.SUMMARY, _set("num_classes", "ten"), BOTH),
    ("metrics_undecodable", runs.METRICS, _write(b'{"epoch": 1}\n\xff\xfe\n'), BOTH),
    ("metrics_garbage_line", runs.METRICS, lambda p: p.write_text("garbage\n" + p.read_text()), BOTH),
    ("metrics_line_is_a_list", runs.METRICS, _write(b"[1, 2]\n"), BOTH),
    ("metrics_epoch_string", runs.METRICS, _metrics_edit(lambda ls: ls[0].__setitem__("epoch", "one")), BOTH),
    ("metrics_errors_list", runs.METRICS, _metrics_edit(lambda ls: ls[0].__setitem__("top1_error", [3])), BOTH),
    ("metrics_error_nan", runs.METRICS, _metrics_edit(lambda ls: ls[0]["top1_error"].__setitem__("net", math.nan)),
     BOTH),
    ("metrics_more_epochs_than_the_run", runs.METRICS,  # e.g. another run's file: `bench status` said 6/4 epochs
     _metrics_edit(lambda ls: ls.extend({**ls[-1], "epoch": ls[-1]["epoch"] + i + 1} for i in range(4))), STATUS),
    ("config_malformed_yaml", runs.CONFIG, _write(b"method: [vanilla\nseed: 0\n"), STATUS),
    ("config_unknown_key", runs.CONFIG, lambda p: p.write_text(p.read_text() + "colour: blue\n"), STATUS),
    ("config_undecodable", runs.CONFIG, _write(b"method: \xff\n"), STATUS),
    ("config_wrong_type", runs.CONFIG, lambda p: p.write_text(p.read_text().replace("seed: ", "seed: x")), STATUS),
    ("lock_malformed", runs.LOCK, _write(b'{"host": '), STATUS),
    ("lock_pid_string", runs.LOCK, _write(b'{"host": "h", "pid": "123"}'), STATUS),
    ("lock_a_list", runs.LOCK, _write(b"[]"), STATUS),
    ("manifest_malformed", "../../../../sweep.json", _write(b'{"runs": '), STATUS),
    ("manifest_runs_list", "../../../../sweep.json", _write(b'{"runs": [1, 2]}'), STATUS),
    ("manifest_entry_string", "../../../../sweep.json", _write(b'{"runs": {"a/b/c/seed0": "x"}}'), STATUS),
    ("stray_file_in_method_folder", runs.SUMMARY, _stray(1), TABLE),
    ("stray_file_in_backbone_folder", runs.SUMMARY, _stray(2), TABLE),
    ("stray_file_in_dataset_folder", runs.SUMMARY, _stray(3), TABLE),
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tree") / "sweep"
    assert main(["run", "--methods", "vanilla", "--datasets", "digits", "--backbones", "cifar_resnet8", "--seeds",
                 "0", "--epochs", "1", "--launcher", "inline", "--no-progress", "--out", str(out)]) == 0
    return runs.run_dir(out, "digits", "cifar_resnet8", "vanilla", 0)


def tree_with(finished_run: Path, root: Path, seeds: int) -> list[Path]:
    """A sweep of `seeds` copies of one finished run (seed folders and summaries renumbered), and a manifest."""
    folders = []
    for seed in range(seeds):
        folder = runs.run_dir(root, "digits", "cifar_resnet8", "vanilla", seed)
        shutil.copytree(finished_run, folder, ignore=shutil.ignore_patterns("last.pt", "deployed*"))
        _set("seed", seed)(folder / runs.SUMMARY)
        config = folder / runs.CONFIG
        config.write_text(config.read_text().replace("seed: 0", f"seed: {seed}"))
        folders.append(folder)
    (root / "sweep.json").write_text(json.dumps({"launcher": "inline", "runs": {
        f.relative_to(root).as_posix(): {"label": f.name} for f in folders}}))
    return folders


STRAY_LEVEL = {"stray_file_in_method_folder": 1, "stray_file_in_backbone_folder": 2, "stray_file_in_dataset_folder": 3}


def damage(folder: Path, case: str, name: str, change) -> Path:
    """Apply a case to a run folder; the path of the file a warning must name."""
    path = (folder / name).resolve()
    if not path.exists() and name == runs.LOCK:
        path.write_text("{}")
    change(path)
    if case in STRAY_LEVEL:
        return path.parents[STRAY_LEVEL[case]] / "notes.txt"
    return path


def named(notes: list[str], path: Path) -> bool:
    return any(str(path) in note for note in notes)


def test_the_broken_tree_corpus_is_large():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case,name,change,readers", CASES, ids=[c[0] for c in CASES])
def test_each_broken_file_is_named_and_nothing_crashes(case, name, change, readers, finished_run, tmp_path):
    root = tmp_path / "sweep"
    good, bad = tree_with(finished_run, root, 2)
    path = damage(bad, case, name, change)
    collection = load_runs([root])
    if "table" in readers:
        assert named(collection.warnings, path), collection.warnings
    assert 0 in set(collection.models.seed)  # the good run still counts
    notes: list[str] = []
    states = run_states(root, notes)
    if "status" in readers:
        assert named(notes, path), notes
    assert {r["run"] for r in states} >= {good.relative_to(root).as_posix()}


def test_table_plot_and_status_survive_a_tree_with_every_corruption(finished_run, tmp_path, capsys):
    root = tmp_path / "sweep"
    folders = tree_with(finished_run, root, len(CASES) + 1)
    damaged = []  # (path, who names it); the manifest is one file, so one of its damages goes in
    for folder, (case, name, change, readers) in zip(folders[1:], CASES):
        if case.startswith("manifest") and case != "manifest_malformed":
            continue
        damaged.append((damage(folder, case, name, change), readers))
    for command in ("table", "plot", "status"):
        assert main([command, str(root)]) == 0, command
        err = capsys.readouterr().err
        for path, readers in damaged:
            if (command == "status") == ("status" in readers) or (command != "status" and "table" in readers):
                assert str(path) in err, (command, path, err[-3000:])
    assert (root / "plots" / "final_digits.png").exists()
