"""``xt data preview`` and ``xt data stats`` (filled in by the data pipeline)."""

from __future__ import annotations

import click


@click.group("data")
def data_group() -> None:
    """Inspect how a dataset is mapped, templated and packed."""
