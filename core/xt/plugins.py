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
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from xt import hookspecs
from xt.errors import PluginConflictError, UnknownNameError, XtError
from xt.specs import HOOK_OF_KIND, SPEC_KINDS, ModelSpec, Spec

ENTRY_POINT_GROUP = "xt"
BUILTIN_PLUGINS = ("xt.builtins",)
CORE_DIST = "xt-core"


@dataclass
class PluginInfo:
    """What ``xt plugins`` reports about one plugin."""

    name: str
    dist: str
    version: str
    hooks: list[str] = field(default_factory=list)
    status: str = "ok"  # ok | broken | disabled
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "distribution": self.dist, "version": self.version, "hooks": self.hooks,
             "status": self.status}
        if self.error:
            d["error"] = self.error
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


def _unknown_hook_message(pm: pluggy.PluginManager, plugin: Any) -> str | None:
    """If the plugin marks a function that is not an xt hook, say which and suggest the nearest."""
    known = _hook_names()
    for attr in dir(plugin):
        obj = getattr(plugin, attr, None)
        if callable(obj) and hasattr(obj, "xt_impl") and attr not in known:
            near = difflib.get_close_matches(attr, known, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            return f"'{attr}' is marked @hookimpl but is not an xt hook{hint}; known hooks: {', '.join(known)}"
    return None


def _hook_names() -> list[str]:
    return [name for name in vars(hookspecs) if hasattr(getattr(hookspecs, name), "xt_spec")]


def register_plugin(pm: pluggy.PluginManager, plugin: Any, name: str, dist: str, version: str) -> PluginInfo:
    """Register one plugin object, validating its hooks; a bad plugin is recorded as broken."""
    info = PluginInfo(name=name, dist=dist, version=version)
    _infos[name] = info
    problem = _unknown_hook_message(pm, plugin)
    if problem is None:
        try:
            pm.register(plugin, name=name)
            pm.check_pending()
        except Exception as exc:  # pluggy.PluginValidationError and friends
            if pm.is_registered(plugin):
                pm.unregister(plugin)
            problem = f"{type(exc).__name__}: {exc}"
    if problem:
        info.status, info.error = "broken", problem
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
        try:
            plugin = ep.load()
        except Exception as exc:
            info = PluginInfo(name=ep.name, dist=dist, version=version, status="broken",
                              error=f"import failed: {type(exc).__name__}: {exc}")
            _infos[ep.name] = info
            _report(f"plugin '{ep.name}' from {dist} failed to import and was skipped: {type(exc).__name__}: {exc}")
            if os.environ.get("XT_DEBUG"):
                traceback.print_exc()
            continue
        register_plugin(pm, plugin, ep.name, dist, version)
    return pm


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

    def add(self, kind: str, spec: Spec) -> None:
        self._specs[kind].append(spec)
        for key in dict.fromkeys((spec.name, *spec.aliases)):
            owners = self._by_kind[kind].setdefault(key, [])
            if not any(s is spec for s in owners):
                owners.append(spec)

    def all(self, kind: str) -> list[Spec]:
        """All specs of a kind (``models``, ``datasets``, ``templates``, ``collators``, ``exporters``)."""
        return list(self._specs[kind])

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


def _collect(pm: pluggy.PluginManager) -> Registry:
    registry = Registry()
    for kind, hook_name in HOOK_OF_KIND.items():
        spec_type = SPEC_KINDS[kind]
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            info = _infos.get(impl.plugin_name)
            dist = info.dist if info else impl.plugin_name
            collected: list[Spec] = []

            def register(spec: Any, _c: list = collected, _t: type = spec_type, _d: str = dist,
                         _h: str = hook_name) -> None:
                if not isinstance(spec, _t):
                    raise TypeError(f"{_h} must register {_t.__name__} objects, got {type(spec).__name__}")
                problems = spec.problems()
                if problems:
                    raise ValueError(f"{_t.__name__} '{getattr(spec, 'name', '?')}' is malformed: {'; '.join(problems)}")
                spec.plugin = _d
                _c.append(spec)

            try:
                impl.function(register=register)
            except Exception as exc:
                if info is not None:
                    info.status = "broken"
                    info.error = f"{hook_name} raised {type(exc).__name__}: {exc}"
                _report(f"plugin '{impl.plugin_name}' from {dist}: hook {hook_name} raised "
                        f"{type(exc).__name__}: {exc}; its {kind} are skipped")
                if os.environ.get("XT_DEBUG"):
                    traceback.print_exc()
                continue
            for spec in collected:
                registry.add(kind, spec)
    return registry


def get_registry() -> Registry:
    """The registry for the currently registered plugins (rebuilt when plugins change)."""
    global _registry, _registry_key
    pm = get_plugin_manager()
    key = tuple(sorted((name, id(p)) for name, p in pm.list_name_plugin()))
    if _registry is None or key != _registry_key:
        _registry, _registry_key = _collect(pm), key
    return _registry

