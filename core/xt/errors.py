"""The one exception type users see: a sentence saying what is wrong, where, and how to fix it."""

from __future__ import annotations


class XtError(Exception):
    """A user-facing error. The CLI prints its message on one line and exits non-zero."""

    exit_code = 2


class UnknownNameError(XtError, KeyError):
    """A name (model, dataset, template, ...) that no loaded plugin registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class PluginConflictError(XtError):
    """Two plugins registered the same name and the user asked for it."""
