"""The plugin manager: entry points of group ``xt``, the core's built-ins, allow/block lists,
broken-plugin isolation and the registry of everything plugins registered.

Plugins are modules (or objects) with ``@xt.hookimpl`` functions. Third-party plugins are found
through ``[project.entry-points.xt]``; the core's own defaults are registered the same way, so they
can be listed, overridden by name and disabled like any other plugin.
"""

from __future__ import annotations

import difflib
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy

from xt import hookspecs
from xt.errors import PluginConflictError, UnknownNameError, XtError
from xt.specs import HOOK_OF_KIND, SPEC_KINDS, ModelSpec, Spec

ENTRY_POINT_GROUP = "xt"
PLUGINS_DIR_ENV = "XT_PLUGINS_DIR"
BUILTIN_PLUGINS = ("xt.builtins",)
CORE_DIST = "xt-core"


@dataclass
class PluginInfo:
    """What ``xt plugins`` reports about one plugin: its status, every error and every name conflict."""

    name: str
    dist: str
    version: str
    hooks: list[str] = field(default_factory=list)
    status: str = "ok"  # ok | broken | disabled
    errors: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    @property
    def error(self) -> str | None:
        """All errors in one line (None when there are none)."""
        return "; ".join(self.errors) or None

    def fail(self, message: str) -> None:
        """Record an error: the plugin (or part of it) was skipped."""
        self.status = "broken"
        if message not in self.errors:
            self.errors.append(message)

    def as_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "distribution": self.dist, "version": self.version, "hooks": self.hooks,
             "status": self.status}
        if self.errors:
            d["error"] = self.error
            d["errors"] = list(self.errors)
        if self.conflicts:
            d["conflicts"] = list(self.conflicts)
        return d


_pm: pluggy.PluginManager | None = None
_infos: dict[str, PluginInfo] = {}
_reported: set[str] = set()
_registry: Registry | None = None
_registry_key: tuple | None = None


def _report(message: str) -> None:
    """Print a plugin problem to stderr once per process."""
    if message not in _reported:
        _reported.add(message)
        print(f"xt: {message}", file=sys.stderr)


