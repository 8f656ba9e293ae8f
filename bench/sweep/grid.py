"""A sweep: the grid methods x backbones x datasets x seeds resolved into runs, checked before any run starts (names,
options, data, the results folder), so bad input changes nothing on disk."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import RunConfig, SweepConfig
from bench.errors import UsageError, unknown
from bench.ranges import check_options
from bench.store import runs
from bench.store.runfiles import backbone_label
from bench.sweep.budget import BUDGET, check_budget, matched_epochs, with_epochs
from bench.sweep.checks import check_compute, check_data, check_image_size, check_writable
from bench.sweep.settings import run_config
from bench.sweep.variants import Variant, fixed_options, method_names, run_label
from bench.sweep.variants import expand as expand_variants


@dataclass
class RunSpec:
    config: RunConfig
    folder: Path
    depends_on: tuple[Path, ...] = ()  # runs that must be done first (a KD student's teacher run)

    @property
    def label(self) -> str:
        return run_label(self.config)


def validate(sweep: SweepConfig) -> list[tuple[Variant, dict[str, Any]]]:
    """Check every name and number of the sweep; returns its method variants, each with its resolved options."""
    import backbones
    from bench.data import DATASETS
    from methods import METHODS

    if not str(sweep.out).strip():
        raise UsageError("out must name a folder, got an empty value")
    for kind, values in (("methods", sweep.methods), ("backbones", sweep.backbones),
                         ("datasets", sweep.datasets), ("seeds", sweep.seeds)):
        if not values:
            raise UsageError(f"no {kind} given")
        if len(set(values)) != len(values):
            raise UsageError(f"{kind} lists a value twice: {', '.join(map(str, values))}")
    variants = resolve_variants(sweep)
    for b in sweep.backbones:
        backbones.split_entry(b)
    for d in sweep.datasets:
        if d in sweep.dataset_sources:
            if d in DATASETS:
                src = sweep.dataset_sources[d]
                raise UsageError(f"dataset name '{d}' is taken by a registered dataset ({DATASETS.get(d).description})"
                                 f"; give the {src.kind} at {src.root} another name")
        else:
            DATASETS.get(d)
    check_image_size(sweep.data.image_size)
    for name, source in sweep.dataset_sources.items():
        check_image_size(source.image_size, f"dataset_sources.{name}.image_size")
    for s in sweep.seeds:
        if s < 0:
            raise UsageError(f"seeds must be non-negative integers, got {s}")
    o = sweep.optim
    for where, value, ok, valid in (
            ("epochs", sweep.epochs, 1 <= sweep.epochs <= MAX_EPOCHS, f"an integer from 1 to {MAX_EPOCHS}"),
            ("rampup_epochs", sweep.rampup_epochs,
             sweep.rampup_epochs is None or 0 <= sweep.rampup_epochs <= MAX_EPOCHS, "from 0 to the epochs"),
            ("rampup_fraction", sweep.rampup_fraction, 0 <= sweep.rampup_fraction <= 1, "from 0 to 1 (of the run)"),
            ("optim.milestone_fractions", o.milestone_fractions, all(0 <= f <= 1 for f in o.milestone_fractions),
             "fractions of the run, from 0 to 1"),
            ("data.batch_size", sweep.data.batch_size, sweep.data.batch_size >= 1, "at least 1"),
            ("data.eval_batch_size", sweep.data.eval_batch_size, sweep.data.eval_batch_size >= 1, "at least 1"),
            ("data.workers", sweep.data.workers, sweep.data.workers >= 0, "0 or more"),
            ("data.resident_gb", sweep.data.resident_gb, sweep.data.resident_gb >= 0, "0 or more (GB)"),
            ("optim.lr", o.lr, o.lr > 0, "a positive number"),
            ("optim.momentum", o.momentum, 0 <= o.momentum < 1, "from 0 to below 1"),
            ("optim.weight_decay", o.weight_decay, o.weight_decay >= 0, "0 or more"),
            ("optim.gamma", o.gamma, 0 < o.gamma <= 1, "above 0, at most 1"),
            ("optim.milestones", o.milestones, o.milestones is None or all(m >= 0 for m in o.milestones),
             "epochs, 0 or more"),
            ("optim.warmup_epochs", o.warmup_epochs, o.warmup_epochs is None or 0 <= o.warmup_epochs <= sweep.epochs,
             f"from 0 to the run's epochs ({sweep.epochs})"),
            ("optim.warmup_fraction", o.warmup_fraction, 0 <= o.warmup_fraction <= 1, "from 0 to 1 (of the run)")):
        numbers = value if isinstance(value, list) else [value]
        if not ok or any(isinstance(v, float) and not math.isfinite(v) for v in numbers):  # NaN fails every test
            raise UsageError(f"{where} must be {valid}, got {value}")
    if sweep.optim.schedule not in SCHEDULES:
        raise unknown("optim.schedule", sweep.optim.schedule, SCHEDULES)
    check_compute(sweep.compute)
    from bench.train.loggers import check_logging

    check_logging(sweep.logging)
    in_sweep = method_names(sweep.methods)
    for m in sweep.options:  # options of a method outside the grid are a mistake (a typo, a method left out)
        METHODS.get(m)
        if m not in in_sweep:
            raise UsageError(f"options for {m} are set ({', '.join(f'{m}.{k}' for k in sweep.options[m])}), but {m} "
                             f"is not in this sweep's methods ({', '.join(sweep.methods)}); add it to --methods or "
                             "drop them")
    return variants


def resolve_variants(sweep: SweepConfig) -> list[tuple[Variant, dict[str, Any]]]:
    """The grid's method dimension: each entry of `methods` (a method, or a variant `pcl[mean_teacher=off]`) crossed
    with its options' value lists; each variant with its resolved options. Two variants that come to the same
    options are refused (they would be one run twice)."""
    from methods import METHODS
    from methods.base import options_dict, resolve_options

    def options_class(method: str) -> type:
        return METHODS.get(method).Options

    variants, seen = [], {}
    for variant in expand_variants(sweep.methods, sweep.options, options_class):
        cls = options_class(variant.method)
        fixed = fixed_options(variant.method, sweep.options, cls)
        budget = variant.options.pop(BUDGET, None)  # `vanilla[budget=pcl]`: not an option of the method's own
        own = options_dict(resolve_options(variant.method, variant.options))
        variant.options = {k: own[k] for k in variant.options}  # typed: temperature=4 -> 4.0, off -> False
        resolved = options_dict(resolve_options(variant.method, {**fixed, **variant.options}))
        check_options(resolve_options(variant.method, resolved), variant.method)  # the declared ranges
        if budget is not None:
            variant.options[BUDGET] = check_budget(variant.method, budget, variant.key)
        identity = (variant.method, repr(sorted(resolved.items())), variant.options.get(BUDGET))
        if identity in seen:
            raise UsageError(f"methods: {variant.key} and {seen[identity]} resolve to the same options; give each "
                             "variant once")
        seen[identity] = variant.key
        variants.append((variant, resolved))
    return variants


MAX_EPOCHS = 100_000
SCHEDULES = ("step", "cosine")


def expand(sweep: SweepConfig, variants: list[tuple[Variant, dict[str, Any]]],
           sources: dict[str, dict[str, Any]] | None = None) -> list[RunSpec]:
    """Every run of the grid, in a stable order (dataset, backbone entry, method, seed), each folder once.

    A backbone entry `STUDENT+PARTNER` gives a method that takes partners (methods.OnlineKDMethod.partner_range)
    network i + 1 from partner i, in `<dataset>/STUDENT+PARTNER/<method>/seed<k>`; a method that takes none trains
    on STUDENT alone, the very run of the plain `STUDENT` entry. A method whose partners are trained first (KD's
    teacher: the vanilla run of TEACHER on the same dataset and seed) depends on those runs, which join the grid
    before it. `sources`: where backbones start from (bench.sweep.pretrained); a run that starts a network from
    pretrained weights is in `<dataset>/STUDENT@pretrained/...`, never in a from-scratch run's folder."""
    from backbones import split_entry
    from bench import plugins
    from methods import METHODS

    out = Path(sweep.out)
    loaded = plugins.records_for(sweep.plugins)
    entries = [split_entry(b) for b in sweep.backbones]
    any_partner = any(partners for _, partners in entries)
    specs: dict[Path, RunSpec] = {}
    for d in sweep.datasets:
        for (student, partners), entry in zip(entries, sweep.backbones):
            for v, options in variants:
                cls = METHODS.get(v.method)
                lo, hi = cls.partner_range
                used = partners if hi > 0 else []
                if len(used) < lo and not any_partner:
                    raise UsageError(f"{v.key} needs {lo} partner network{'s' if lo > 1 else ''}: give --backbones "
                                     f"STUDENT+{cls.partner_role if cls.partner_role != 'with' else 'PARTNER'} "
                                     "(e.g. cifar_resnet32+cifar_resnet110)")
                if len(used) < lo:
                    continue  # a plain entry beside partnered ones: this method runs on those
                if len(used) > hi:
                    raise UsageError(f"{v.key} takes at most {hi} partner network{'s' if hi > 1 else ''}, got "
                                     f"{len(used)} in '{entry}'")
                run_options = with_network_count(v, options, used, sweep)
                for seed in sweep.seeds:
                    needs = used and cls.needs_partner_runs(run_options)
                    deps = tuple(add_partner_run(specs, sweep, out, d, p, seed, loaded, sources) for p in used) \
                        if needs else ()
                    entry_folder = "+".join(backbone_label(b, sources) for b in [student, *used])
                    folder = runs.run_dir(out, d, entry_folder, v.key, seed)
                    config = run_config(sweep, v.method, student, d, seed, run_options, loaded, v.options, used,
                                        sources)
                    if BUDGET in v.options:  # the epochs that match the named method's training compute
                        config = budget_config(sweep, v, config, variants, entry, loaded, sources)
                    specs.setdefault(folder, RunSpec(config, folder, deps))
    return list(specs.values())


