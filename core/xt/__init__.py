"""xt: fine-tune language and vision-language models with a small core and pip-installable plugins."""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

#: Decorator that marks a plugin function as an implementation of an xt hook.
hookimpl = pluggy.HookimplMarker("xt")

__all__ = ["__version__", "hookimpl"]