def _name_list(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def _version() -> str:
    from xt import __version__

    return __version__


def _hooks_of(pm: pluggy.PluginManager, plugin: Any) -> list[str]:
    return sorted(caller.name for caller in (pm.get_hookcallers(plugin) or []))


def unknown_hook_problem(plugin: Any) -> str | None:
    """If the plugin marks a function that is not an xt hook, say which and suggest the nearest."""
    known = hook_names()
    for attr in dir(plugin):
        obj = getattr(plugin, attr, None)
        if callable(obj) and hasattr(obj, "xt_impl") and attr not in known:
            near = difflib.get_close_matches(attr, known, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            return f"'{attr}' is marked @hookimpl but is not an xt hook{hint}; known hooks: {', '.join(known)}"
    return None


def hook_names() -> list[str]:
    """The names of every xt hook."""
    return [name for name in vars(hookspecs) if hasattr(getattr(hookspecs, name), "xt_spec")]


def register_plugin(pm: pluggy.PluginManager, plugin: Any, name: str, dist: str, version: str) -> PluginInfo:
    """Register one plugin object, validating its hooks; a bad plugin is recorded as broken."""
    info = PluginInfo(name=name, dist=dist, version=version)
    _infos[name] = info
    problem = unknown_hook_problem(plugin)
    if problem is None:
        try:
            pm.register(plugin, name=name)
            pm.check_pending()
        except Exception as exc:  # pluggy.PluginValidationError and friends
            if pm.is_registered(plugin):
                pm.unregister(plugin)
            problem = f"{type(exc).__name__}: {exc}"
    if problem:
        info.fail(problem)
        _report(f"plugin '{name}' from {dist} is broken and was skipped: {problem}")
    else:
        info.hooks = _hooks_of(pm, plugin)
    return info


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loading built-ins and entry points on first use."""
    global _pm
    if _pm is not None:
        return _pm
    pm = pluggy.PluginManager("xt")
    pm.add_hookspecs(hookspecs)
    _pm = pm
    allow = _name_list("XT_LOAD_PLUGINS")
    block = _name_list("XT_DISABLE_PLUGINS") or set()
    import importlib

    for modname in BUILTIN_PLUGINS:
        if modname in block:
            _infos[modname] = PluginInfo(name=modname, dist=CORE_DIST, version=_version(), status="disabled")
            continue
        register_plugin(pm, importlib.import_module(modname), modname, CORE_DIST, _version())
    entry_points = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    _report_unknown_names(allow, block, entry_points)
    for ep in entry_points:
        dist = ep.dist.name if ep.dist is not None else "unknown"
        version = ep.dist.version if ep.dist is not None else "?"
        if (allow is not None and ep.name not in allow and dist not in allow) or ep.name in block or dist in block:
            _infos[ep.name] = PluginInfo(name=ep.name, dist=dist, version=version, status="disabled")
            continue
        if ep.name in _infos and _infos[ep.name].status != "disabled":
            continue  # the same distribution installed twice on the path
        _load_and_register(pm, ep.name, dist, version, ep.load)
    for name, path in _plugins_dir_modules():
        _load_and_register(pm, name, f"{PLUGINS_DIR_ENV}/{path.name}", "0", lambda p=path: _import_file(p))
    return pm


def _load_and_register(pm: pluggy.PluginManager, name: str, dist: str, version: str, load: Callable[[], Any]) -> None:
    """Import one plugin and register it; an import error marks it broken (reported once)."""
    try:
        plugin = load()
    except Exception as exc:
        info = PluginInfo(name=name, dist=dist, version=version)
        info.fail(f"import failed: {type(exc).__name__}: {exc}")
        _infos[name] = info
        _report(f"plugin '{name}' from {dist} failed to import and was skipped: {type(exc).__name__}: {exc}")
        if os.environ.get("XT_DEBUG"):
            traceback.print_exc()
        return
    register_plugin(pm, plugin, name, dist, version)


def _plugins_dir_modules() -> list[tuple[str, Path]]:
    """``(plugin name, file)`` for each ``*.py`` in ``$XT_PLUGINS_DIR`` (plugins tried without packaging)."""
    folder = os.environ.get(PLUGINS_DIR_ENV)
    if not folder:
        return []
    if not os.path.isdir(folder):
        _report(f"{PLUGINS_DIR_ENV}={folder} is not a folder; no plugins were loaded from it")
        return []
    return [(f"dir:{path.stem}", path) for path in sorted(Path(folder).glob("*.py")) if not path.name.startswith("_")]


def _import_file(path: Path) -> Any:
    """Import a plugin module from a file (its folder goes on ``sys.path`` so it can import its neighbours)."""
    import importlib.util

    module_name = f"xt_plugins_dir.{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _report_unknown_names(allow: set[str] | None, block: set[str], entry_points: list[Any]) -> None:
    """Say so when XT_LOAD_PLUGINS / XT_DISABLE_PLUGINS name a plugin that is not installed."""
    known = set(BUILTIN_PLUGINS)
    for ep in entry_points:
        known.add(ep.name)
        if ep.dist is not None:
            known.add(ep.dist.name)
    for var, names in (("XT_LOAD_PLUGINS", allow or set()), ("XT_DISABLE_PLUGINS", block)):
        for name in sorted(names - known):
            near = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            _report(f"{var} names '{name}', which is not an installed plugin (entry-point or distribution "
                    f"name).{hint} Installed: {', '.join(sorted(known))}.")


def plugin_infos() -> list[PluginInfo]:
    """Every plugin seen: loaded, broken or disabled."""
    get_registry()  # hook failures mark plugins broken
    return list(_infos.values())


def reset() -> None:
    """Forget the plugin manager and registry (tests, or after installing a plugin)."""
    global _pm, _registry, _registry_key
    _pm, _registry, _registry_key = None, None, None
    _infos.clear()
    _reported.clear()


class Registry:
    """Everything registered through the five registration hooks, with lookup by name or alias."""

    def __init__(self) -> None:
        self._by_kind: dict[str, dict[str, list[Spec]]] = {k: {} for k in SPEC_KINDS}
        self._specs: dict[str, list[Spec]] = {k: [] for k in SPEC_KINDS}

    def refusal(self, kind: str, spec: Spec) -> str | None:
        """Why ``spec`` may not be added: it takes a core name, or its distribution already has the name."""
        singular = kind[:-1]
        for key in dict.fromkeys((spec.name, *spec.aliases)):
            for other in self._by_kind[kind].get(key, []):
                if other.plugin == CORE_DIST and spec.plugin != CORE_DIST:
                    return (f"{singular} '{spec.name}' re-registers the core's {singular} name '{key}' and was "
                            f"skipped; give it another name")
                if other.plugin == spec.plugin:
                    return f"{singular} name '{key}' is registered twice by {spec.plugin}; the second one was skipped"
        return None

    def add(self, kind: str, spec: Spec) -> None:
        self._specs[kind].append(spec)
        for key in dict.fromkeys((spec.name, *spec.aliases)):
            owners = self._by_kind[kind].setdefault(key, [])
            if not any(s is spec for s in owners):
                owners.append(spec)

    def all(self, kind: str) -> list[Spec]:
        """All specs of a kind (``models``, ``datasets``, ``templates``, ``collators``, ``exporters``)."""
        return list(self._specs[kind])

    def conflicts(self, kind: str) -> dict[str, list[str]]:
        """Names (or aliases) registered by more than one distribution -> those distributions."""
        out = {}
        for key, owners in self._by_kind[kind].items():
            dists = sorted({s.plugin for s in owners})
            if len(dists) > 1:
                out[key] = dists
        return out

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind[kind])

    def get(self, kind: str, name: str) -> Any:
        """The spec registered under ``name`` or an alias; a clear error otherwise."""
        owners = self._by_kind[kind].get(name)
        if not owners:
            singular = kind[:-1]
            known = self.names(kind)
            near = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            listing = ", ".join(known) if known else "none (install a plugin that provides some)"
            raise UnknownNameError(f"Unknown {singular} '{name}'.{hint} Known {kind}: {listing}.")
        distinct = {id(s): s for s in owners}
        if len(distinct) > 1:
            dists = sorted({s.plugin for s in distinct.values()})
            raise PluginConflictError(
                f"The {kind[:-1]} name '{name}' is registered by more than one plugin ({' and '.join(dists)}); "
                f"uninstall one of them or disable it with XT_DISABLE_PLUGINS."
            )
        return owners[0]

    def resolve_model(self, name_or_path: str) -> ModelSpec:
        """A registered model by name, else a generic Hugging Face model for a local folder or hub id."""
        if name_or_path in self._by_kind["models"]:
            return self.get("models", name_or_path)
        looks_like_path = os.path.isdir(name_or_path) or name_or_path.startswith((".", "/", "~"))
        looks_like_hub_id = name_or_path.count("/") == 1 and not looks_like_path
        if looks_like_path or looks_like_hub_id:
            if looks_like_path and not os.path.isdir(os.path.expanduser(name_or_path)):
                raise XtError(f"Model folder '{name_or_path}' does not exist; pass a registered model name, "
                              f"a hub id (org/name) or an existing folder.")
            generic = self.get("models", "hf")
            from dataclasses import replace

            return replace(generic, name=name_or_path, aliases=(), source=os.path.expanduser(name_or_path))
        return self.get("models", name_or_path)  # raises with suggestions


def spec_problem(kind: str, spec: Any) -> str | None:
    """Why one registered object is not a well-formed spec of ``kind`` (None when it is)."""
    spec_type = SPEC_KINDS[kind]
    if not isinstance(spec, spec_type):
        return f"{HOOK_OF_KIND[kind]} registered a {type(spec).__name__}, expected a {spec_type.__name__}; it was skipped"
    problems = spec.problems()
    if problems:
        return f"{spec_type.__name__} '{spec.name}' is malformed and was skipped: {'; '.join(problems)}"
    return None


def call_registration_hook(function: Callable[..., Any], kind: str) -> tuple[list[Spec], list[str]]:
    """Call one implementation of a registration hook: the well-formed specs, and one problem per bad one.

    A malformed registration drops only itself. An exception from the hook itself propagates.
    """
    specs: list[Spec] = []
    problems: list[str] = []

    def register(spec: Any) -> None:
        problem = spec_problem(kind, spec)
        if problem:
            problems.append(problem)
        else:
            specs.append(spec)

    function(register=register)
    return specs, problems


def _plugin_problem(plugin_name: str, message: str) -> None:
    info = _infos.get(plugin_name)
    if info is not None:
        info.fail(message)
    _report(f"plugin '{plugin_name}'{f' from {info.dist}' if info else ''}: {message}")


def _run_hook(impl: Any, kind: str) -> list[tuple[Spec, str]]:
    """The specs one plugin registers through one hook, stamped with its distribution."""
    info = _infos.get(impl.plugin_name)
    hook_name = HOOK_OF_KIND[kind]
    try:
        specs, problems = call_registration_hook(impl.function, kind)
    except Exception as exc:
        _plugin_problem(impl.plugin_name, f"hook {hook_name} raised {type(exc).__name__}: {exc}; its {kind} are skipped")
        if os.environ.get("XT_DEBUG"):
            traceback.print_exc()
        return []
    for problem in problems:
        _plugin_problem(impl.plugin_name, problem)
    for spec in specs:
        spec.plugin = info.dist if info else impl.plugin_name
    return [(spec, impl.plugin_name) for spec in specs]


def _warn_conflicts(registry: Registry) -> None:
    """Tell every plugin that shares a name with another plugin (using that name fails until resolved)."""
    for info in _infos.values():
        info.conflicts.clear()
    for kind in SPEC_KINDS:
        for key, dists in registry.conflicts(kind).items():
            for info in _infos.values():
                if info.dist not in dists or info.status == "disabled":
                    continue
                others = " and ".join(d for d in dists if d != info.dist)
                message = (f"{kind[:-1]} name '{key}' is also registered by {others}; using it fails until one "
                           f"is uninstalled or disabled with XT_DISABLE_PLUGINS")
                if message not in info.conflicts:
                    info.conflicts.append(message)
                _report(f"warning: plugin '{info.name}' from {info.dist}: {message}")


def _collect(pm: pluggy.PluginManager) -> Registry:
    registry = Registry()
    for kind, hook_name in HOOK_OF_KIND.items():
        found: list[tuple[Spec, str]] = []
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            found += _run_hook(impl, kind)
        found.sort(key=lambda pair: pair[0].plugin != CORE_DIST)  # core names are claimed first
        for spec, plugin_name in found:
            refusal = registry.refusal(kind, spec)
            if refusal:
                _plugin_problem(plugin_name, refusal)
            else:
                registry.add(kind, spec)
    _warn_conflicts(registry)
    return registry


def get_registry() -> Registry:
    """The registry for the currently registered plugins (rebuilt when plugins change)."""
    global _registry, _registry_key
    pm = get_plugin_manager()
    key = tuple(sorted((name, id(p)) for name, p in pm.list_name_plugin()))
    if _registry is None or key != _registry_key:
        _registry, _registry_key = _collect(pm), key
    return _registry

