"""``xt data preview`` and ``xt data stats``: see how a dataset is mapped, templated and packed."""

from __future__ import annotations

import sys
from typing import Any

import click

from xt.errors import XtError


def _common(fn: Any) -> Any:
    options = [
        click.option("--dataset", "-d", "dataset_name", required=True, help="Registered dataset name."),
        click.option("--model", "-m", "model_name", required=True, help="Model name, folder or hub id (for its tokenizer)."),
        click.option("--template", "-t", "template_name", default=None,
                     help="Template name (default: the model's, else the dataset's, else 'default')."),
        click.option("--data-files", multiple=True, help="Local files or globs with the rows (repeatable)."),
        click.option("--split", default="train", show_default=True),
        click.option("--max-length", type=int, default=2048, show_default=True, help="Tokens per sample / packed row."),
        click.option("--length-policy", type=click.Choice(["truncate", "drop"]), default="truncate", show_default=True),
        click.option("--skip-bad-rows", is_flag=True, help="Skip rows the map cannot use instead of failing."),
        click.option("--model-path", default=None, help="Local folder with the model (overrides its hub id)."),
        click.option("--image-folder", type=click.Path(file_okay=False), default=None,
                     help="Folder with the images rows refer to (multimodal datasets)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _resolve(dataset_name: str, model_name: str, template_name: str | None,
             model_path: str | None = None) -> tuple[Any, Any, Any]:
    from xt.data.pipeline import choose_template
    from xt.plugins import get_registry

    registry = get_registry()
    dataset = registry.get("datasets", dataset_name)
    model = registry.resolve_model(model_name)
    template = choose_template(model, dataset, template_name)
    try:
        from xt.model.setup import load_tokenizer

        tokenizer = load_tokenizer(model, model_path or model.source)
    except XtError:
        raise
    except Exception as exc:
        raise XtError(f"Could not load the tokenizer of model '{model_name}': {type(exc).__name__}: {exc}.") from exc
    return dataset, template, tokenizer


def _options(data_files: tuple[str, ...], split: str, max_length: int, length_policy: str, skip_bad_rows: bool,
             image_folder: str | None, attention_weight: float = 0.0, causal_share: float = 0.5,
             **data_keys: Any) -> Any:
    """The data options ``xt train`` would use with these settings (its defaults for the rest)."""
    from xt.config import TrainConfig

    cfg = TrainConfig(data_files=list(data_files), max_length=max_length, length_policy=length_policy,
                      skip_bad_rows=skip_bad_rows, image_folder=image_folder, **data_keys)
    return cfg.data_options(split, attention_weight=attention_weight, causal_share=causal_share)


def _attention_weight(model_name: str) -> float:
    """The model's attention-pair cost (xt.data.layout) from its config on the meta device; 0 when unknown."""
    import torch

    from xt.data.layout import attention_weight
    from xt.plugins import get_registry
    from xt.train.plan import meta_model

    spec = get_registry().resolve_model(model_name)
    try:
        with torch.device("meta"):
            return attention_weight(meta_model(spec.config()))
    except Exception:  # no config callable, or an architecture transformers cannot build
        return 0.0


def _causal_share_here() -> float:
    """The causal-attention share (xt.data.layout) of the device ``xt train`` would use on this machine."""
    from xt.data.layout import causal_share
    from xt.train.dist import device_type

    return causal_share(device_type())


@click.group("data")
def data_group() -> None:
    """Inspect how a dataset is mapped, templated and packed."""


def highlight(tokenizer: Any, input_ids: list[int], labels: list[int], color: bool) -> str:
    """The decoded sample with loss-bearing spans marked: green when ``color``, else ``[[...]]``."""
    out, start = [], 0
    for i in range(1, len(input_ids) + 1):
        if i == len(input_ids) or (labels[i] != -100) != (labels[start] != -100):
            text = tokenizer.decode(input_ids[start:i], skip_special_tokens=False)
            if labels[start] != -100:
                text = f"\x1b[32m{text}\x1b[0m" if color else f"[[{text}]]"
            out.append(text)
            start = i
    return "".join(out)


@data_group.command("preview")
@_common
@click.option("-n", "count", type=click.IntRange(min=1), default=3, show_default=True, help="How many samples to show.")
def preview_command(dataset_name: str, model_name: str, template_name: str | None, data_files: tuple[str, ...],
                    split: str, max_length: int, length_policy: str, skip_bad_rows: bool, model_path: str | None,
                    image_folder: str | None, count: int) -> None:
    """Print the templated text of a few samples; loss-bearing tokens are marked [[like this]] (green on a tty)."""
    from xt.data.pipeline import load_conversations, rows_objective
    from xt.data.process import apply_length_policy

    dataset, template, tokenizer = _resolve(dataset_name, model_name, template_name, model_path)
    options = _options(data_files, split, max_length, length_policy, skip_bad_rows, image_folder)
    rows = load_conversations(dataset, options)[: max(0, count)]
    objective = rows_objective(dataset, options)  # rows of e.g. a preference set: show each of their sequences
    conversations = [seq for row in rows for seq in objective.row_sequences(row)] if objective else rows
    color = sys.stdout.isatty()
    click.echo(f"dataset {dataset.name}, template {template.name}, {len(conversations)} sample(s); "
               f"loss-bearing tokens {'in green' if color else 'inside [[ ]]'}")
    for i, sample in enumerate(template.compile(tokenizer).encode_batch(conversations)):
        kept, status = apply_length_policy(sample, max_length, length_policy)
        click.echo(f"--- sample {i}: {len(sample['input_ids'])} tokens" + (f" ({status})" if status != "kept" else ""))
        if kept is not None:
            click.echo(highlight(tokenizer, kept["input_ids"], kept["labels"], color))


def _histogram(lengths: list[int], max_length: int, bins: int = 8) -> list[str]:
    if not lengths:
        return []
    top = max(max(lengths), 1)
    width = max(1, -(-top // bins))
    counts = [0] * bins
    for n in lengths:
        counts[min(bins - 1, (n - 1) // width if n else 0)] += 1
    peak = max(counts) or 1
    return [f"  {i * width + 1:>6}-{(i + 1) * width:<6} {c:>7}  {'#' * round(30 * c / peak)}"
            for i, c in enumerate(counts)]


@data_group.command("stats")
@_common
@click.option("--pack/--no-pack", default=True, show_default=True, help="Pack samples into rows of --max-length.")
@click.option("--auto-layout", is_flag=True,
              help="Let the pipeline choose packing or length-grouped batches, as 'pack: auto' in training does.")
@click.option("--micro-batch-size", type=int, default=1, show_default=True, help="Rows per batch (for --auto-layout).")
@click.option("--num-proc", type=int, default=1, show_default=True, help="Processes for map and tokenization.")
@click.option("--cache-dir", default=None, help="Where processed datasets are cached (default $XT_CACHE_DIR/data).")
@click.option("--no-cache", is_flag=True, help="Build without reading or writing the cache.")
def stats_command(dataset_name: str, model_name: str, template_name: str | None, data_files: tuple[str, ...],
                  split: str, max_length: int, length_policy: str, skip_bad_rows: bool, model_path: str | None,
                  image_folder: str | None, pack: bool, auto_layout: bool, micro_batch_size: int, num_proc: int,
                  cache_dir: str | None, no_cache: bool) -> None:
    """Rows, tokens, a length histogram, truncated/dropped/skipped counts and packing fill."""
    import numpy as np

    from xt.data.pipeline import build_dataset

    dataset, template, tokenizer = _resolve(dataset_name, model_name, template_name, model_path)
    options = _options(data_files, split, max_length, length_policy, skip_bad_rows, image_folder,
                       pack="auto" if auto_layout else pack, micro_batch_size=micro_batch_size,
                       attention_weight=_attention_weight(model_name) if auto_layout else 0.0,
                       causal_share=_causal_share_here() if auto_layout else 0.5,
                       num_proc=num_proc, data_cache_dir=cache_dir, use_data_cache=not no_cache)
    built = build_dataset(dataset, template, tokenizer, options)
    s = built.stats
    sample_lengths = np.diff(np.asarray(built.sample_offsets)).tolist()
    click.echo(f"dataset         {s['dataset']} (template {s['template']}, max length {s['max_length']})")
    click.echo(f"rows            {s['rows']}")
    click.echo(f"skipped (bad)   {s['skipped']}")
    click.echo(f"truncated       {s['truncated']}")
    click.echo(f"dropped         {s['dropped']} ({s['dropped_too_long']} too long, "
               f"{s['dropped_no_labels']} without reply tokens after truncation)")
    click.echo(f"samples         {s['samples']}")
    click.echo(f"tokens          {s['tokens']} ({s['label_tokens']} carry loss)")
    if sample_lengths:
        click.echo(f"sample length   min {min(sample_lengths)}, mean {sum(sample_lengths) / len(sample_lengths):.1f}, "
                   f"max {max(sample_lengths)}")
    for line in _histogram(sample_lengths, max_length):
        click.echo(line)
    if s.get("packed"):
        click.echo(f"packed rows     {s['packed_rows']} (fill {100 * s['fill']:.1f}%)")
    else:
        click.echo("packed rows     packing off")
    choice = s.get("layout_choice")
    if choice:
        click.echo(f"layout          {s['layout']} (chosen: estimated cost per token {choice['cost_packed']:.3f} "
                   f"packed vs {choice['cost_grouped']:.3f} length-grouped, micro-batch {micro_batch_size})")
    if "encode_threads" in s:
        click.echo(f"tokenizer       {s['encode_processes']} process(es) x {s['encode_threads']} thread(s)")
    click.echo(f"cache           {'reused' if s.get('cached') else 'built'}"
               + (f" at {s['cache_path']}" if s.get("cache_path") else " (not cached)"))
