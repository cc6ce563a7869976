"""``xt chat``, ``xt merge`` and ``xt export``. Heavy modules load inside the commands."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path

import click

from xt.errors import PluginError, describe_spec, plugin_call
from xt.run import is_run_dir


@click.command("chat")
@click.argument("target", metavar="MODEL_OR_RUN")
@click.option("--adapter", type=click.Path(), default=None, help="A LoRA adapter folder to apply to MODEL.")
@click.option("--template", default=None, help="Chat template (default: the run's, else the model's, else 'default').")
@click.option("--system", default=None, help="System prompt.")
@click.option("--prompt", default=None, help="Answer this one prompt, print only the reply and exit.")
@click.option("--image", type=click.Path(), default=None, help="An image for multimodal models.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0.0), default=0.0, show_default=True,
              help="0 means greedy decoding.")
@click.option("--top-p", type=click.FloatRange(min=0.0, max=1.0, min_open=True), default=1.0, show_default=True)
@click.option("--bits", type=click.Choice(["4", "8"]), default=None, help="Load the model quantized (bitsandbytes).")
@click.option("--backend", default="hf", show_default=True,
              help="hf (transformers), or a backend a plugin provides, e.g. lmdeploy (needs CUDA).")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the hub (off by default).")
def chat_command(target: str, adapter: str | None, template: str | None, system: str | None, prompt: str | None,
                 image: str | None, max_new_tokens: int, temperature: float, top_p: float, bits: str | None,
                 backend: str, trust_remote_code: bool) -> None:
    """Chat with a model or a trained run (interactive unless --prompt is given).

    \b
    In the interactive session: /reset forgets the history, /exit (or Ctrl-D) ends it.
    A run directory brings its base model, adapter and template, so replies stop where training taught.
    """
    from xt.chat import ChatOptions, backend_responder, chat_loop, chat_once

    options = ChatOptions(target=target, adapter=adapter, template=template, system=system, image=image,
                          max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                          bits=int(bits) if bits else None, trust_remote_code=trust_remote_code)
    respond = backend_responder(backend, options)
    if prompt is not None:
        click.echo(chat_once(respond, prompt, system))
        return
    banner = None
    if sys.stdin.isatty():
        banner = f"Chatting with {target}. /reset clears the history, /exit or Ctrl-D ends."
    chat_loop(respond, system=system, banner=banner)


@click.command("merge")
@click.argument("base")
@click.argument("adapter", type=click.Path())
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Folder for the merged model.")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default="fp32", show_default=True,
              help="Precision of the merged weights (the base is loaded unquantized, also for QLoRA adapters).")
@click.option("--template", default=None, help="Chat template to write (default: the one saved with the adapter).")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out folder.")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the hub (off by default).")
def merge_command(base: str, adapter: str, out_dir: str, dtype: str, template: str | None, overwrite: bool,
                  trust_remote_code: bool) -> None:
    """Merge a LoRA / QLoRA ADAPTER into BASE (registered name, folder or hub id) as safetensors."""
    from xt.export import check_output_dir, merge_adapter
    from xt.run import locked

    check_output_dir(out_dir, overwrite, protect=(adapter,))
    with locked(adapter, "merge") if is_run_dir(adapter) else nullcontext():
        path = merge_adapter(base, adapter, out_dir, dtype=dtype, overwrite=overwrite, template=template,
                             trust_remote_code=trust_remote_code)
    click.echo(f"Merged model written to {path}")


@click.command("export")
@click.argument("run_dir", metavar="RUN")
@click.option("--to", "target", required=True, help="Exporter name (see 'xt list exporters').")
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Folder to write.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Exporter option (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out folder.")
def export_command(run_dir: str, target: str, out_dir: str, sets: tuple[str, ...], overwrite: bool) -> None:
    """Export a trained RUN with a registered exporter (hf, or one a plugin adds)."""
    from xt.config import parse_key_values
    from xt.export import check_output_dir
    from xt.plugins import get_registry
    from xt.run import locked

    spec = get_registry().get("exporters", target)
    options: dict[str, object] = dict(parse_key_values(sets))
    if overwrite:
        options["overwrite"] = True
    check_output_dir(out_dir, overwrite, protect=(run_dir,))
    with locked(run_dir, "export") if is_run_dir(run_dir) else nullcontext(), plugin_call(spec, "export"):
        result = spec.export(run_dir, out_dir, **options)
    written = Path(result or out_dir)
    if not written.exists():
        raise PluginError(f"export of {describe_spec(spec)} returned without writing '{written}'; nothing was "
                          f"exported.")
    click.echo(f"Exported {run_dir} with '{spec.name}' to {written}")
