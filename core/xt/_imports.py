"""Run a callback right after a module is imported, without importing it now.

Plugins that extend transformers (``AutoConfig.register`` ...) use this so that importing the plugin
stays free of torch (``xt --help`` must be instant) while ``import transformers`` anywhere later
still sees the registration.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from collections.abc import Callable

_callbacks: dict[str, list[Callable[[], None]]] = {}


class _PostImportFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):  # type: ignore[override]
        if fullname not in _callbacks:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        callbacks = _callbacks.pop(fullname)
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module, _original=original, _callbacks=callbacks):
            _original(module)
            for callback in _callbacks:
                callback()

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


_finder = _PostImportFinder()


def when_imported(module: str, callback: Callable[[], None]) -> None:
    """Call ``callback()`` now if ``module`` is already imported, else right after its import."""
    if module in sys.modules:
        callback()
        return
    _callbacks.setdefault(module, []).append(callback)
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
