"""The aggregator: table cells equal hand computations on synthetic run folders; LaTeX, CSV, plots;
corrupt, truncated and partial runs are skipped with a warning."""

from __future__ import annotations

import csv
import io
import json
import re
import statistics

import pytest

from bench.cli import main
from bench.results.aggregate import TableSpec, build_table, cost_table, load_runs, render, write_tables
from bench.results.plots import write_plots
from bench.store import runs

HEADLINE = {"vanilla": "net", "pcl": "mean_teacher0", "one": "branch0"}


def fake_run(root, dataset, backbone, method, seed, error, ensemble=None, epochs=3, status="done", best=None):
    folder = runs.run_dir(root, dataset, backbone, method, seed)
    head = HEADLINE[method]
    final = {head: {"top1_error": error, "top5_error": error / 4}}
    if ensemble is not None:
        final["ensemble"] = {"top1_error": ensemble, "top5_error": ensemble / 4}
    best_map = {k: {"top1_error": (best if best is not None else v["top1_error"]) if k == head else v["top1_error"],
                    "top5_error": v["top5_error"], "epoch": 2} for k, v in final.items()}
    runs.write_json(folder / runs.SUMMARY, {
        "dataset": dataset, "backbone": backbone, "method": method, "seed": seed, "status": status,
        "headline_model": head, "final": final, "best": best_map, "epochs": epochs, "epochs_done": epochs,
        "wall_clock_s": 36.0 * (seed + 1), "images_per_s": 1000.0, "device": "cuda:0",
        "params": {"deployed": 470_000, "training_total": 1_500_000}})
    runs.write_jsonl(folder / runs.METRICS, [
        {"epoch": e + 1, "top1_error": {k: v["top1_error"] + (epochs - e - 1) for k, v in final.items()},
         "top5_error": {k: v["top5_error"] for k, v in final.items()}} for e in range(epochs)])
    return folder


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "res"
    for seed, err in enumerate([30.0, 31.0, 32.5]):
        fake_run(root, "cifar100", "cifar_resnet32", "vanilla", seed, err)
    for seed, (err, ens) in enumerate([(25.0, 23.0), (26.0, 23.5)]):  # two seeds only
        fake_run(root, "cifar100", "cifar_resnet32", "pcl", seed, err, ensemble=ens, best=err - 1)
    for seed, err in enumerate([29.0, 28.0, 28.5]):
        fake_run(root, "cifar100", "cifar_resnet110", "vanilla", seed, err)
    fake_run(root, "cifar100", "cifar_resnet32", "one", 0, 27.0, ensemble=26.0)  # no ONE on resnet110
    return root


def test_cells_equal_hand_computation_with_uneven_seeds_and_a_missing_cell(results):
    rows, columns, cells = build_table(load_runs([results]), TableSpec())
    assert rows == ["vanilla", "one", "pcl", "one-E", "pcl-E"]
    assert columns == [("cifar100", "cifar_resnet110"), ("cifar100", "cifar_resnet32")]
    van = cells[("vanilla", ("cifar100", "cifar_resnet32"))]
    assert van.mean == pytest.approx(statistics.mean([30.0, 31.0, 32.5]))
    assert van.std == pytest.approx(statistics.stdev([30.0, 31.0, 32.5])) and van.n == 3
    pcl = cells[("pcl", ("cifar100", "cifar_resnet32"))]
    assert (pcl.mean, pcl.n) == (25.5, 2) and pcl.std == pytest.approx(statistics.stdev([25.0, 26.0]))
    assert pcl.best and not van.best
    assert pcl.paper == 25.86 and pcl.diff == pytest.approx(25.5 - 25.86)
    assert cells[("pcl-E", ("cifar100", "cifar_resnet32"))].mean == pytest.approx(23.25)
    assert ("one", ("cifar100", "cifar_resnet110")) not in cells
    md = render(load_runs([results]), TableSpec())
    assert "| PCL | – |" in md.replace("  ", " ") or "| PCL | –" in md
    assert "**25.50 ± 0.71 (n=2)**" in md and "ONE-E" in md and "25.86" in md and "-0.36" in md


def test_best_epoch_accuracy_and_top5_options(results):
    collection = load_runs([results])
    _, _, cells = build_table(collection, TableSpec(metric="best", measure="accuracy"))
    pcl = cells[("pcl", ("cifar100", "cifar_resnet32"))]
    assert pcl.mean == pytest.approx(100 - 24.5) and pcl.best
    assert pcl.paper == pytest.approx(100 - 25.86) or pcl.paper is None
    _, _, cells = build_table(collection, TableSpec(top=5))
    assert cells[("vanilla", ("cifar100", "cifar_resnet32"))].mean == pytest.approx(statistics.mean([7.5, 7.75, 8.125]))
    _, _, cells = build_table(collection, TableSpec(model="ensemble"))
    assert set(r for r, _ in cells) == {"one", "pcl"}


def test_significance_marks_use_welch(results):
    from scipy import stats

    _, _, cells = build_table(load_runs([results]), TableSpec(significance=True))
    expected = stats.ttest_ind([25.0, 26.0], [30.0, 31.0, 32.5], equal_var=False).pvalue
    assert cells[("pcl", ("cifar100", "cifar_resnet32"))].p_value == pytest.approx(expected)
    assert cells[("one", ("cifar100", "cifar_resnet32"))].p_value is None  # one seed


