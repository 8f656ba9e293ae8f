"""User-facing errors: the CLI prints them as one line and exits non-zero, never a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UsageError(Exception):
    """Bad input from the user (a name, a value, a file): printed as one line by the CLI."""


class NoResults(Exception):
    """A results folder with nothing to show (no run, or no finished run): one line, exit code 1, for table, plot,
    report and status alike."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """'; did you mean X?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def unknown(kind: str, word: str, choices: Iterable[str]) -> UsageError:
    """The standard error for a name that is not one of `choices`."""
    choices = list(choices)
    shown = ", ".join(choices[:30]) + (", ..." if len(choices) > 30 else "")
    return UsageError(f"unknown {kind} '{word}'{did_you_mean(word, choices)} (valid: {shown})")
