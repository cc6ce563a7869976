"""``xt train`` (filled in by the training loop)."""

from __future__ import annotations

import click


@click.command("train")
def train_command() -> None:
    """Fine-tune a model (LoRA, QLoRA or full) with DeepSpeed."""
    raise click.ClickException("xt train is not implemented yet")