def test_latex_parses_to_expected_rows_and_columns(results):
    tex = render(load_runs([results]), TableSpec(), "latex")
    assert tex.count(r"\begin{tabular}") == 1 and r"\toprule" in tex and r"\bottomrule" in tex
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    cells = [[c.strip() for c in line.removesuffix(r"\\").split("&")] for line in body]
    colspec = re.search(r"\\begin\{tabular\}\{(\w+)\}", tex).group(1)
    assert [c[0] for c in cells] == ["Vanilla", "ONE", "PCL", "ONE-E", "PCL-E"]
    assert all(len(c) == len(colspec) for c in cells)
    header = [c.strip() for c in tex.split(r"\midrule")[0].strip().splitlines()[-1].removesuffix(r"\\").split("&")]
    assert header == ["Method", "resnet110", "resnet32", "paper", r"$\Delta$"]  # no paper numbers for vanilla
    assert r"\textbf{25.50 $\pm$ 0.71 (2)}" in tex


def test_csv_table_and_run_export(results, capsys):
    text = render(load_runs([results]), TableSpec(), "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    pcl = next(r for r in rows if r["method"] == "pcl")
    assert float(pcl["mean"]) == 25.5 and pcl["n"] == "2" and pcl["paper"] == "25.86"
    assert main(["table", str(results), "--csv", "-"]) == 0
    exported = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(exported) == 3 + 2 * 2 + 3 + 2


def test_cost_table(results):
    costs = cost_table(load_runs([results]))
    row = costs[(costs.method == "vanilla") & (costs.backbone == "cifar_resnet32")].iloc[0]
    assert row.runs == 3 and row.wall_clock_s == pytest.approx(72.0) and row.gpu_hours == pytest.approx(0.02)
    assert row.params_deployed_M == pytest.approx(0.47)


def test_plots_and_files_are_written(results, tmp_path):
    paths = write_plots(load_runs([results]), tmp_path / "plots")
    pngs = [p for p in paths if p.suffix == ".png"]
    assert len(pngs) >= 3 and all(p.stat().st_size > 1000 for p in paths)
    assert {p.suffix for p in paths} == {".png", ".pdf"}
    written = write_tables(load_runs([results]), tmp_path / "tables")
    assert all(p.stat().st_size > 0 for p in written)


def test_corrupt_truncated_partial_and_stray_files_are_skipped_with_warnings(results, capsys):
    bad = runs.run_dir(results, "cifar100", "cifar_resnet32", "vanilla", 7)
    bad.mkdir(parents=True)
    (bad / runs.SUMMARY).write_text('{"dataset": "cifar100", "backb')  # truncated
    empty = runs.run_dir(results, "cifar100", "cifar_resnet32", "vanilla", 8)
    empty.mkdir(parents=True)
    (empty / runs.SUMMARY).write_text("")
    partial = runs.run_dir(results, "cifar100", "cifar_resnet32", "vanilla", 9)
    partial.mkdir(parents=True)
    (partial / runs.METRICS).write_text('{"epoch": 1, "top1_error": {"net": 50}}\n{"epo')
    failed = fake_run(results, "cifar100", "cifar_resnet32", "vanilla", 10, 99.0, status="failed")
    (results / "notes.txt").write_text("stray")
    (results / "cifar100" / "random.json").write_text("[1, 2]")
    collection = load_runs([results])
    assert collection.warnings[0] == "skipped runs: 1 partial, 1 failed, 2 corrupt"
    _, _, cells = build_table(collection, TableSpec())
    assert cells[("vanilla", ("cifar100", "cifar_resnet32"))].n == 3
    assert main(["table", str(results)]) == 0
    captured = capsys.readouterr()
    assert "31.17 ± 1.26" in captured.out and "warning: skipped runs" in captured.err and str(failed) in captured.err


def test_table_of_missing_folder_is_one_line(tmp_path, capsys):
    assert main(["table", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_bench_run_ends_with_the_table_and_files(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["run", "--methods", "vanilla,pcl", "--datasets", "digits", "--backbones", "cifar_resnet8",
                 "--seeds", "0,1", "--epochs", "2", "--out", str(out), "--no-progress", "--launcher", "inline"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"\| Vanilla \| \**\d+\.\d\d ± \d+\.\d\d", text)
    assert re.search(r"\| PCL \| \**\d+\.\d\d ± \d+\.\d\d", text)
    assert (out / "tables" / "results.tex").exists() and (out / "tables" / "results.csv").exists()
    assert len(list((out / "plots").glob("*.png"))) >= 2
    assert json.loads((out / "digits/cifar_resnet8/pcl/seed1/summary.json").read_text())["status"] == "done"


def test_final_bars_legend_covers_no_bar_and_error_bars_stay_above_zero():
    import matplotlib.pyplot as plt
    import pandas as pd
    from matplotlib.patches import Rectangle

    from bench.results.plots import final_bars_figure

    rows = []
    for method, errors in {"vanilla": [30.0, 31.0, 29.0], "dml": [0.5, 0.0, 6.0], "pcl": [1.0, 1.0, 1.0]}.items():
        for backbone in ("cifar_resnet8", "cifar_resnet32"):
            for seed, err in enumerate(errors):
                rows.append({"dataset": "digits", "backbone": backbone, "method": method, "seed": seed,
                             "eval_model": "net", "is_headline": True, "final_top1": err})
    fig = final_bars_figure(pd.DataFrame(rows), "digits")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    bars = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_height() > 0]
    assert len(bars) == 6 and not any(legend.overlaps(b.get_window_extent(renderer)) for b in bars)
    # DML's mean 2.17 with std 3.3: its error bar is clipped at 0, not drawn down to -1.1
    lowest = min(seg[:, 1].min() for coll in ax.collections for seg in coll.get_segments())
    assert lowest == pytest.approx(0.0) and ax.get_ylim()[0] == 0
    plt.close(fig)
