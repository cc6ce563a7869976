"""``xt baichuan ...`` commands (added to the xt CLI through ``register_commands``)."""

from __future__ import annotations

import click


@click.group(name="baichuan")
def baichuan_group() -> None:
    """Baichuan2 tools."""


@baichuan_group.command(name="to-llama")
@click.argument("src")
@click.argument("out")
@click.option("--overwrite", is_flag=True, help="Allow writing into a non-empty OUT.")
def to_llama(src: str, out: str, overwrite: bool) -> None:
    """Export the RoPE Baichuan2 model in SRC (folder or run dir) to a Llama-layout folder OUT."""
    from xt_baichuan.export import export_llama_layout

    path = export_llama_layout(src, out, overwrite=overwrite)
    click.echo(f"Wrote a LlamaForCausalLM folder to {path}")