def budget_config(sweep: SweepConfig, variant: Variant, config: Any, variants: list, entry: str,
                  loaded: list[dict[str, str]], sources: dict[str, dict[str, Any]] | None) -> Any:
    """`config` of a budget-matched variant at the epochs whose training FLOPs come closest to its budget method's
    run on the same backbone entry and dataset (that method's own options in this sweep)."""
    from backbones import split_entry
    from methods import METHODS
    from methods.base import options_dict, resolve_options

    name = variant.options[BUDGET]
    cls = METHODS.get(name)
    student, partners = split_entry(entry)
    used = partners if cls.partner_range[1] > 0 else []
    if len(used) < cls.partner_range[0] or len(used) > cls.partner_range[1]:
        raise UsageError(f"{variant.key}: {name} cannot run on '{entry}', so it sets no budget there")
    options = next((o for v, o in variants if v.method == name and not v.options), None) or options_dict(
        resolve_options(name, fixed_options(name, sweep.options, cls.Options)))
    target = run_config(sweep, name, student, config.dataset, config.seed, options, loaded, {}, used, sources)
    record = matched_epochs(config, target, variant.key)
    matched = run_config(with_epochs(sweep, record["epochs"]), config.method, student, config.dataset, config.seed,
                         config.options, loaded, variant.options, config.partners, sources)
    matched.budget = record
    return matched


