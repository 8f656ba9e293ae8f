"""Regenerate the README's picture from a real run of the main command (`bench run`: every method on digits).

    .venv/bin/python docs/figures/make_figures.py            # runs `bench run --out results/readme`, then draws
    .venv/bin/python docs/figures/make_figures.py --no-run   # only redraw from results/readme

Writes docs/figures/first_sweep.png: the sweep's results table (as `bench table` prints it) beside its final-error
bars (the sweep's own plots/final_digits.png)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "results" / "readme"


def table_rows(markdown: str) -> tuple[str, list[list[str]]]:
    """The title and the cells of the first pipe table of `bench table`'s Markdown."""
    lines = markdown.splitlines()
    title = next((x.strip("* ") for x in lines if x.startswith("**")), "")
    rows = [[c.strip().replace("**", "") for c in x.strip().strip("|").split("|")] for x in lines if x.startswith("|")]
    return title, [r for r in rows if not set("".join(r)) <= set("-: ")]


def draw(out: Path, target: Path) -> None:
    title, rows = table_rows((out / "tables" / "results.md").read_text())
    bars = mpimg.imread(out / "plots" / "final_digits.png")
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1.0, 1.25]})
    left.axis("off")
    left.set_title(title, fontsize=10, loc="left")
    table = left.table(cellText=rows[1:], colLabels=rows[0], loc="upper left", cellLoc="right", colLoc="right")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1.0, 1.35)
    for (_row, column), cell in table.get_celld().items():
        if column == 0:  # the method names, left-aligned as in the Markdown table
            cell.get_text().set_horizontalalignment("left")
            cell.PAD = 0.04
    right.imshow(bars)
    right.axis("off")
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    print(f"wrote {target}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-run", action="store_true", help="redraw from results/readme without running")
    args = parser.parse_args()
    if not args.no_run:
        bench = Path(sys.executable).parent / "bench"
        subprocess.run([str(bench), "run", "--out", str(OUT), "--no-progress"], check=True, cwd=ROOT)
    draw(OUT, ROOT / "docs" / "figures" / "first_sweep.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
