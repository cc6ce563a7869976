"""``xt push``: upload a run's result or an exported folder to the Hugging Face Hub."""

from __future__ import annotations

import click


@click.command("push")
@click.argument("target", metavar="RUN_OR_FOLDER")
@click.option("--repo", required=True, metavar="ORG/NAME", help="The hub repository (created when missing).")
@click.option("--private", is_flag=True, help="Create the repository as private.")
def push_command(target: str, repo: str, private: bool) -> None:
    """Upload RUN_OR_FOLDER to the Hugging Face Hub in one commit.

    \b
    A folder (e.g. the --out of 'xt export RUN --to hf') is uploaded as it is; a run uploads its
    final/ folder (adapter or full model) with a model card. The token comes from HF_TOKEN or
    'hf auth login'; HF_ENDPOINT selects another hub.
    """
    from xt.hub import push

    url = push(target, repo, private=private)
    click.echo(f"Pushed {target} to {repo}: {url}")
