"""Entry point of xt-lmeval: adds ``xt eval``. Nothing heavy is imported until the command runs."""

from __future__ import annotations

from typing import Any

from xt.api import hookimpl


@hookimpl
def register_commands(cli: Any) -> None:
    from xt_lmeval.command import eval_command

    cli.add_command(eval_command)