def with_network_count(variant: Variant, options: dict[str, Any], partners: list[str],
                       sweep: SweepConfig) -> dict[str, Any]:
    """A method of independent networks on STUDENT+PARTNER+...: as many networks as the entry names (an explicit
    different `num_networks` is refused)."""
    if not partners or "num_networks" not in options:
        return options
    wanted = 1 + len(partners)
    given = variant.options.get("num_networks", (sweep.options.get(variant.method) or {}).get("num_networks"))
    if given is not None and given != wanted:
        raise UsageError(f"{variant.key}: num_networks={given}, but the backbone entry names {wanted} networks "
                         f"(the student and {len(partners)} partner{'s' if len(partners) > 1 else ''})")
    return {**options, "num_networks": wanted}


def add_partner_run(specs: dict[Path, RunSpec], sweep: SweepConfig, out: Path, dataset: str, backbone: str, seed: int,
                    loaded: list[dict[str, str]], sources: dict[str, dict[str, Any]] | None = None) -> Path:
    """The vanilla run of `backbone` (a teacher, fine-tuned from its own pretrained weights where it has them) in the
    grid, once; returns its folder."""
    from methods.base import options_dict, resolve_options

    folder = runs.run_dir(out, dataset, backbone_label(backbone, sources), "vanilla", seed)
    if folder not in specs:
        config = run_config(sweep, "vanilla", backbone, dataset, seed, options_dict(resolve_options("vanilla", {})),
                            loaded, pretrained=sources)
        specs[folder] = RunSpec(config, folder)
    return folder


def prepare(sweep: SweepConfig) -> list[RunSpec]:
    """Validate the sweep's names and numbers, its results folder and its data; return its runs."""
    variants = validate(sweep)
    check_writable(Path(sweep.out))
    check_data(sweep)
    from bench.sweep.pretrained import resolve_pretrained

    specs = expand(sweep, variants, resolve_pretrained(sweep))
    from bench.files import check_path

    for spec in specs:  # e.g. a variant of many options: its folder name past the file system's limit
        check_path(spec.folder, "run folder")
    return specs


