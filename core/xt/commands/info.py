"""``xt plugins``, ``xt list`` and ``xt env``: what is installed and registered."""

from __future__ import annotations

import json
import platform
from importlib import metadata

import click

from xt.specs import SPEC_KINDS


@click.command("plugins")
def plugins_command() -> None:
    """Print the loaded plugins as JSON: name, distribution, version, hooks, status."""
    from xt.plugins import plugin_infos

    click.echo(json.dumps([p.as_dict() for p in plugin_infos()], indent=2))


def _row(kind: str, spec, conflicts: dict[str, list[str]]) -> dict:
    row = {"name": spec.name, "aliases": list(spec.aliases), "plugin": spec.plugin, "description": spec.description}
    shared = {n: dists for n, dists in conflicts.items() if n in (spec.name, *spec.aliases)}
    row["duplicate_of"] = sorted({d for dists in shared.values() for d in dists if d != spec.plugin})
    if kind == "models":
        row.update(kind=spec.kind, source=spec.source, default_template=spec.default_template)
    if kind == "datasets":
        row.update(source=spec.source or ("generated" if spec.generate else None))
    return row


@click.command("list")
@click.argument("kind", type=click.Choice(sorted(SPEC_KINDS)))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(kind: str, as_json: bool) -> None:
    """List registered models, datasets, templates, collators or exporters.

    A name that two plugins register is marked DUPLICATE (using it fails until one is removed).
    """
    from xt.plugins import get_registry

    registry = get_registry()
    conflicts = registry.conflicts(kind)
    rows = [_row(kind, s, conflicts) for s in sorted(registry.all(kind), key=lambda s: (s.name, s.plugin))]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"No {kind} registered. Install a plugin, e.g. pip install xt-alpaca.")
        return
    name_w = max(len("NAME"), *(len(r["name"]) for r in rows))
    plug_w = max(len("PLUGIN"), *(len(r["plugin"]) for r in rows))
    click.echo(f"{'NAME':<{name_w}}  {'PLUGIN':<{plug_w}}  DESCRIPTION")
    for r in rows:
        desc = r["description"]
        if r["aliases"]:
            desc += f" (aliases: {', '.join(r['aliases'])})"
        if r["duplicate_of"]:
            desc = f"DUPLICATE, also registered by {', '.join(r['duplicate_of'])}; {desc}"
        click.echo(f"{r['name']:<{name_w}}  {r['plugin']:<{plug_w}}  {desc}")


ENV_PACKAGES = ("xt-core", "torch", "transformers", "peft", "datasets", "deepspeed", "bitsandbytes",
                "flash-attn", "lmdeploy", "safetensors", "tokenizers", "accelerate")


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@click.command("env")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def env_command(as_json: bool) -> None:
    """Versions of xt and its libraries, and the accelerator found."""
    info: dict = {"python": platform.python_version(), "platform": platform.platform()}
    info["packages"] = {name: _dist_version(name) for name in ENV_PACKAGES}
    accel = "none (CPU)"
    try:
        import torch

        if torch.cuda.is_available():
            accel = ", ".join(f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count()))
        info["cpu_threads"] = torch.get_num_threads()
    except ImportError:
        accel = "unknown (torch not installed)"
    info["accelerator"] = accel
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"python        {info['python']} ({info['platform']})")
    for name, version in info["packages"].items():
        click.echo(f"{name:<13} {version or 'not installed'}")
    click.echo(f"accelerator   {accel}")
