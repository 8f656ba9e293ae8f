"""Runs -> pandas DataFrames -> paper-style tables (Markdown, LaTeX, CSV) and a cost table.

The results table follows the PCL paper: rows are methods in paper order (then ensemble rows such as
ONE-E and PCL-E), columns are backbones grouped by dataset, cells are the top-1 error mean +- std over
seeds (n shown where seed counts differ), the best cell per column in bold, and the paper's published
number beside ours with the difference.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pandas as pd

from bench.results.collect import (  # noqa: F401  (the loading side, also imported from here)
    DISPLAY,
    FALLBACKS,
    MEMBERS,
    PAPER_ORDER,
    RUNTIME,
    Collection,
    display_name,
    find_run_folders,
    load_runs,
    remember_display_name,
    row_order,
)
from bench.results.costs import cost_markdown, cost_table  # noqa: F401  (also imported from here)
from bench.store import runs

QUANTITIES = ("top1", "top5", "ece", "nll", "disagreement")  # what `bench table --metric` shows
TITLES = {"ece": "Expected calibration error (%, 15 bins)", "nll": "NLL (nats per image)",
          "disagreement": "Mean pairwise top-1 disagreement of the members (%)"}


@dataclass
class TableSpec:
    metric: str = "final"  # final or best epoch
    measure: str = "error"  # error or accuracy (top-k only)
    top: int = 1  # 1 or 5
    model: str = "headline"  # headline, ensemble, or an eval model name (peer0, ...)
    reference: bool = True
    significance: bool = False
    quantity: str = "error"  # error (top-`top`), ece, nll or disagreement

    @property
    def column(self) -> str:
        return f"{self.metric}_top{self.top}" if self.quantity == "error" else f"{self.metric}_{self.quantity}"

    @property
    def lower_is_better(self) -> bool | None:
        """Which way is best (None: neither, for disagreement, so no cell is bold)."""
        if self.quantity == "disagreement":
            return None
        return self.quantity != "error" or self.measure == "error"

    def title(self) -> str:
        epoch = "final epoch" if self.metric == "final" else "best epoch"
        if self.quantity == "error":
            what = f"Top-{self.top} {'error' if self.measure == 'error' else 'accuracy'} (%)"
        else:
            what = TITLES[self.quantity]
        model = "members of each method" if self.quantity == "disagreement" else f"{self.model} model"
        return f"{what}, {epoch}, mean ± std over seeds ({model})"


def select_models(models: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """One value per run and table row: the chosen eval model, plus '<method>-E' rows for ensembles."""
    if models.empty:
        return models.assign(row=[], value=[])
    if spec.model == "headline":
        chosen = models[models.is_headline].assign(row=lambda d: d.method)
        ens = models[(models.eval_model == "ensemble") & (models.method != "vanilla")]
        chosen = pd.concat([chosen, ens.assign(row=ens.method + "-E")])
    else:
        chosen = models[models.eval_model == spec.model].assign(row=lambda d: d.method)
    if spec.quantity == "disagreement":  # one value per run, not per eval model: its headline row
        chosen = chosen[~chosen.row.str.endswith("-E")]
    value = pd.to_numeric(chosen[spec.column], errors="coerce") if spec.column in chosen else \
        pd.Series(float("nan"), index=chosen.index)
    chosen = chosen.assign(value=value if spec.measure == "error" or spec.quantity != "error" else 100.0 - value)
    return chosen[chosen.value.notna()]  # a run made before a measurement existed: missing, never zero


def load_reference() -> pd.DataFrame:
    """The PCL paper's published numbers (shipped with the package)."""
    with resources.as_file(resources.files("bench") / "reference" / "pcl_aaai2021_table.csv") as path:
        return pd.read_csv(path)


def _paper_value(ref: pd.DataFrame, dataset: str, backbone: str, row: str, spec: TableSpec) -> float | None:
    if spec.quantity != "error" or spec.top != 1 or row.endswith("-E") or spec.metric != "final":
        return None
    name = backbone.removeprefix("cifar_")
    hit = ref[(ref.dataset == dataset) & (ref.backbone == name) & (ref.method == row)]
    if hit.empty or pd.isna(hit.top1_error_mean.iloc[0]):
        return None
    value = float(hit.top1_error_mean.iloc[0])
    return value if spec.measure == "error" else 100.0 - value


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided Welch's t-test p-value, or None with fewer than two seeds on a side or no variance."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = stats.ttest_ind(a, b, equal_var=False).pvalue
    return None if p is None or math.isnan(p) else float(p)


@dataclass
class Cell:
    mean: float
    std: float
    n: int
    paper: float | None = None
    p_value: float | None = None
    best: bool = False
    differs: list[str] = field(default_factory=list)  # RUNTIME names in which the cell's runs differ
    protocols: list[str] = field(default_factory=list)  # the training recipes of the cell's runs
    starts: list[str] = field(default_factory=list)  # where its runs' weights started (pretrained sources)

    @property
    def diff(self) -> float | None:
        return None if self.paper is None else self.mean - self.paper


