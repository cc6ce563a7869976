"""``xt chat``, ``xt merge`` and ``xt export`` (filled in by chat/export)."""

from __future__ import annotations

import click


@click.command("chat")
def chat_command() -> None:
    """Chat with a model or a trained run."""
    raise click.ClickException("xt chat is not implemented yet")


@click.command("merge")
def merge_command() -> None:
    """Merge a LoRA adapter into its base model."""
    raise click.ClickException("xt merge is not implemented yet")


@click.command("export")
def export_command() -> None:
    """Export a trained run with a registered exporter."""
    raise click.ClickException("xt export is not implemented yet")
