"""``xt eval``: click options only; lm-eval, torch and the model load inside the command."""

from __future__ import annotations

import click


@click.command("eval")
@click.argument("target", metavar="RUN_OR_MODEL")
@click.option("--tasks", "task_names", default="", metavar="NAMES",
              help="Comma-separated lm-eval task names (mmlu, gsm8k, ceval-valid, ...); their data must be "
                   "in the local datasets cache or reachable.")
@click.option("--data", "data_files", multiple=True, type=click.Path(), metavar="FILE.jsonl",
              help="A custom set (repeatable): rows {question, choices, answer} for multiple choice, "
                   "{question, answer} for generation.")
@click.option("--out", "out_dir", type=click.Path(), default=None,
              help="Folder for results.json / results.md / samples (default: RUN/eval-results).")
@click.option("--template", default=None, help="Chat template (default: the run's, else the model's).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True,
              help="Longest generated answer for generation sets.")
@click.option("--num-fewshot", type=click.IntRange(min=0), default=None, help="Few-shot examples per prompt.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate only the first N rows of each task.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder.")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the hub (off by default).")
def eval_command(target: str, task_names: str, data_files: tuple[str, ...], out_dir: str | None, template: str | None,
                 batch_size: int, max_new_tokens: int, num_fewshot: int | None, limit: int | None, overwrite: bool,
                 trust_remote_code: bool) -> None:
    """Evaluate a trained RUN or a model (folder, hub id, registered name) with lm-evaluation-harness.

    \b
    Every prompt is framed by the run's chat template, exactly as in training and xt chat:
    multiple-choice sets are scored by the log-likelihood of each choice as the reply,
    generation sets by exact match of the (batched, greedy) reply.
    """
    from xt_lmeval.evaluate import EvalRequest, evaluate

    names = [name.strip() for name in task_names.split(",") if name.strip()]
    request = EvalRequest(target=target, tasks=names, data_files=list(data_files), out_dir=out_dir,
                          template=template, batch_size=batch_size, max_new_tokens=max_new_tokens,
                          num_fewshot=num_fewshot, limit=limit, overwrite=overwrite,
                          trust_remote_code=trust_remote_code)
    table, path = evaluate(request)
    click.echo(table)
    click.echo(f"Results written to {path}")