def build_table(collection: Collection, spec: TableSpec) -> tuple[list[str], list[tuple[str, str]], dict]:
    """(rows, columns, cells) with cells[(row, (dataset, backbone))] = Cell."""
    chosen = select_models(collection.models, spec)
    if chosen.empty:
        return [], [], {}
    ref = load_reference() if spec.reference else None
    rows = sorted(chosen.row.unique(), key=row_order)
    columns = sorted({(d, b) for d, b in zip(chosen.dataset, chosen.backbone)})
    cells: dict = {}
    for (row, dataset, backbone), group in chosen.groupby(["row", "dataset", "backbone"]):
        values = group.value.tolist()
        std = float(pd.Series(values).std(ddof=1)) if len(values) > 1 else 0.0
        cell = Cell(float(pd.Series(values).mean()), std, len(values))
        cell.differs = [name for name in RUNTIME if f"runtime_{name}" in group
                        and group[f"runtime_{name}"].nunique(dropna=False) > 1]
        cell.protocols = sorted(set(group.protocol)) if "protocol" in group else ["common"]
        cell.starts = sorted({s for s in group.pretrained if s}) if "pretrained" in group else []
        if ref is not None and cell.protocols == ["common"]:  # the paper's numbers are the common protocol's
            cell.paper = _paper_value(ref, dataset, backbone, row, spec)
        if spec.significance and row != "vanilla":
            base = chosen[(chosen.row == "vanilla") & (chosen.dataset == dataset) & (chosen.backbone == backbone)]
            cell.p_value = welch_p(values, base.value.tolist())
        cells[(row, (dataset, backbone))] = cell
    for col in columns:  # bold: the best single model of the column (ensemble rows are not candidates)
        present = [cells[(r, col)] for r in rows if (r, col) in cells and not r.endswith("-E")]
        if not present:
            continue
        if spec.lower_is_better is None:
            continue
        target = min if spec.lower_is_better else max
        best = target(c.mean for c in present)
        for c in present:
            c.best = math.isclose(c.mean, best)
    return rows, columns, cells


def _fmt(cell: Cell, show_n: bool) -> str:
    text = f"{cell.mean:.2f}" if cell.n == 1 else f"{cell.mean:.2f} ± {cell.std:.2f}"  # one seed has no spread
    if show_n:
        text += f" (n={cell.n})"
    if cell.p_value is not None and cell.p_value < 0.05:
        text += " †"
    if cell.differs:
        text += " ‡"
    return text


def mixed_note(cells: dict) -> str | None:
    """The table's note for cells whose runs ran differently (‡), or None."""
    names = [n for n in RUNTIME if any(n in c.differs for c in cells.values())]
    if not names:
        return None
    return (f"‡: the runs of this cell differ in {', '.join(names)}, which change the numbers: its spread is not "
            "seed noise alone (runs.csv lists each run's).")


def protocol_note(cells: dict) -> str | None:
    """The table's line naming the training recipe when it is not the common protocol (a preset such as
    mcl-official, its authors' settings), or None."""
    names = sorted({p for c in cells.values() for p in c.protocols})
    if names in ([], ["common"]):
        return None
    return ("Training recipe: " + ", ".join(names) + (" (mixed within the table)" if len(names) > 1 else "")
            + "; the common protocol's rows are not comparable with it.")


def pretrained_note(cells: dict) -> str | None:
    """The table's line saying which columns start from pretrained weights, and from which, or None."""
    starts = sorted({s for c in cells.values() for s in c.starts})
    if not starts:
        return None
    return ("@pretrained: the runs start from pretrained weights (" + "; ".join(starts) + "); from-scratch runs of "
            "the same backbone are their own column.")


def _has_paper(columns, rows, cells) -> dict:
    return {col: any(cells.get((r, col)) and cells[(r, col)].paper is not None for r in rows) for col in columns}


