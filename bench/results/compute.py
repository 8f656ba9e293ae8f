"""Results at equal training compute (issue 32): each method's error beside a baseline trained with the same training
FLOPs (`vanilla[budget=pcl]`, bench.sweep.budget) and its gain over that baseline (`bench table --budget`,
tables/budget.md); bench.results.plots draws error against training compute from `headline_runs`."""

from __future__ import annotations

import math

import pandas as pd

from bench.results.collect import Collection, display_name, row_order


def headline_runs(collection: Collection) -> pd.DataFrame:
    """One row per finished run's headline model, with its training FLOPs (the teacher's added for two-stage KD)."""
    models = collection.models
    if models.empty or "train_flops" not in models:
        return pd.DataFrame()
    heads = models[models.is_headline].copy()
    heads["train_flops"] = pd.to_numeric(heads.train_flops, errors="coerce")
    return heads


def budget_table(collection: Collection) -> pd.DataFrame:
    """Per dataset x backbone x method with a budget-matched baseline run: the method's final top-1 error and training
    compute, the baseline's at the same compute, and the gain (the baseline's error minus the method's; positive: the
    method is better at equal compute)."""
    heads = headline_runs(collection)
    if heads.empty or "budget" not in heads or not heads.budget.astype(bool).any():
        return pd.DataFrame()
    rows = []
    for (dataset, backbone), cell in heads.groupby(["dataset", "backbone"]):
        for baseline_row, matched in cell[cell.budget.astype(bool)].groupby("method"):
            target = matched.budget.iloc[0]
            own = cell[(cell.method == target)]
            if own.empty:
                continue
            rows.append({"dataset": dataset, "backbone": backbone, "method": target,
                         "error": own.final_top1.mean(), "error_std": own.final_top1.std(ddof=1),
                         "pflops": own.train_flops.mean() / 1e15, "baseline": baseline_row,
                         "baseline_error": matched.final_top1.mean(), "baseline_std": matched.final_top1.std(ddof=1),
                         "baseline_pflops": matched.train_flops.mean() / 1e15,
                         "gain": matched.final_top1.mean() - own.final_top1.mean(), "seeds": len(own)})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    order = sorted(range(len(table)), key=lambda i: (table.dataset[i], table.backbone[i], row_order(table.method[i])))
    return table.iloc[order].reset_index(drop=True)


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f}" if std is None or math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def budget_markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return ("(no budget-matched runs: add e.g. --methods 'vanilla,pcl,vanilla[budget=pcl]' to a sweep)\n")
    lines = ["**At equal training compute: each method against a baseline given its training FLOPs (top-1 error %, "
             "final epoch)**", "",
             "| Dataset | Backbone | Method | error | train PFLOPs | baseline at its compute | baseline error | "
             "baseline PFLOPs | gain (pp) |", "|---|---|---|---:|---:|---|---:|---:|---:|"]
    for r in table.itertuples():
        lines.append(f"| {r.dataset} | {r.backbone} | {display_name(r.method)} | {_pm(r.error, r.error_std)} | "
                     f"{r.pflops:.4g} | {display_name(r.baseline)} | {_pm(r.baseline_error, r.baseline_std)} | "
                     f"{r.baseline_pflops:.4g} | {r.gain:+.2f} |")
    lines += ["", "gain: the baseline's error at the method's training compute minus the method's (positive: the "
              "method beats the baseline given the same compute)."]
    return "\n".join(lines) + "\n"