def schedule_line(sweep: SweepConfig, methods: list[str] | None = None) -> str:
    """The resolved schedule, printed when a sweep starts; a part that cannot act within the run is named in a
    warning line of its own. The KD ramp-up is named only where one of `methods` (None: any) has one."""
    from bench.sweep.settings import resolved_schedule, resolved_warmup
    from methods import METHODS

    milestones, rampup = resolved_schedule(sweep)
    ramped = methods is None or any(getattr(METHODS.get(m), "uses_rampup", True) for m in methods)
    how = "as given" if sweep.optim.milestones is not None else (
        "fractions " + "/".join(f"{f:g}" for f in sweep.optim.milestone_fractions) + " of the run")
    ramp_how = "as given" if sweep.rampup_epochs is not None else f"{sweep.rampup_fraction:.4g} of the run"
    if sweep.optim.schedule == "cosine":
        lr_text = f"lr {sweep.optim.lr:g} cosine to 0"
        milestones = []
    else:
        at = ", ".join(map(str, milestones)) or "none"
        lr_text = f"lr {sweep.optim.lr:g} x{sweep.optim.gamma:g} at epochs {at} ({how})"
    warmup = resolved_warmup(sweep)
    text = f"schedule: {sweep.epochs} epochs, {lr_text}"
    if warmup > 0:
        text += f", linear warm-up over {warmup:g} epochs"
    if ramped:
        text += f"; KD ramp-up over {rampup:g} epochs ({ramp_how})"
    if sweep.data.sampler != "random":
        text += f"; {sweep.data.sampler.replace('_', '-')} batches, {sweep.data.per_class} images per class"
    if sweep.protocol != "common":
        text += f"; recipe: {sweep.protocol}"
    late = [m for m in milestones if m >= sweep.epochs]
    if late:
        text += (f"\nwarning: lr milestone{'s' if len(late) > 1 else ''} {', '.join(map(str, late))} "
                 f"{'are' if len(late) > 1 else 'is'} not before the last epoch ({sweep.epochs}): the lr never drops "
                 "there")
    if ramped and rampup > sweep.epochs:
        text += (f"\nwarning: the KD ramp-up ({rampup:g} epochs) is longer than the run ({sweep.epochs}): distillation "
                 f"ends at weight {_rampup_weight(sweep.epochs, rampup):.2f} of its full strength")
    return text


def _rampup_weight(epoch: float, rampup: float) -> float:
    from methods.losses import sigmoid_rampup

    return float(sigmoid_rampup(epoch, rampup))


def check_run_folders(specs: list[RunSpec], force: bool, sweep: SweepConfig | None = None) -> None:
    """Each run folder that exists holds this very run (bench.store.identity.check_run_folder). A run folder made before
    the schedule followed --epochs keeps the schedule it recorded (unless the sweep gives one explicitly), so it
    stays done, or resumes as it started."""
    from bench.store.identity import check_run_folder

    kept = 0
    for spec in specs:
        if sweep is not None and not force:
            kept += keep_recorded_schedule(spec, sweep)
        check_run_folder(spec.folder, spec.config, force)
    if kept:
        print(f"note: {kept} run folder{'s' if kept > 1 else ''} made before the schedule followed --epochs keep "
              "their recorded lr milestones and ramp-up")


def keep_recorded_schedule(spec: RunSpec, sweep: SweepConfig) -> bool:
    """Adopt the lr milestones and ramp-up recorded by a run folder written before they were fractions of the run;
    True when that changed the run's config."""
    from bench.config import parse_yaml
    from bench.store import records

    try:
        raw = parse_yaml(records.read_text(spec.folder / runs.CONFIG) or "")
    except Exception:  # an unreadable config is check_run_folder's to report
        return False
    optim = raw.get("optim") if isinstance(raw, dict) else None
    if not isinstance(optim, dict) or "milestone_fractions" in optim:
        return False
    before = (list(spec.config.optim.milestones), spec.config.rampup_epochs)
    recorded = optim.get("milestones")
    if sweep.optim.milestones is None and isinstance(recorded, list) and all(isinstance(m, int) for m in recorded):
        spec.config.optim.milestones = list(recorded)
    ramp = raw.get("rampup_epochs")
    if sweep.rampup_epochs is None and isinstance(ramp, (int, float)) and not isinstance(ramp, bool):
        spec.config.rampup_epochs = float(ramp)
    return (list(spec.config.optim.milestones), spec.config.rampup_epochs) != before
