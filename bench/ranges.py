"""Declared ranges of options: where a method's option is declared (its `Options` dataclass field), its valid range or
choices are declared with it, and one checker applies them to built-in methods and plug-ins alike, before any run.

    temperature: float = option(3.0, gt=0, label="T")
    ema_decay: float = option(0.999, ge=0, le=1)
    teacher: str = option("minlogit", choices=("minlogit", "naive", "linear"))
    lr_scales: list[float] = option(default_factory=list, gt=0)      # a list: every item in the range

The metadata keys are plain (`ge`, `gt`, `le`, `lt`, `choices`), so a plug-in may write
`field(default=1.0, metadata={"ge": 0})` without importing this module; a field that declares nothing is only checked
to be finite.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from bench.errors import UsageError, did_you_mean

BOUNDS = ("ge", "gt", "le", "lt")
MAX_MEMBERS = 16  # networks, peers or branches of one method: the student and up to 15 partners


def option(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, ge: float | None = None,
           gt: float | None = None, le: float | None = None, lt: float | None = None,
           choices: tuple[Any, ...] | None = None, label: str | None = None, **metadata: Any) -> Any:
    """A dataclass field with its valid range (`ge`/`gt` below, `le`/`lt` above) or `choices`, and its row label."""
    declared = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt), ("choices", choices),
                                   ("label", label)) if v is not None}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={**declared, **metadata})
    return dataclasses.field(default=default, metadata={**declared, **metadata})


def describe(meta: Any) -> str:
    """The declared range in words: 'above 0', 'from 0 to 1', 'one of a, b', '' when nothing is declared."""
    if meta.get("choices") is not None:
        return "one of " + ", ".join(format_value(c) for c in meta["choices"])
    low = f"above {format_value(meta['gt'])}" if meta.get("gt") is not None else (
        f"at least {format_value(meta['ge'])}" if meta.get("ge") is not None else "")
    high = f"below {format_value(meta['lt'])}" if meta.get("lt") is not None else (
        f"at most {format_value(meta['le'])}" if meta.get("le") is not None else "")
    if meta.get("ge") is not None and meta.get("le") is not None:
        return f"from {format_value(meta['ge'])} to {format_value(meta['le'])}"
    return ", ".join(p for p in (low, high) if p)


def declared(meta: Any) -> bool:
    return any(meta.get(k) is not None for k in (*BOUNDS, "choices"))


def in_range(value: Any, meta: Any) -> bool:
    """Whether one value is within the declared bounds or choices (a bool is never a number here)."""
    choices = meta.get("choices")
    if choices is not None:
        return value in choices
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return True  # a type error is the type check's to report
    for key, ok in (("ge", lambda b: value >= b), ("gt", lambda b: value > b), ("le", lambda b: value <= b),
                    ("lt", lambda b: value < b)):
        if meta.get(key) is not None and not ok(meta[key]):
            return False
    return True


def check_options(opts: Any, method: str) -> None:
    """Every field of a method's options dataclass within its declared range (each item of a list), and every number
    finite; a refusal is one line naming the option, the value and the valid range."""
    for f in dataclasses.fields(opts):
        value = getattr(opts, f.name)
        items = value if isinstance(value, (list, tuple)) else [value]
        where = f"{method}.{f.name}"
        for item in items:
            if isinstance(item, float) and not math.isfinite(item):
                raise UsageError(f"{where} must be a finite number, got {format_value(value)}")
            if declared(f.metadata) and not in_range(item, f.metadata):
                choices = f.metadata.get("choices")
                hint = did_you_mean(item, [str(c) for c in choices]) if choices and isinstance(item, str) else ""
                raise UsageError(f"{where} must be {describe(f.metadata)}, got {format_value(item)}{hint}")


def format_value(value: Any) -> str:
    """A value as the command line writes it: on/off for booleans, floats without trailing zeros (4.0 -> 4)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
