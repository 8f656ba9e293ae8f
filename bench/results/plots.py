"""Plots of a results collection (matplotlib, PNG and PDF), one colour per method across every plot."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from bench.results.aggregate import MEMBERS, PAPER_ORDER, Collection, display_name, row_order  # noqa: E402
from bench.results.collect import parse_row  # noqa: E402
from bench.results.compute import headline_runs  # noqa: E402


def method_colour(method: str) -> tuple:
    """A fixed colour per method (paper order into tab10), the same in every figure; a variant of a method
    (`pcl+mean_teacher=off`) its own, from tab20b by its name."""
    row, base, variant, partners, _ = parse_row(method)
    if variant or partners:
        return plt.get_cmap("tab20b")(zlib.crc32(row.encode()) % 20)
    index = PAPER_ORDER.index(base) if base in PAPER_ORDER else len(PAPER_ORDER) + zlib.crc32(base.encode()) % 2
    return plt.get_cmap("tab10")(index % 10)


def _save(fig, folder: Path, stem: str) -> list[Path]:
    from bench.store import runs

    paths = []
    try:
        for suffix in ("png", "pdf"):
            path = folder / f"{stem}.{suffix}"
            runs.atomic_write(path, lambda f, suffix=suffix: fig.savefig(f, format=suffix, dpi=150,
                                                                          bbox_inches="tight"), binary=True)
            paths.append(path)
    finally:
        plt.close(fig)
    return paths


def _headline_curves(collection: Collection) -> pd.DataFrame:
    heads = collection.models[collection.models.is_headline][["dataset", "backbone", "method", "eval_model"]]
    return collection.curves.merge(heads.drop_duplicates(), on=["dataset", "backbone", "method", "eval_model"])


CURVES = {"top1_error": ("curves", "top-1 test error (%)"), "ece": ("ece", "expected calibration error (%)"),
          "disagreement": ("diversity", "pairwise top-1 disagreement of the members (%)")}


def plot_curves(collection: Collection, folder: Path, column: str = "top1_error") -> list[Path]:
    """`column` vs epoch of each method's headline model (the disagreement: of its members), mean +- std band over
    seeds; one figure per dataset x backbone."""
    if collection.curves.empty or collection.models.empty or column not in collection.curves:
        return []
    curves = collection.curves[collection.curves.eval_model == MEMBERS] if column == "disagreement" else \
        _headline_curves(collection)
    curves = curves[curves[column].notna()]
    stem, label = CURVES[column]
    paths = []
    for (dataset, backbone), group in curves.groupby(["dataset", "backbone"]):
        fig, ax = plt.subplots(figsize=(6, 4))
        for method in sorted(group.method.unique(), key=row_order):
            stats = group[group.method == method].groupby("epoch")[column].agg(["mean", "std"]).fillna(0.0)
            ax.plot(stats.index, stats["mean"], color=method_colour(method), label=display_name(method))
            ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                            color=method_colour(method), alpha=0.2, linewidth=0)
        ax.set(xlabel="epoch", ylabel=label, title=f"{dataset} / {backbone}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no tick at 1.5
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        paths += _save(fig, folder, f"{stem}_{dataset}_{backbone}")
    return paths


def sensitivity_lines(rows: pd.DataFrame) -> dict[str, dict[tuple[str, str], pd.DataFrame]]:
    """{option: {(backbone, the rest of the variant): its rows with `x`, the option's value}} for every numeric
    option of a method's variants that takes at least two values with everything else equal."""
    variants = [json.loads(v) for v in rows.variant]
    out: dict[str, dict] = {}
    for key in sorted({k for v in variants for k in v}):
        xs = [v.get(key) for v in variants]
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs if x is not None):
            continue
        rest = [json.dumps({k: x for k, x in v.items() if k != key}, sort_keys=True) for v in variants]
        chosen = rows.assign(x=[float(x) if x is not None else float("nan") for x in xs], rest=rest)
        chosen = chosen[chosen.x.notna()]
        lines = {(b, r): g for (b, r), g in chosen.groupby(["backbone", "rest"]) if g.x.nunique() > 1}
        if lines:
            out[key] = lines
    return out


def plot_sensitivity(collection: Collection, folder: Path) -> list[Path]:
    """Where a sweep varies one option of a method (`pcl.temperature=2,3,4`): the final top-1 error of its headline
    model against the option's value, mean +- std over seeds, one line per backbone (and per other variant option);
    one figure per dataset x method x option."""
    models = collection.models
    if models.empty or "variant" not in models:
        return []
    heads = models[models.is_headline]
    paths = []
    for (dataset, method), rows in heads.groupby(["dataset", "base_method"]):
        for key, lines in sensitivity_lines(rows).items():
            fig, ax = plt.subplots(figsize=(5, 4))
            for (backbone, rest), group in lines.items():
                stats = group.groupby("x").final_top1.agg(["mean", "std"]).fillna(0.0)
                others = ", ".join(f"{k}={v}" for k, v in json.loads(rest).items())
                ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", capsize=3,
                            label=backbone + (f" ({others})" if others else ""))
            ax.set(xlabel=f"{method}.{key}", ylabel="final top-1 error (%)",
                   title=f"{dataset}: {display_name(method)}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            paths += _save(fig, folder, f"sensitivity_{dataset}_{method}_{key}")
    return paths


def error_bars(mean, std) -> np.ndarray:
    """Asymmetric error bars of one std, the lower arm clipped at 0 (an error rate is never negative)."""
    mean = np.atleast_1d(np.asarray(mean, dtype=float))
    std = np.nan_to_num(np.atleast_1d(np.asarray(std, dtype=float)))
    return np.vstack([np.minimum(std, np.nan_to_num(mean)), std])


def outside_legend(ax) -> None:
    """The legend right of the axes, where it covers no bar."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)


def final_bars_figure(group, dataset: str):
    """One dataset's final top-1 error per method per backbone: bars, std error bars clipped at 0, the legend
    outside the axes."""
    backbones = sorted(group.backbone.unique())
    methods = sorted(group.method.unique(), key=row_order)
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(backbones) + 2), 4))
    for i, method in enumerate(methods):
        stats = group[group.method == method].groupby("backbone").final_top1.agg(["mean", "std"])
        stats = stats.reindex(backbones)
        x = np.arange(len(backbones)) + (i - (len(methods) - 1) / 2) * width
        ax.bar(x, stats["mean"], width, yerr=error_bars(stats["mean"], stats["std"]), capsize=2,
               color=method_colour(method), label=display_name(method))
    ax.set_xticks(np.arange(len(backbones)), backbones)
    ax.set(ylabel="final top-1 error (%)", title=dataset)
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)
    outside_legend(ax)
    return fig


def plot_final_bars(collection: Collection, folder: Path) -> list[Path]:
    """Final top-1 error per method per backbone, bars with std error bars; one figure per dataset."""
    if collection.models.empty:
        return []
    heads = collection.models[collection.models.is_headline]
    return [path for dataset, group in heads.groupby("dataset")
            for path in _save(final_bars_figure(group, dataset), folder, f"final_{dataset}")]


def plot_headline_vs_ensemble(collection: Collection, folder: Path) -> list[Path]:
    """Each method's headline model next to its ensemble (hatched), per dataset x backbone."""
    models = collection.models
    if models.empty:
        return []
    paths = []
    for (dataset, backbone), group in models.groupby(["dataset", "backbone"]):
        methods = [m for m in sorted(group.method.unique(), key=row_order)
                   if (group[group.method == m].eval_model == "ensemble").any()]
        if not methods:
            continue
        fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(methods) + 2), 4))
        for i, method in enumerate(methods):
            rows = group[group.method == method]
            for offset, selected, hatch in ((-0.2, rows[rows.is_headline], None),
                                            (0.2, rows[rows.eval_model == "ensemble"], "//")):
                ax.bar(i + offset, selected.final_top1.mean(), 0.4,
                       yerr=error_bars(selected.final_top1.mean(), selected.final_top1.std(ddof=1)), capsize=2,
                       color=method_colour(method), hatch=hatch, edgecolor="black", linewidth=0.5)
        ax.set_xticks(range(len(methods)), [display_name(m) for m in methods])
        ax.set(ylabel="final top-1 error (%)", title=f"{dataset} / {backbone}: headline (plain) vs ensemble (hatched)")
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
        paths += _save(fig, folder, f"ensemble_{dataset}_{backbone}")
    return paths


