"""`bench report`: a sweep as one self-contained HTML page to share (no network, images inlined).

The page holds the results table (mean ± std over seeds, the paper's numbers and deltas, significance marks),
the cost table, every plot, and what the runs were made with: the grid, the shared settings, plug-ins and
versions. It is built from the same tables and plots as `bench table` and `bench plot`.
"""

from __future__ import annotations

import base64
import html
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.errors import NoResults, UsageError
from bench.store import runs

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
.meta { color: #666; font-size: 0.9rem; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.9rem; display: block; max-width: 100%;
        overflow-x: auto; }
th, td { padding: 0.3rem 0.7rem; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { border-bottom: 2px solid #999; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.3rem; white-space: nowrap; }
figure { display: inline-block; margin: 0.5rem 1rem 1rem 0; } figure img { max-width: 34rem; height: auto; }
figcaption { font-size: 0.8rem; color: #666; } pre { background: #f6f6f6; padding: 0.8rem; overflow-x: auto;
font-size: 0.8rem; } .note { font-size: 0.85rem; color: #555; }
"""


def markdown_table_html(text: str) -> str:
    """The Markdown that `bench table` prints (a bold title line, one pipe table, notes) as HTML."""
    out, rows = [], []
    caption = ""

    def inline(cell: str) -> str:
        return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(cell.strip()))

    def flush() -> None:
        if not rows:
            return
        head, *body = rows
        cap = f"<caption>{caption}</caption>" if caption else ""
        out.append(f"<table>{cap}<thead><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr></thead><tbody>"
                   + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in body)
                   + "</tbody></table>")
        rows.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            cells = line.strip().strip("|").split("|")
            if all(set(c.strip()) <= set("-:") for c in cells):
                continue  # the alignment row
            rows.append(cells)
            continue
        flush()
        if line.startswith("**") and line.endswith("**") and not rows:
            caption = html.escape(line.strip("*"))
        elif line.strip():
            out.append(f"<p class='note'>{inline(line)}</p>")
    flush()
    return "\n".join(out)


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f"<figure><img alt='{html.escape(path.stem)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(path.stem)}</figcaption></figure>")


def _provenance(collection) -> dict[str, Any]:
    """The grid, the settings shared by every run, plug-ins and versions, read from the runs' records."""
    from bench.store.records import Malformed, load_config, load_summary

    grid: dict[str, set] = {"datasets": set(), "backbones": set(), "methods": set(), "seeds": set()}
    shared: dict[str, Any] | None = None
    versions: dict[str, Any] = {}
    plugins: dict[str, dict] = {}
    commits: set[str] = set()
    for row in collection.runs.itertuples():
        grid["datasets"].add(row.dataset), grid["backbones"].add(row.backbone)
        grid["methods"].add(row.method), grid["seeds"].add(row.seed)
        if getattr(row, "pretrained", ""):  # where its weights started (timm tag, or file and sha256)
            grid.setdefault("starting weights", set()).add(row.pretrained)
        folder = Path(row.folder)
        try:
            config = load_config(folder)
            summary = load_summary(folder) or {}
        except Malformed:
            continue
        if config is not None:
            from bench.config import to_dict

            settings = {k: v for k, v in to_dict(config).items()
                        if k not in ("method", "backbone", "dataset", "seed", "options", "loaded_plugins", "variant",
                                     "runtime")}
            shared = settings if shared is None else {k: v for k, v in shared.items() if settings.get(k) == v}
        versions.update(summary.get("versions") or {})
        commits.add(str(summary.get("git_commit") or "-"))
        for rec in summary.get("plugins") or []:
            plugins[rec.get("file") or rec.get("name")] = rec
    return {"grid": {k: sorted(v, key=str) for k, v in grid.items()}, "shared": shared or {},
            "versions": versions, "commits": sorted(commits), "plugins": list(plugins.values())}


def build_report(roots: list[Path]) -> str:
    """The HTML page of the finished runs under `roots`; UsageError when there is none."""
    import yaml

    from bench.results.aggregate import TableSpec, cost_markdown, cost_table, load_runs, render
    from bench.results.plots import write_plots

    collection = load_runs(roots)
    for note in collection.warnings:
        print(f"warning: {note}", file=sys.stderr)
    if collection.models.empty:
        raise NoResults(f"no finished run under {', '.join(map(str, roots))}: nothing to report "
                         "('bench status' shows where the runs stand)")
    results = render(collection, TableSpec(significance=True), "md")
    best = render(collection, TableSpec(metric="best", significance=True), "md")
    beyond = [render(collection, TableSpec(quantity=q, significance=True), "md")
              for q in ("ece", "nll", "disagreement")]
    beyond_html = "\n".join(markdown_table_html(t) for t in beyond if not t.startswith("(no finished runs)"))
    costs = cost_markdown(cost_table(collection))
    from bench.results.compute import budget_markdown, budget_table

    matched = budget_table(collection)
    budget = "" if matched.empty else '<h2 id="budget">At equal training compute</h2>\n' + markdown_table_html(
        budget_markdown(matched))
    with tempfile.TemporaryDirectory() as tmp:
        images = "\n".join(_image(p) for p in sorted(write_plots(collection, Path(tmp))) if p.suffix == ".png")
    prov = _provenance(collection)
    grid = "".join(f"<tr><td>{k}</td><td>{html.escape(', '.join(map(str, v)))}</td></tr>"
                   for k, v in prov["grid"].items())
    versions = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                       for k, v in sorted(prov["versions"].items()))
    plugin_rows = "".join(f"<tr><td>{html.escape(str(r.get('name')))}</td><td>{html.escape(str(r.get('file') or '-'))}"
                      f"</td><td>{html.escape(str(r.get('sha256', ''))[:16])}</td></tr>" for r in prov["plugins"])
    plugins = ("<table><caption>Plug-ins</caption><thead><tr><th>name</th><th>file</th><th>sha256</th></tr></thead>"
               f"<tbody>{plugin_rows}</tbody></table>" if plugin_rows else "")
    commits = html.escape(", ".join(prov["commits"]))
    done = int((collection.runs.status == "done").sum()) if not collection.runs.empty else 0
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in collection.warnings)
    title = ", ".join(str(r) for r in roots)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>okd-bench report: {html.escape(title)}</title><style>{STYLE}</style></head>
<body>
<h1>okd-bench report</h1>
<p class="meta">{html.escape(title)} · {done} finished runs · generated {time.strftime("%Y-%m-%d %H:%M")}</p>
<h2 id="results">Results</h2>
{markdown_table_html(results)}
{markdown_table_html(best)}
<h2 id="beyond">Calibration and diversity</h2>
{beyond_html or "<p class='note'>No run of these folders measured calibration or diversity yet.</p>"}
<h2 id="costs">Cost</h2>
{markdown_table_html(costs)}
{budget}
<h2 id="plots">Curves and bars</h2>
{images}
<h2 id="setup">Setup</h2>
<table><caption>Grid</caption><tbody>{grid}</tbody></table>
{plugins}
<table><caption>Versions (git commit: {commits})</caption><tbody>{versions}</tbody></table>
<p class="note">Settings shared by every run (config.yaml):</p>
<pre>{html.escape(yaml.safe_dump(prov["shared"], sort_keys=False))}</pre>
{f"<h2>Notes</h2><ul class='note'>{notes}</ul>" if notes else ""}
</body></html>
"""


def write_report(roots: list[Path], out: Path | None) -> int:
    """`bench report`: check the output path, build the page, write it atomically."""
    roots = [Path(r) for r in roots] or [Path("results")]
    missing = [str(r) for r in roots if not r.is_dir()]
    if missing:
        raise UsageError(f"results folder not found: {', '.join(missing)}")
    path = Path(out) if out else roots[0] / "report.html"
    if path.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out {path}: a report is an .html file")
    runs.check_output_file(path, None, "--out")
    page = build_report(roots)
    runs.write_text(path, page)
    print(f"report written to {path} ({len(page) / 1e6:.1f} MB, self-contained)")
    return 0
