"""Plug-ins: users' own methods, backbones and datasets, registered through the public API
(`methods.register_method`, `backbones.register_backbone`, `bench.data.register_dataset`) by their own module.

A plug-in is found three ways: an installed package's entry point in the group `okd_bench.plugins` (its
value names the module to import, e.g. `my_okd = my_package.okd`), `--plugin MODULE_OR_FILE.py`
(repeatable), and a `plugins:` list in a `--config` YAML. Importing it registers its names. Each loaded
plug-in is recorded as {name, source, file, sha256}; a run keeps those records in its config.yaml and
summary.json, and a job (local subprocess, SLURM task, requeue) re-imports the same plug-ins and refuses to
go on when a file's content changed since the run was set up.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from typing import Any

from bench.errors import UsageError

ENTRY_POINT_GROUP = "okd_bench.plugins"

_loaded: dict[str, dict[str, str]] = {}  # key (resolved file, or module name) -> record
_entry_points_done = False


def file_sha256(path: Path) -> str:
    from bench.files import sha256_of

    return sha256_of(path)


def is_file_spec(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def resolve_spec(spec: str, base: Path | None = None) -> str:
    """A plug-in as the config records it: a file as an absolute path (relative ones are taken from `base`, the
    folder of the config file that names them, or the working directory), a module name as given. A module
    name that is not importable but is a file `NAME.py` in the working directory means that file."""
    spec = str(spec).strip()
    if not spec:
        raise UsageError("a plug-in is empty: give a module name or a .py file")
    if is_file_spec(spec):
        path = Path(spec).expanduser()
        if not path.is_absolute():
            path = (base or Path.cwd()) / path
        return str(path.resolve())
    local = Path.cwd() / f"{spec}.py"
    if importlib.util.find_spec(spec.split(".")[0]) is None and local.is_file():
        return str(local.resolve())
    return spec


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _record(name: str, source: str, file: str | None) -> dict[str, str]:
    return {"name": name, "source": source, "file": file or "", "sha256": file_sha256(Path(file)) if file else ""}


def _import_file(path: Path) -> Any:
    name = f"okd_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise UsageError(f"plug-in {path} cannot be imported: not a Python source file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load_plugin(spec: str) -> dict[str, str]:
    """Import one plug-in (a resolved spec) once per process; returns its record. Any failure is one line
    naming the plug-in and the first line of its error."""
    if spec in _loaded:
        return _loaded[spec]
    _registries()  # built-in names first, so a plug-in that takes one is told so
    try:
        if is_file_spec(spec):
            path = Path(spec)
            if path.is_dir():
                raise UsageError(f"plug-in {path} is a folder: give a .py file, or the name of an importable module "
                                 "(a package)")
            if not path.is_file():
                raise UsageError(f"plug-in file {path} not found")
            _import_file(path)
            record = _record(path.stem, "file", str(path))
        else:
            try:
                module = importlib.import_module(spec)
            except ModuleNotFoundError as err:
                if err.name and spec.startswith(err.name):
                    raise UsageError(f"plug-in module '{spec}' not found: give an importable module name or the "
                                     "path of a .py file") from None
                raise
            record = _record(spec, "module", getattr(module, "__file__", None))
    except UsageError:
        raise
    except SyntaxError as err:
        raise UsageError(f"plug-in {spec} does not import: SyntaxError: {err.msg} (line {err.lineno})") from None
    except SystemExit as err:  # a plug-in that exits at import would end bench with its code and no word
        raise UsageError(f"plug-in {spec} does not import: it calls sys.exit({err.code!r}) while being imported"
                         ) from None
    except Exception as err:
        raise UsageError(f"plug-in {spec} does not import: {_first_line(err)}") from None
    _loaded[spec] = record
    return record


def load_entry_points() -> list[dict[str, str]]:
    """Import every installed package's `okd_bench.plugins` entry point (once per process)."""
    global _entry_points_done
    if _entry_points_done:
        return [r for r in _loaded.values() if r["source"] == "entry point"]
    _entry_points_done = True
    _registries()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = f"entry point {ep.name}"
        try:
            module = ep.load()
        except (Exception, SystemExit) as err:
            raise UsageError(f"plug-in entry point '{ep.name} = {ep.value}' (group {ENTRY_POINT_GROUP}) does not "
                             f"import: {_first_line(err)}") from None
        _loaded[key] = _record(ep.name, "entry point", getattr(module, "__file__", None))
    return [r for r in _loaded.values() if r["source"] == "entry point"]


def load_plugins(specs: list[str]) -> list[dict[str, str]]:
    """Entry points, then `specs` (resolved) in order: the records of every plug-in now loaded."""
    load_entry_points()
    for spec in specs:
        load_plugin(spec)
    return loaded()


def loaded() -> list[dict[str, str]]:
    """Every plug-in this process imported."""
    return [dict(r) for r in _loaded.values()]


def records_for(specs: list[str]) -> list[dict[str, str]]:
    """What a sweep with plug-ins `specs` runs with: the installed entry points and those plug-ins (loading them
    when needed), and nothing else this process happened to import before."""
    load_plugins(specs)
    return [dict(r) for r in _loaded.values() if r["source"] == "entry point"] + [dict(_loaded[s]) for s in specs]


def check_unchanged(recorded: list[dict[str, Any]], where: str) -> None:
    """Every plug-in file recorded when a run was set up still has the recorded content."""
    for rec in recorded or []:
        file = rec.get("file") or ""
        if not file or not rec.get("sha256"):
            continue
        path = Path(file)
        if not path.is_file():
            raise UsageError(f"{where}: plug-in {rec.get('name')} ({file}) is gone; restore it, or use --force "
                             "to start the run again")
        now = file_sha256(path)
        if now != rec["sha256"]:
            raise UsageError(f"{where}: plug-in {rec.get('name')} ({file}) changed since the run started (sha256 "
                             f"{rec['sha256'][:12]} then, {now[:12]} now); restore it, or use --force to start the "
                             "run again with the new code")


def activate(plugins: list[str], recorded: list[dict[str, Any]], where: str) -> None:
    """In a job: import the run's plug-ins and check their files are the ones the run was set up with."""
    load_plugins(plugins)
    check_unchanged(recorded, where)


def _registries() -> None:
    import backbones  # noqa: F401
    import bench.data  # noqa: F401
    import methods  # noqa: F401