def plot_compute(collection: Collection, folder: Path) -> list[Path]:
    """Final top-1 error against training compute (log x), one figure per dataset and backbone: every method a point
    with its seed spread; a baseline and its budget-matched runs drawn as the line they form."""
    heads = headline_runs(collection)
    if heads.empty or heads.train_flops.isna().all():
        return []
    paths = []
    for (dataset, backbone), cell in heads.groupby(["dataset", "backbone"]):
        cell = cell[cell.train_flops.notna()]
        if cell.method.nunique() < 2:  # one method alone: nothing to compare at any compute
            continue
        stats = cell.groupby("method").agg(x=("train_flops", "mean"), y=("final_top1", "mean"),
                                           s=("final_top1", "std"), base=("base_method", "first"),
                                           budget=("budget", "first")).fillna({"s": 0.0})
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for row in sorted(stats.index, key=row_order):
            r = stats.loc[row]
            if r.budget:
                continue
            ax.errorbar(r.x / 1e15, r.y, yerr=r.s, fmt="o", capsize=3, color=method_colour(row),
                        label=display_name(row))
        for base, line in stats[stats.budget.astype(bool)].groupby("base"):
            points = pd.concat([stats.loc[[base]] if base in stats.index else stats.iloc[:0], line]).sort_values("x")
            ax.errorbar(points.x / 1e15, points.y, yerr=points.s, fmt="--s", capsize=3, color=method_colour(base),
                        label=f"{display_name(base)} at matched compute")
        ax.set_xscale("log")
        ax.set(xlabel="training compute (PFLOPs, counted)", ylabel="final top-1 error (%)",
               title=f"{dataset} / {backbone}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="best")
        if np.isfinite(stats.x).any():
            paths += _save(fig, folder, f"compute_{dataset}_{backbone}")
        plt.close(fig)
    return paths


def write_plots(collection: Collection, folder: Path) -> list[Path]:
    folder = Path(folder)
    return [*plot_curves(collection, folder), *plot_final_bars(collection, folder),
            *plot_headline_vs_ensemble(collection, folder), *plot_curves(collection, folder, "ece"),
            *plot_curves(collection, folder, "disagreement"), *plot_sensitivity(collection, folder),
            *plot_compute(collection, folder)]
