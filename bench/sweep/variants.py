"""Variants of a method as rows of one sweep: `pcl[mean_teacher=off]` on the command line (or in a config file's
`methods:`), and option value lists `pcl.temperature=2,3,4` (a YAML list in a config file) as a grid dimension, as in
Hydra's multirun. Each variant is its own run folder (`pcl+mean_teacher=off`), table row and plot colour.

A variant's key names only the options that make it a variant (bracketed or swept), sorted, with their resolved
values: `pcl`, `pcl+temperature=4`, `pcl+ensemble_teacher=off+temperature=2`. Options set once for a method
(`pcl.temperature=4`) apply to all its runs and do not change folder names, as before variants existed.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from bench.errors import UsageError, did_you_mean
from bench.ranges import format_value  # noqa: F401  (also used from here)

_ENTRY = re.compile(r"^([A-Za-z0-9_.-]+)(?:\[(.*)\])?$", re.S)


@dataclass
class Variant:
    method: str  # the registered method
    options: dict[str, Any] = field(default_factory=dict)  # the options that make it a variant (resolved values)

    @property
    def key(self) -> str:
        return variant_key(self.method, self.options)


def variant_key(method: str, options: dict[str, Any]) -> str:
    """`method` or `method+opt=value+...` (sorted): the run folder's and the table row's name."""
    return "+".join([method, *(f"{k}={format_value(options[k])}" for k in sorted(options))])


def run_label(config: Any) -> str:
    """`dataset/backbone[+partner]/method[+variant]/seed<k>`: how a run is named in launcher lines, progress bars and
    trackers (its folder's path below the sweep, for a run the grid made)."""
    from bench.store.runfiles import backbone_label

    started = getattr(config, "pretrained", None)
    backbone = "+".join(backbone_label(b, started) for b in [config.backbone, *getattr(config, "partners", [])])
    return f"{config.dataset}/{backbone}/{variant_key(config.method, config.variant)}/seed{config.seed}"


def split_top_level(text: str, what: str = "--methods") -> list[str]:
    """Split on commas outside brackets: 'pcl,pcl[a=1,b=2]' -> ['pcl', 'pcl[a=1,b=2]']."""
    items, depth, current = [], 0, ""
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise UsageError(f"{what} '{text}': a ']' without its '['")
        if ch == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += ch
    if depth:
        raise UsageError(f"{what} '{text}': a '[' is not closed (a variant is NAME[option=value,...])")
    items.append(current.strip())
    if any(not item for item in items):
        raise UsageError(f"{what} '{text}': expected a comma-separated list without empty items")
    return items


def parse_entry(entry: str) -> tuple[str, dict[str, Any]]:
    """'pcl[mean_teacher=off,temperature=4]' -> ('pcl', {'mean_teacher': 'off', 'temperature': 4}) (raw values)."""
    from bench.config import parse_yaml

    match = _ENTRY.match(str(entry).strip())
    if not match:
        raise UsageError(f"method entry '{entry}' is malformed: a method is NAME or NAME[option=value,...], e.g. "
                         "pcl[mean_teacher=off]")
    name, inside = match.group(1), match.group(2)
    options: dict[str, Any] = {}
    if inside is None:
        return name, options
    if not inside.strip():
        raise UsageError(f"method entry '{entry}': empty brackets (give option=value inside, or drop them)")
    for part in split_top_level(inside, f"method entry '{entry}'"):
        key, sep, raw = part.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise UsageError(f"method entry '{entry}': '{part}' is not option=value (e.g. {name}[temperature=4])")
        if key.strip() in options:
            raise UsageError(f"method entry '{entry}': option '{key.strip()}' is given twice")
        try:
            options[key.strip()] = parse_yaml(raw.strip())
        except Exception:
            options[key.strip()] = raw.strip()
    return name, options


def method_names(entries: list[str]) -> list[str]:
    """The registered methods an entry list names, each once, in order."""
    return list(dict.fromkeys(parse_entry(e)[0] for e in entries))


def _field_types(options_cls: type | None) -> dict[str, Any]:
    if options_cls is None:
        return {}
    hints = typing.get_type_hints(options_cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(options_cls)}


def is_sweep(value: Any, tp: Any) -> bool:
    """Whether `value` given for an option of type `tp` is a list of values to sweep (one run each): a list for an
    option that is not a list (a list of lists for one that is)."""
    if not isinstance(value, list):
        return False
    takes_list = typing.get_origin(tp) in (list, tuple) or tp in (list, tuple)
    return not takes_list or (bool(value) and all(isinstance(v, list) for v in value))


def expand(entries: list[str], sweep_options: dict[str, dict[str, Any]],
           options_class: typing.Callable[[str], type | None] = lambda m: None) -> list[Variant]:
    """Every variant of the grid's method dimension, in the order given: each entry, crossed with the value lists
    among its method's sweep-wide options. `options_class(method)` gives the method's Options class where it is
    known (None: any list is a sweep). Raw values; resolve() types them."""
    out: list[Variant] = []
    for entry in entries:
        method, own = parse_entry(entry)
        types = _field_types(options_class(method))
        for key in own:
            if types and key not in types and key != "budget":  # budget=<method>: any method's (bench.sweep.budget)
                raise UsageError(f"method entry '{entry}': {method} has no option '{key}'{did_you_mean(key, types)} "
                                 f"(valid: {', '.join(types)})")
        swept = {k: v for k, v in (sweep_options.get(method) or {}).items()
                 if k not in own and is_sweep(v, types.get(k, Any))}
        for key, values in swept.items():
            if not values:
                raise UsageError(f"{method}.{key}: an empty list of values to sweep")
        for combo in itertools.product(*swept.values()) if swept else [()]:
            out.append(Variant(method, {**dict(zip(swept, combo)), **own}))
    return out


def fixed_options(method: str, sweep_options: dict[str, dict[str, Any]], options_cls: type | None) -> dict[str, Any]:
    """A method's sweep-wide options that are single values (applied to all its runs)."""
    types = _field_types(options_cls)
    return {k: v for k, v in (sweep_options.get(method) or {}).items() if not is_sweep(v, types.get(k, Any))}


def variant_label(options_cls: type | None, options: dict[str, Any], budget: dict[str, Any] | None = None) -> str:
    """The row label's suffix: 'w/o mean teacher', 'T=4' (an option's `label` metadata, else its name in words); a
    budget-matched run's 'at PCL's compute (4.0x epochs)' (`budget`: its record)."""
    labels = {f.name: f.metadata.get("label") for f in dataclasses.fields(options_cls)} if options_cls else {}
    parts = []
    if budget:
        from bench.sweep.budget import budget_label

        parts.append(budget_label(budget))
    for key in sorted(k for k in options if not (budget and k == "budget")):
        name = labels.get(key) or key.replace("_", " ")
        value = options[key]
        if value is False or value == "off":
            parts.append(f"w/o {name}")
        elif value is True or value == "on":
            parts.append(f"with {name}")
        else:
            parts.append(f"{name}={format_value(value)}")
    return ", ".join(parts)
