"""The one exception type users see: a sentence saying what is wrong, where, and how to fix it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class XtError(Exception):
    """A user-facing error. The CLI prints its message on one line and exits non-zero."""

    exit_code = 2


class UnknownNameError(XtError, KeyError):
    """A name (model, dataset, template, ...) that no loaded plugin registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class PluginConflictError(XtError):
    """Two plugins registered the same name and the user asked for it."""


class PluginError(XtError):
    """Code a plugin registered raised an exception; the message names the spec and its distribution."""

    exit_code = 1


def debug_enabled() -> bool:
    """``--debug`` or ``XT_DEBUG=1``: show tracebacks."""
    return os.environ.get("XT_DEBUG", "").lower() not in ("", "0", "false", "no")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe_spec(spec: Any) -> str:
    """``dataset 'alpaca' (plugin xt-alpaca)``: how messages name a registered spec."""
    kind = type(spec).__name__.removesuffix("Spec").lower() or "spec"
    dist = getattr(spec, "plugin", "") or "an unknown distribution"
    return f"{kind} '{getattr(spec, 'name', '?')}' (plugin {dist})"


@contextmanager
def plugin_call(spec: Any, what: str) -> Iterator[None]:
    """Run plugin code; any exception but :class:`XtError` becomes a :class:`PluginError` naming ``spec``."""
    try:
        yield
    except XtError:
        raise
    except Exception as exc:
        raise PluginError(f"{what} of {describe_spec(spec)} failed with {type(exc).__name__}: {first_line(exc)} "
                          f"(rerun with --debug for the traceback).") from exc