def to_markdown(rows, columns, cells, spec: TableSpec) -> str:
    if not rows:
        return "(no finished runs)\n"
    ns = {c.n for c in cells.values()}
    show_n = len(ns) > 1
    paper = _has_paper(columns, rows, cells)
    header, align = ["Method"], ["---"]
    for col in columns:
        header.append(f"{col[0]} / {col[1]}")
        align.append("---:")
        if paper[col]:
            header += ["paper", "Δ"]
            align += ["---:", "---:"]
    lines = [f"**{spec.title()}**", "", "| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    if recipe := protocol_note(cells):
        lines[1:1] = ["", recipe]
    for row in rows:
        out = [display_name(row)]
        for col in columns:
            cell = cells.get((row, col))
            text = "–" if cell is None else _fmt(cell, show_n)
            out.append(f"**{text}**" if cell is not None and cell.best else text)
            if paper[col]:
                out.append("" if cell is None or cell.paper is None else f"{cell.paper:.2f}")
                out.append("" if cell is None or cell.diff is None else f"{cell.diff:+.2f}")
        lines.append("| " + " | ".join(out) + " |")
    if show_n:
        lines += ["", "n: number of seeds where the counts differ."]
    if spec.significance:
        lines += ["", "†: differs from Vanilla, Welch's t-test p < 0.05 over seeds."]
    if mixed := mixed_note(cells):
        lines += ["", mixed]
    if started := pretrained_note(cells):
        lines += ["", started]
    for row in rows:
        if row in FALLBACKS:
            lines += ["", f"{display_name(row)} reports {FALLBACKS[row][0]}: its method's usual model, "
                          f"{FALLBACKS[row][1]}, is switched off."]
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    return text.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def to_latex(rows, columns, cells, spec: TableSpec) -> str:
    """A booktabs tabular, ready to \\input."""
    ns = {c.n for c in cells.values()}
    show_n = len(ns) > 1
    paper = _has_paper(columns, rows, cells)
    datasets = list(dict.fromkeys(d for d, _ in columns))
    widths = {d: sum(1 + 2 * paper[c] for c in columns if c[0] == d) for d in datasets}
    colspec = "l" + "".join("r" * (1 + 2 * paper[c]) for c in columns)
    lines = [f"% {spec.title()}", r"\begin{tabular}{" + colspec + "}", r"\toprule"]
    lines.append(" & " + " & ".join(rf"\multicolumn{{{widths[d]}}}{{c}}{{{_tex(d)}}}" for d in datasets) + r" \\")
    start, rules = 2, []
    for d in datasets:
        rules.append(rf"\cmidrule(lr){{{start}-{start + widths[d] - 1}}}")
        start += widths[d]
    lines.append(" ".join(rules))
    head = ["Method"]
    for col in columns:
        head.append(_tex(col[1].removeprefix("cifar_")))
        if paper[col]:
            head += ["paper", r"$\Delta$"]
    lines += [" & ".join(head) + r" \\", r"\midrule"]
    for row in rows:
        out = [_tex(display_name(row))]
        for col in columns:
            cell = cells.get((row, col))
            if cell is None:
                out.append("--")
            else:
                text = (f"{cell.mean:.2f}" if cell.n == 1 else f"{cell.mean:.2f} $\\pm$ {cell.std:.2f}") + (
                    f" ({cell.n})" if show_n else "")
                if cell.p_value is not None and cell.p_value < 0.05:
                    text += r"$^\dagger$"
                if cell.differs:
                    text += r"$^\ddagger$"
                out.append(rf"\textbf{{{text}}}" if cell.best else text)
            if paper[col]:
                out.append("" if cell is None or cell.paper is None else f"{cell.paper:.2f}")
                out.append("" if cell is None or cell.diff is None else f"{cell.diff:+.2f}")
        lines.append(" & ".join(out) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [f"% {note}" for note in (mixed_note(cells), protocol_note(cells)) if note]
    return "\n".join(lines) + "\n"


def to_csv(rows, columns, cells, spec: TableSpec) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["dataset", "backbone", "method", "measure", "mean", "std", "n", "paper", "diff", "p_vs_vanilla",
                     "best", "runs_differ_in", "protocol"])
    for row in rows:
        for col in columns:
            cell = cells.get((row, col))
            if cell is None:
                continue
            writer.writerow([col[0], col[1], row, f"{spec.column}_{spec.measure}" if spec.quantity == "error" else
                             spec.column, f"{cell.mean:.4f}",
                             f"{cell.std:.4f}", cell.n, "" if cell.paper is None else f"{cell.paper:.2f}",
                             "" if cell.diff is None else f"{cell.diff:.4f}",
                             "" if cell.p_value is None else f"{cell.p_value:.4g}", int(cell.best),
                             ";".join(cell.differs), ";".join(cell.protocols)])
    return buf.getvalue()


FORMATS = {"md": to_markdown, "latex": to_latex, "csv": to_csv}


def render(collection: Collection, spec: TableSpec, fmt: str = "md") -> str:
    rows, columns, cells = build_table(collection, spec)
    return FORMATS[fmt](rows, columns, cells, spec)


def write_tables(collection: Collection, folder: Path, spec: TableSpec | None = None) -> list[Path]:
    """results.{md,tex,csv}, costs.{md,csv} and runs.csv into `folder` (atomically)."""
    spec = spec or TableSpec()
    folder = Path(folder)
    rows, columns, cells = build_table(collection, spec)
    written = []
    for fmt, suffix in (("md", "md"), ("latex", "tex"), ("csv", "csv")):
        path = folder / f"results.{suffix}"
        runs.write_text(path, FORMATS[fmt](rows, columns, cells, spec))
        written.append(path)
    costs = cost_table(collection)
    runs.write_text(folder / "costs.md", cost_markdown(costs))
    runs.write_text(folder / "costs.csv", costs.to_csv(index=False))
    runs.write_text(folder / "runs.csv", collection.models.to_csv(index=False))
    written += [folder / "costs.md", folder / "costs.csv", folder / "runs.csv"]
    from bench.results.compute import budget_markdown, budget_table

    matched = budget_table(collection)
    if not matched.empty:  # a sweep with budget-matched runs: each method against a baseline at its compute
        runs.write_text(folder / "budget.md", budget_markdown(matched))
        written.append(folder / "budget.md")
    return written
