"""The ``xt`` command. Imports no torch: heavy modules load inside the commands that need them."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from xt import __version__
from xt.errors import XtError, debug_enabled, first_line, plugin_call

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
            before = set(self.commands)
            try:
                impl.function(cli=self)
            except Exception as exc:
                _report(f"plugin '{impl.plugin_name}': register_commands raised {type(exc).__name__}: {exc}")
            for name in set(self.commands) - before:
                blame_command(self.commands[name], plugin_dist(impl.plugin_name))

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
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except (Exception, KeyboardInterrupt) as exc:  # every failure becomes one line (traceback with --debug)
            message, code = error_line(exc)
            click.echo(f"Error: {message}", err=True)
            if debug_enabled():
                raise
            sys.exit(code)


def error_line(exc: BaseException) -> tuple[str, int]:
    """(one-line message, exit code) for an exception reaching the command line; several processes
    of one run prefix their rank."""
    rank = f"[rank {os.environ.get('RANK', '0')}] " if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else ""
    if isinstance(exc, XtError):
        return rank + str(exc), exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return f"{rank}interrupted {exc}".strip() + ".", 130
    return (f"{rank}{type(exc).__name__}: {first_line(exc)} (an unexpected error inside xt; rerun with --debug "
            f"for the traceback and report it).", 1)


def plugin_dist(plugin_name: str) -> str:
    from xt.plugins import _infos

    info = _infos.get(plugin_name)
    return info.dist if info is not None else plugin_name


class CommandSpec:
    """Stands in for a spec so that a plugin command's failure names its distribution."""

    def __init__(self, name: str, dist: str) -> None:
        self.name, self.plugin = name, dist


def blame_command(command: click.Command, dist: str) -> None:
    """Wrap a plugin command's callback so its exceptions name the plugin."""
    callback = command.callback
    if callback is None:
        return
    owner = CommandSpec(command.name or "?", dist)

    def run(*args: Any, **kwargs: Any) -> Any:
        with plugin_call(owner, "the command"):
            return callback(*args, **kwargs)

    command.callback = run


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        os.environ["XT_DEBUG"] = "1"


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
@click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
              help="Show the full traceback of an error (same as XT_DEBUG=1).")
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
