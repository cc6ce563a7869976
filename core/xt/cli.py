"""The ``xt`` command. Imports no torch: heavy modules load inside the commands that need them."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from xt import __version__
from xt.errors import XtError

# Built-in commands: name -> "module:attribute". Modules are imported only when needed.
CORE_COMMANDS = {
    "plugins": "xt.commands.info:plugins_command",
    "list": "xt.commands.info:list_command",
    "env": "xt.commands.info:env_command",
    "plugin": "xt.commands.scaffold:plugin_group",
    "data": "xt.commands.data:data_group",
    "train": "xt.commands.train:train_command",
    "chat": "xt.commands.chat:chat_command",
    "merge": "xt.commands.chat:merge_command",
    "export": "xt.commands.chat:export_command",
    "push": "xt.commands.hub:push_command",
}


class XtGroup(click.Group):
    """A click group whose core commands load lazily and which adds plugin commands on demand."""

    _plugins_added = False

    def _add_plugin_commands(self) -> None:
        if self._plugins_added:
            return
        self._plugins_added = True
        from xt.plugins import _report, get_plugin_manager

        pm = get_plugin_manager()
        for impl in pm.hook.register_commands.get_hookimpls():
            try:
                impl.function(cli=self)
            except Exception as exc:
                _report(f"plugin '{impl.plugin_name}': register_commands raised {type(exc).__name__}: {exc}")

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands()
        return sorted(set(CORE_COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in CORE_COMMANDS and name not in self.commands:
            module, attr = CORE_COMMANDS[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        if name not in self.commands:
            self._add_plugin_commands()
        return self.commands.get(name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except XtError as exc:
            click.echo(f"Error: {exc}", err=True)
            if os.environ.get("XT_DEBUG"):
                raise
            sys.exit(exc.exit_code)


def _use_plugins_dir(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """``--plugins-dir DIR``: load plugin modules from DIR too (``XT_PLUGINS_DIR``), before any command runs."""
    if value:
        from xt.plugins import PLUGINS_DIR_ENV, reset

        os.environ[PLUGINS_DIR_ENV] = value
        reset()


@click.group(cls=XtGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="xt")
@click.option("--plugins-dir", type=click.Path(file_okay=False, exists=True), is_eager=True, expose_value=False,
              callback=_use_plugins_dir, metavar="DIR",
              help="Also load plugin modules (DIR/*.py) without packaging them (same as XT_PLUGINS_DIR=DIR).")
def cli() -> None:
    """xt: fine-tune LLMs and vision-language models (LoRA, QLoRA, full; DeepSpeed) with plugins.

    \b
    Quick start:
      xt plugins                 installed plugins and what they register
      xt list models             models you can train (a hub id or a local folder works too)
      xt train --model ORG/NAME --dataset conversation --data-files chats.jsonl --dry-run
    """


def main() -> None:
    cli(prog_name="xt")


if __name__ == "__main__":
    main()
