"""``xt plugin new``: write a ready-to-publish plugin package."""

from __future__ import annotations

import click


@click.group("plugin")
def plugin_group() -> None:
    """Create xt plugins."""
