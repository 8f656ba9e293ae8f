"""The docs cannot drift from the CLI: every `bench ...` command line in the README and the guides under docs/ is
accepted by the argument parser (nothing runs), and every guide the README links exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from bench.cli.parser import make_parser, parse_command_line

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def command_lines(page: Path) -> list[str]:
    """`bench ...` lines of fenced code blocks (inline spans such as `bench export` name a command, not a line)."""
    found, fence = [], None
    for line in page.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else (stripped[3:] or "bash")
            continue
        if fence in ("bash", "sh", "console") and stripped.removeprefix("$ ").startswith("bench "):
            found.append(stripped.removeprefix("$ "))
    return found


def argv_of(line: str) -> list[str]:
    line = re.split(r"\s+#\s", line)[0]  # a trailing comment
    line = line.split(" | ")[0].split(" && ")[0].rstrip(" &")
    return shlex.split(line)[1:]


CASES = [(page.relative_to(ROOT).as_posix(), line) for page in PAGES for line in command_lines(page)]


def test_the_docs_hold_many_commands():
    assert len(CASES) >= 50 and {page for page, _ in CASES} >= {"README.md", "docs/methods.md", "docs/results.md"}


@pytest.mark.parametrize("page,line", CASES, ids=[f"{p}:{i}" for i, (p, _) in enumerate(CASES)])
def test_every_documented_command_is_accepted_by_the_parser(page, line):
    args = parse_command_line(make_parser(), argv_of(line))
    for item in getattr(args, "overrides", []) or []:  # `bench run ... key=value`: each a key=value (or the `...`)
        assert item == "..." or "=" in item, f"{page}: '{item}' in `{line}` is not key=value"


def test_every_linked_guide_exists():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#]+?\.(?:md|py|png|sh|yaml))(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), f"{page.name} links {target}, which does not exist"
