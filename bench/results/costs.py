"""The cost table: per dataset x student backbone x row, wall-clock and GPU-hours per run (a two-stage KD row charged
its teacher's run), images/s, parameters and forward FLOPs of the deployed network beside its partners', and the gain
over vanilla on the same student (`bench table --costs`, tables/costs.{md,csv})."""

from __future__ import annotations

import math

import pandas as pd

from bench.results.collect import Collection, display_name, row_order


def cost_table(collection: Collection) -> pd.DataFrame:
    """Per dataset x backbone (the student) x row: wall-clock and GPU-hours per run, images/s, parameters and forward
    FLOPs of the deployed network beside its partners', and the top-1 gain over vanilla on the same student. A
    two-stage KD row is charged its teacher's run too (the cost that online KD argues away); DML, KDCL and SwitOKD
    rows are one run that trains every network."""
    done = collection.runs[collection.runs.status == "done"] if not collection.runs.empty else collection.runs
    if done.empty:
        return pd.DataFrame()
    # a run that shared its GPU with K-1 others (--runs-per-device K) paid for 1/K of it
    on_gpu = done.device.fillna("").str.startswith("cuda")
    done = done.assign(gpu_hours=done.wall_clock_s / 3600.0 * on_gpu / done.runs_per_device, on_gpu=on_gpu)
    for column in ("partners", "partner_params", "flops_deployed", "flops_partners", "two_stage", "base_method",
                   "train_flops"):
        if column not in done:
            done = done.assign(**{column: None})
    teachers = done[done.base_method == "vanilla"].set_index(["dataset", "backbone", "seed"])
    extra_s, extra_h, extra_f = [], [], []
    for r in done.itertuples():
        key = (r.dataset, r.partners, r.seed)
        found = r.two_stage is True and bool(r.partners) and key in teachers.index
        extra_s.append(float(teachers.loc[key].wall_clock_s) if found else 0.0)
        extra_h.append(float(teachers.loc[key].gpu_hours) if found else 0.0)
        extra_f.append(pd.to_numeric(teachers.loc[key].train_flops, errors="coerce") if found else 0.0)
    done = done.assign(wall_clock_s=done.wall_clock_s + extra_s, gpu_hours=done.gpu_hours + extra_h,
                       train_flops=pd.to_numeric(done.train_flops, errors="coerce") + extra_f,
                       teacher_included=[h > 0 or s > 0 for h, s in zip(extra_h, extra_s)])
    grouped = done.groupby(["dataset", "backbone", "method"])
    table = grouped.agg(runs=("seed", "count"), wall_clock_s=("wall_clock_s", "mean"), gpu_hours=("gpu_hours", "mean"),
                        images_per_s=("images_per_s", "mean"), params_deployed_M=("params_deployed", "first"),
                        params_training_M=("params_training", "first"), params_partner_M=("partner_params", "first"),
                        gflops_deployed=("flops_deployed", "first"), gflops_partner=("flops_partners", "first"),
                        teacher_included=("teacher_included", "any"), on_gpu=("on_gpu", "any"),
                        train_pflops=("train_flops", lambda s: s.mean() / 1e15 if s.notna().all() else math.nan))
    table = table.reset_index()
    table.loc[~table.on_gpu.astype(bool), "gpu_hours"] = math.nan  # CPU runs spend no GPU-hours: "–", never 0.000
    for column in ("params_deployed_M", "params_training_M", "params_partner_M"):
        table[column] = pd.to_numeric(table[column], errors="coerce") / 1e6
    for column in ("gflops_deployed", "gflops_partner"):
        table[column] = pd.to_numeric(table[column], errors="coerce") / 1e9
    table["gain_vs_vanilla"] = [_gain(collection, r.dataset, r.backbone, r.method) for r in table.itertuples()]
    vanilla = table[table.method == "vanilla"].set_index(["dataset", "backbone"]).train_pflops
    table["compute_vs_vanilla"] = [r.train_pflops / vanilla.get((r.dataset, r.backbone), math.nan)
                                   for r in table.itertuples()]  # training compute, in vanilla runs
    table = table.iloc[sorted(range(len(table)), key=lambda i: (table.dataset[i], table.backbone[i],
                                                              row_order(table.method[i])))]
    return table.reset_index(drop=True)


def _gain(collection: Collection, dataset: str, backbone: str, row: str) -> float | None:
    """Vanilla's mean final top-1 error on the same student minus this row's (positive: better than vanilla)."""
    heads = collection.models[collection.models.is_headline] if not collection.models.empty else collection.models
    if heads.empty or row == "vanilla":
        return None
    cell = heads[(heads.dataset == dataset) & (heads.backbone == backbone)]
    base, mine = cell[cell.method == "vanilla"].final_top1, cell[cell.method == row].final_top1
    return float(base.mean() - mine.mean()) if len(base) and len(mine) else None


def _fmt_or_dash(value, fmt: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def cost_markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "(no finished runs)\n"
    lines = ["**Cost per run (mean over seeds)**", "",
             "| Dataset | Backbone | Method | runs | wall-clock (s) | GPU-hours | images/s | params deployed (M) "
             "| params partner (M) | GFLOPs deployed | GFLOPs partner | params training (M) | train PFLOPs | x vanilla "
             "| gain vs vanilla (pp) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table.itertuples():
        mark = " *" if r.teacher_included else ""
        lines.append(f"| {r.dataset} | {r.backbone} | {display_name(r.method)} | {r.runs} | "
                     f"{r.wall_clock_s:.1f}{mark} | {_fmt_or_dash(r.gpu_hours, '.3f')}{mark if r.on_gpu else ''} | "
                     f"{r.images_per_s:.0f} | "
                     f"{r.params_deployed_M:.3f} | "
                     f"{_fmt_or_dash(r.params_partner_M, '.3f')} | {_fmt_or_dash(r.gflops_deployed, '.3f')} | "
                     f"{_fmt_or_dash(r.gflops_partner, '.3f')} | {r.params_training_M:.3f} | "
                     f"{_fmt_or_dash(r.train_pflops, '.4g')}{mark if r.teacher_included else ''} | "
                     f"{_fmt_or_dash(r.compute_vs_vanilla, '.2f')} | "
                     f"{_fmt_or_dash(r.gain_vs_vanilla, '+.2f')} |")
    if table.teacher_included.any():
        lines += ["", "*: two-stage KD, charged with its teacher's training run as well as the student's."]
    lines += ["", "train PFLOPs: the counted FLOPs of one training step (forward and backward of every trained "
              "network, forward of every teacher, hybrid model and head) times the steps taken; x vanilla: against "
              "the vanilla run of the same cell. Runs made before it was counted show it as missing."]
    return "\n".join(lines) + "\n"
