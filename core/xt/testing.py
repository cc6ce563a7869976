"""Plugin conformance kit: run it in a plugin's own test suite.

    from xt.testing import check_plugin

    def test_conformance():
        check_plugin("xt_myplugin")

It loads the plugin through its entry point (group ``xt``), checks that every hook it implements is
a real xt hook and every registration is well-formed, runs each dataset map on the plugin's own
sample rows and validates the conversations, renders each template with a small offline tokenizer
(and checks that the prompt used at inference is exactly the prefix used in training and that the
Jinja chat template saved with results tokenizes to exactly the training ids), checks that
model specs name known templates, that ``register_commands`` adds working click commands and that
importing the plugin does not import torch. It also calls every ``config()``; loads the tokenizer of
every preset and local model and checks the special tokens its template needs; builds every small
preset (at most ``MAX_PRESET_PARAMETERS`` by its config) twice, expecting equal weights, and reloads
it from a saved folder; calls each collator factory with the options the core passes and collates
samples of the plugin's own dataset and template; exports a tiny finished run through each exporter
into a temporary folder; runs each objective on its sample rows through the real data pipeline and a
tiny model (the loss a finite 0-d tensor with a gradient, metrics finite, and loss, units and metrics
additive over samples, so accumulation windows stay exact) and its ``save`` into a temporary folder; checks that ``data_files`` and the distribution's files exist; and checks
names against everything installed (a core name is a problem, another plugin's name a warning).
Every problem is reported in one failure message.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy

from xt import hookspecs
from xt.specs import HOOK_OF_KIND, Spec, TemplateSpec, conversation_problems

_PROBE_CONVERSATION = {
    "messages": [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "Four."},
        {"role": "user", "content": "And three plus three?"},
        {"role": "assistant", "content": "Six."},
    ]
}


class PluginCheckError(AssertionError):
    """Raised by :func:`check_plugin` with every problem found, one per line."""


@dataclass
class PluginReport:
    """What the conformance kit found: registrations per kind and problems."""

    plugin: str
    distribution: str
    specs: dict[str, list[Spec]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def names(self, kind: str) -> list[str]:
        return [s.name for s in self.specs.get(kind, [])]


def _find_entry_point(plugin: str) -> metadata.EntryPoint | None:
    for ep in metadata.entry_points(group="xt"):
        module = ep.value.split(":")[0]
        dist = ep.dist.name if ep.dist else ""
        if plugin in (ep.name, dist, module) or module.split(".")[0] == plugin:
            return ep
    return None


def _check_templates(report: PluginReport, templates: list[TemplateSpec]) -> None:
    from xt.template import IGNORE_INDEX
    from xt.tokenizers import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    for t in templates:
        where = f"template '{t.name}'"
        try:
            sample = t.encode(_PROBE_CONVERSATION, tokenizer)
        except Exception as exc:
            report.problems.append(f"{where}: rendering a conversation raised {type(exc).__name__}: {exc}")
            continue
        ids, labels = sample["input_ids"], sample["labels"]
        if len(ids) != len(labels):
            report.problems.append(f"{where}: input_ids and labels differ in length")
        if not any(lab != IGNORE_INDEX for lab in labels):
            report.problems.append(f"{where}: no token carries loss")
        if labels and labels[0] != IGNORE_INDEX:
            report.problems.append(f"{where}: the first token carries loss (it should be prompt)")
        for turn in (1, 3):
            try:
                prompt = t.encode_prompt(_PROBE_CONVERSATION["messages"][: turn + 1], tokenizer)
            except Exception as exc:
                report.problems.append(f"{where}: building a prompt raised {type(exc).__name__}: {exc}")
                break
            if ids[: len(prompt)] != prompt:
                report.problems.append(
                    f"{where}: the inference prompt for turn {turn // 2 + 1} is not a prefix of the training "
                    f"sample, so chat would frame text differently from training")
                break
        _check_saved_chat_template(report, where, t, tokenizer, ids)
        try:
            if not t.stop_token_ids(tokenizer):
                report.problems.append(f"{where}: no stop token ids")
        except Exception as exc:
            report.problems.append(f"{where}: stop_token_ids raised {type(exc).__name__}: {exc}")


def _check_saved_chat_template(report: PluginReport, where: str, template: TemplateSpec, tokenizer: Any,
                               ids: list[int]) -> None:
    """The Jinja chat template saved with results must give exactly the training ids."""
    try:
        jinja = template.compile(tokenizer).jinja()
        rendered = tokenizer.apply_chat_template(_PROBE_CONVERSATION["messages"], chat_template=jinja, tokenize=True,
                                                 return_dict=False)
    except Exception as exc:
        report.problems.append(f"{where}: rendering its Jinja chat template raised {type(exc).__name__}: {exc}")
        return
    if list(rendered) != ids:
        report.problems.append(f"{where}: the saved chat template tokenizes to other ids than training, so plain "
                               f"transformers would frame text differently from xt")


def _check_datasets(report: PluginReport, datasets: list[Any], max_rows: int) -> None:
    for d in datasets:
        where = f"dataset '{d.name}'"
        rows = list(d.sample_rows)[:max_rows]
        if not rows and d.generate is not None:
            try:
                rows = list(d.generate(d.splits[0] if d.splits else "train", 0))[:max_rows]
            except Exception as exc:
                report.problems.append(f"{where}: generate() raised {type(exc).__name__}: {exc}")
                continue
        if not rows:
            report.problems.append(f"{where}: has neither sample_rows nor generate(); add a few sample rows "
                                   f"so the map can be checked offline")
            continue
        check = _row_check(report, d)
        for i, row in enumerate(rows):
            try:
                conv = d.map(row)
            except Exception as exc:
                report.problems.append(f"{where}: map_row failed on sample row {i}: {type(exc).__name__}: {exc}")
                continue
            for p in check(conv):
                report.problems.append(f"{where}: sample row {i} maps to an invalid {_row_kind(d)}: {p}")


def _objective_named(report: PluginReport, name: str) -> Any:
    """The objective ``name`` from this plugin, else from the installed ones (None when unknown)."""
    from xt.plugins import get_registry

    own = [o for o in report.specs.get("objectives", []) if name in (o.name, *o.aliases)]
    if own:
        return own[0]
    registry = get_registry()
    return registry.get("objectives", name) if name in registry.names("objectives") else None


def _row_kind(dataset: Any) -> str:
    return f"row for objective '{dataset.objective}'" if dataset.objective else "conversation"


def _row_check(report: PluginReport, dataset: Any) -> Callable[[Any], list[str]]:
    """How the dataset's mapped rows are checked: by the objective it names, else as conversations."""
    if dataset.objective is None:
        return conversation_problems
    objective = _objective_named(report, dataset.objective)
    if objective is None:
        report.problems.append(f"dataset '{dataset.name}' names objective '{dataset.objective}', which no loaded "
                               f"plugin registers")
        return conversation_problems
    return objective.check_row


#: Presets above this many parameters (by their config) are not built by the kit.
MAX_PRESET_PARAMETERS = 20_000_000


def _problem(report: PluginReport, where: str, what: str, exc: BaseException) -> None:
    report.problems.append(f"{where}: {what} raised {type(exc).__name__}: {exc}")


_FAILED = object()


def _attempt(report: PluginReport, where: str, what: str, signature: str, call: Callable[..., Any], *args: Any,
             **kwargs: Any) -> Any:
    """``call(*args, **kwargs)``, or ``_FAILED`` with a problem recorded (a TypeError names the signature expected)."""
    try:
        return call(*args, **kwargs)
    except TypeError as exc:
        report.problems.append(f"{where}: {what} raised TypeError: {exc}; it must accept {signature}")
    except Exception as exc:
        _problem(report, where, what, exc)
    return _FAILED


def _check_configs(report: PluginReport, models: list[Any]) -> dict[str, Any]:
    """Call every ``config()``; the configs that worked, by model name."""
    configs = {}
    for spec in models:
        if spec.config is None:
            continue
        try:
            config = spec.config()
        except Exception as exc:
            _problem(report, f"model '{spec.name}'", "config()", exc)
            continue
        if not hasattr(config, "to_dict"):
            report.problems.append(f"model '{spec.name}': config() returned {type(config).__name__}, not a "
                                   f"transformers PretrainedConfig")
            continue
        configs[spec.name] = config
    return configs


def _is_small_preset(spec: Any, config: Any) -> bool:
    """A preset built from a config (no files), small enough to build in a test."""
    if spec.source is not None or spec.load_model is None or config is None:
        return False
    from xt.train.plan import parameter_count

    try:
        return parameter_count(config) <= MAX_PRESET_PARAMETERS
    except Exception:
        return False


def _local_source(spec: Any) -> bool:
    import os

    return spec.source is not None and os.path.isdir(os.path.expanduser(spec.source))


def _template_of(report: PluginReport, name: str | None) -> TemplateSpec | None:
    own = {n: t for t in report.specs.get("templates", []) for n in (t.name, *t.aliases)}
    if name in own:
        return own[name]
    from xt.plugins import get_registry

    try:
        return get_registry().get("templates", name or "default")
    except Exception:
        return None


def _special_token_problems(template: TemplateSpec, tokenizer: Any) -> list[str]:
    """BOS / EOS markers the tokenizer lacks, and literal token ids outside its vocabulary."""
    from xt.specs import SpecialToken

    out = []
    size = len(tokenizer)
    for part_name in ("prefix", "system", "user", "assistant", "assistant_end", "turn_sep"):
        part = getattr(template, part_name)
        pieces = [part] if isinstance(part, str) and not isinstance(part, SpecialToken) else list(part)
        for piece in pieces:
            if isinstance(piece, SpecialToken):
                if getattr(tokenizer, f"{piece}_token_id", None) is None:
                    out.append(f"its {part_name} part needs the tokenizer's {piece.upper()} token, which it lacks")
            elif isinstance(piece, int) and not 0 <= piece < size:
                out.append(f"its {part_name} part uses token id {piece}, outside the tokenizer's {size} tokens")
    return out


def _check_tokenizers(report: PluginReport, models: list[Any], configs: dict[str, Any]) -> dict[str, Any]:
    """Load the tokenizer of every preset and local model; check the special tokens its template needs."""
    from xt.model.setup import load_tokenizer

    tokenizers = {}
    for spec in models:
        if not (_is_small_preset(spec, configs.get(spec.name)) or _local_source(spec)):
            continue
        where = f"model '{spec.name}'"
        try:
            tokenizer = load_tokenizer(spec, spec.source)
        except Exception as exc:
            _problem(report, where, "loading its tokenizer", exc)
            continue
        if tokenizer is None or not callable(getattr(tokenizer, "encode", None)):
            report.problems.append(f"{where}: its tokenizer loader returned {type(tokenizer).__name__}, not a "
                                   f"tokenizer (an object with encode())")
            continue
        tokenizers[spec.name] = tokenizer
        template = _template_of(report, spec.default_template)
        if template is not None:
            for p in _special_token_problems(template, tokenizer):
                report.problems.append(f"{where}: template '{template.name}': {p}")
    return tokenizers


def _weights(model: Any) -> dict[str, Any]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _same_weights(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _build_preset(spec: Any) -> Any:
    import torch

    from xt.model.loading import call_model_loader

    return call_model_loader(spec, None, {}, dtype=torch.float32, attn_implementation="sdpa")


def _check_presets(report: PluginReport, models: list[Any], configs: dict[str, Any]) -> None:
    """Build every small preset twice (same weights) and reload it from a saved folder (same weights)."""
    import tempfile

    for spec in models:
        if not _is_small_preset(spec, configs.get(spec.name)):
            continue
        where = f"model '{spec.name}'"
        try:
            first, second = _build_preset(spec), _build_preset(spec)
        except Exception as exc:
            _problem(report, where, "building the preset", exc)
            continue
        weights = _weights(first)
        if not _same_weights(weights, _weights(second)):
            report.problems.append(f"{where}: two builds of the preset have different weights; seed the "
                                   f"initialisation (xt cannot reproduce or export such a run)")
        with tempfile.TemporaryDirectory() as folder:
            try:
                first.save_pretrained(folder, safe_serialization=True)
                reloaded = type(first).from_pretrained(folder)
            except Exception as exc:
                _problem(report, where, "saving and reloading the preset", exc)
                continue
            if not _same_weights(weights, _weights(reloaded)):
                report.problems.append(f"{where}: reloading the saved preset gives different weights")


def _sample_batch(report: PluginReport, tokenizer: Any) -> tuple[list[dict[str, Any]], str]:
    """Encoded samples from the plugin's own dataset and template (else the core's), and what they came from."""
    from xt.builtins import _SAMPLE_ROWS, map_conversation_row

    datasets = [d for d in report.specs.get("datasets", []) if d.sample_rows]
    dataset_name = datasets[0].name if datasets else "conversation"
    mapper = datasets[0].map if datasets else map_conversation_row
    rows = list(datasets[0].sample_rows if datasets else _SAMPLE_ROWS)
    own = report.specs.get("templates", [])
    template = own[0] if own else _template_of(report, datasets[0].default_template if datasets else None)
    what = f"dataset '{dataset_name}' with template '{template.name}'"
    objective = _objective_named(report, datasets[0].objective) if datasets and datasets[0].objective else None
    if objective is not None:  # rows of several sequences: samples as the pipeline makes them
        return _pipeline_samples(rows, mapper, objective, template, tokenizer), f"{what} (objective '{objective.name}')"
    samples = []
    for row in rows:
        conv = mapper(row)
        sample = dict(template.encode(conv, tokenizer))
        sample["position_ids"] = list(range(len(sample["input_ids"])))
        if conv.get("images") is not None:
            sample["images"] = list(conv["images"])
        samples.append(sample)
    return samples, what


def _pipeline_samples(rows: list[Any], mapper: Callable[[Any], Any], objective: Any, template: Any,
                      tokenizer: Any) -> list[dict[str, Any]]:
    """Rows through the real data pipeline with ``objective``: one sample (of its sequences) per row."""
    from xt.data.pipeline import DataOptions, build_dataset
    from xt.specs import DatasetSpec

    dataset = DatasetSpec(name="kit-rows", map_row=mapper, generate=lambda split, seed: rows)
    built = build_dataset(dataset, template, tokenizer, DataOptions(max_length=512, pack=False, use_cache=False,
                                                                      objective=objective))
    return [built[i] for i in range(len(built))]


def _check_collators(report: PluginReport, tokenizers: dict[str, Any]) -> None:
    """Call each collator factory as the core does and collate samples of the plugin's own data."""
    from xt.data.collate import make_collate
    from xt.tokenizers import tiny_tokenizer

    for spec in report.specs.get("collators", []):
        where = f"collator '{spec.name}'"
        tokenizer = next(iter(tokenizers.values()), None) or tiny_tokenizer()
        collate = _attempt(report, where, "calling its factory as the core does",
                           "factory(tokenizer=..., pad_token_id=..., attn_implementation=..., **more)",
                           make_collate, spec, tokenizer=tokenizer, pad_token_id=tokenizer.pad_token_id,
                           attn_implementation="sdpa")
        if collate is _FAILED:
            continue
        if not callable(collate):
            report.problems.append(f"{where}: its factory returned {type(collate).__name__}, not a function")
            continue
        try:
            samples, what = _sample_batch(report, tokenizer)
        except Exception as exc:
            _problem(report, where, "preparing samples", exc)
            continue
        try:
            batch = collate(samples)
        except Exception as exc:
            _problem(report, where, f"collating samples of {what}", exc)
            continue
        if not isinstance(batch, dict) or "input_ids" not in batch or "labels" not in batch:
            report.problems.append(f"{where}: collating samples of {what} gave no dict with input_ids and labels")


def _tiny_model(report: PluginReport, configs: dict[str, Any], tokenizers: dict[str, Any]) -> tuple[Any, Any, str]:
    """The plugin's first small causal-LM preset (model, tokenizer, template), else a tiny random Llama."""
    for spec in report.specs.get("models", []):
        if spec.kind == "causal-lm" and spec.name in tokenizers and _is_small_preset(spec, configs.get(spec.name)):
            return _build_preset(spec), tokenizers[spec.name], spec.default_template or "default"
    return (*_tiny_llama(), "default")


def _tiny_run(folder: Any, model: Any, tokenizer: Any, template: str) -> Any:
    """A finished full-model run whose result folder holds ``model`` (what exporters are tried on)."""

    from xt.run import RunInfo

    run_dir = Path(folder) / "run"
    final = run_dir / "final"
    model.save_pretrained(str(final), safe_serialization=True)
    tokenizer.save_pretrained(str(final))
    RunInfo(model=str(final), model_source=str(final), template=template, method="full", final_dir="final",
            adapter=False, status="finished").save(run_dir)
    return run_dir


def _check_exporters(report: PluginReport, configs: dict[str, Any], tokenizers: dict[str, Any]) -> None:
    """Export a tiny finished run (of the plugin's own preset when it has one) through each exporter."""
    import tempfile

    exporters = report.specs.get("exporters", [])
    if not exporters:
        return
    try:
        tiny = _tiny_model(report, configs, tokenizers)
    except Exception as exc:
        _problem(report, "exporters", "building a tiny model to export", exc)
        return
    for spec in exporters:
        where = f"exporter '{spec.name}'"
        with tempfile.TemporaryDirectory() as folder:
            run_dir = _tiny_run(folder, *tiny)
            out = Path(folder) / "out"
            done = _attempt(report, where, "exporting a tiny finished run", "export(run_dir, out_dir, **options)",
                            spec.export, str(run_dir), str(out))
            if done is _FAILED:
                continue
            if not out.is_dir() or not any(out.iterdir()):
                report.problems.append(f"{where}: exporting a tiny finished run wrote nothing to the output folder")


def _tiny_llama() -> tuple[Any, Any]:
    """A tiny random Llama and the core's offline tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from xt.tokenizers import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    return LlamaForCausalLM(config), tokenizer


def _objective_batches(report: PluginReport, spec: Any, tokenizer: Any) -> tuple[Any, Any, Any]:
    """Collated batches of the objective's sample rows (two samples; each alone), through the real pipeline."""
    from xt.data.collate import make_collate
    from xt.plugins import get_registry

    rows = list(spec.sample_rows)[:2]
    first, second = _pipeline_samples(rows if len(rows) == 2 else rows * 2, dict, spec,
                                      get_registry().get("templates", "default"), tokenizer)
    own = {c.name: c for c in report.specs.get("collators", [])}
    collator = own.get(spec.collator) or get_registry().get("collators", spec.collator or "default")
    collate = make_collate(collator, tokenizer=tokenizer, pad_token_id=tokenizer.pad_token_id,
                           attn_implementation="sdpa")
    return collate([first, second]), collate([first]), collate([second])


def _additive(whole: float, parts: tuple[float, float]) -> bool:
    return abs(whole - sum(parts)) <= 1e-4 * max(1.0, abs(whole))


def _check_objectives(report: PluginReport) -> None:
    """Run each objective on its sample rows: the loss contract that keeps accumulation exact."""
    import tempfile

    from xt.train.objective import frozen_copy, objective_context, reference_model

    for spec in report.specs.get("objectives", []):
        where = f"objective '{spec.name}'"
        if not spec.sample_rows:
            report.problems.append(f"{where}: has no sample_rows; add one or two rows of the shape it takes so "
                                   f"the kit can run it offline")
            continue
        if spec.check_options is not None and _attempt(report, where, "checking its own defaults",
                                                       "check_options(args)", spec.check_options,
                                                       dict(spec.defaults)) is _FAILED:
            continue
        model, tokenizer = _tiny_llama()
        context = objective_context(spec, spec.defaults, tokenizer=tokenizer, pad_token_id=tokenizer.pad_token_id,
                                    z_loss=0.0, reference=reference_model(False, None, frozen_copy(model)))
        if spec.prepare_model is not None and _attempt(report, where, "preparing a tiny model",
                                                       "prepare_model(model, context)", spec.prepare_model,
                                                       model, context) is _FAILED:
            continue
        try:
            whole, first, second = _objective_batches(report, spec, tokenizer)
        except Exception as exc:
            _problem(report, where, "building batches of its sample rows", exc)
            continue
        results = [_attempt(report, where, "computing the loss", "loss(model, batch, context) -> (loss_sum, metrics)",
                            spec.loss, model, batch, context) for batch in (whole, first, second)]
        units = [_attempt(report, where, "counting units", "units(batch) -> int", spec.units, b)
                 for b in (whole, first, second)]
        if _FAILED in results or _FAILED in units:
            continue
        _check_loss_result(report, where, results, units)
        if spec.precompute is not None:
            _check_precompute(report, where, spec, model, whole, context, results[0][0])
        if spec.save is not None:
            with tempfile.TemporaryDirectory() as folder:
                if _attempt(report, where, "saving a tiny model", "save(model, tokenizer, template, out_dir, *, "
                            "adapter, context)", spec.save, model, tokenizer, None, folder, adapter=False,
                            context=context) is not _FAILED and not any(Path(folder).iterdir()):
                    report.problems.append(f"{where}: save wrote nothing to the output folder")


def _check_loss_result(report: PluginReport, where: str, results: list[Any], units: list[Any]) -> None:
    """The loss is a finite 0-d tensor with a graph; loss, units and metrics add up over samples."""
    import math

    import torch

    (loss, metrics), (loss_a, metrics_a), (loss_b, metrics_b) = results
    if not torch.is_tensor(loss) or loss.dim() != 0 or not torch.isfinite(loss):
        report.problems.append(f"{where}: loss_sum must be a finite 0-d tensor, got {loss!r}")
        return
    if not loss.requires_grad:
        report.problems.append(f"{where}: loss_sum has no gradient (computed under no_grad or detached?)")
        return
    if not all(isinstance(u, int) and u > 0 for u in units) or units[0] != units[1] + units[2]:
        report.problems.append(f"{where}: units must be a positive int that adds up over samples, got {units[0]} "
                               f"for two samples and {units[1]} + {units[2]} for each alone")
    if not _additive(float(loss.detach()), (float(loss_a.detach()), float(loss_b.detach()))):
        report.problems.append(f"{where}: loss_sum is not a sum over its units: {float(loss.detach()):.6g} for two samples "
                               f"but {float(loss_a.detach()):.6g} + {float(loss_b.detach()):.6g} alone (return the sum, not a mean; "
                               f"the core divides by the window's units)")
    for key, value in (metrics or {}).items():
        parts = (float(metrics_a.get(key, math.nan)), float(metrics_b.get(key, math.nan)))
        if not math.isfinite(float(value)) or not _additive(float(value), parts):
            report.problems.append(f"{where}: metric '{key}' must be a finite sum over units, got "
                                   f"{float(value):.6g} for two samples and {parts[0]:.6g} + {parts[1]:.6g} alone")
    loss.backward()


def _check_precompute(report: PluginReport, where: str, spec: Any, model: Any, batch: dict[str, Any], context: Any,
                      live_loss: Any) -> None:
    """Values from ``precompute`` give the loss the live reference model gives."""
    import dataclasses

    import torch

    from xt.train.loss import PRECOMPUTED_PREFIX

    with context.reference() as reference:
        values = _attempt(report, where, "precomputing reference values",
                          "precompute(reference, batch, context) -> {name: tensor (S,)}", spec.precompute,
                          reference, batch, context)
    if values is _FAILED:
        return
    sequences = int(batch["sequence_roles"].numel())
    if not isinstance(values, dict) or not all(torch.is_tensor(v) and v.shape == (sequences,) for v in values.values()):
        report.problems.append(f"{where}: precompute must return a dict of tensors with one value per sequence "
                               f"({sequences} here)")
        return
    carried = dict(batch, **{PRECOMPUTED_PREFIX + name: v.detach().float() for name, v in values.items()})
    loss = _attempt(report, where, "computing the loss from precomputed values", "loss(model, batch, context)",
                    spec.loss, model, carried, dataclasses.replace(context, reference=None))
    if loss is not _FAILED and not _additive(float(loss[0].detach()), (float(live_loss.detach()), 0.0)):
        report.problems.append(f"{where}: the loss from precomputed values ({float(loss[0].detach()):.6g}) differs "
                               f"from the loss with the reference model ({float(live_loss.detach()):.6g}); read "
                               f"batch['{PRECOMPUTED_PREFIX}<name>'] when it is there")


def _check_files(report: PluginReport) -> None:
    """Every dataset's ``data_files`` match files, and every file the distribution lists exists."""
    import glob
    import os

    for spec in report.specs.get("datasets", []):
        for pattern in spec.data_files:
            if not glob.glob(os.path.expanduser(str(pattern))):
                report.problems.append(f"dataset '{spec.name}': data_files entry '{pattern}' matches no file")
    try:
        files = metadata.files(report.distribution) or []
    except metadata.PackageNotFoundError:
        return
    for f in files:
        if not str(f).endswith(".pyc") and not os.path.exists(f.locate()):
            report.problems.append(f"distribution {report.distribution} lists '{f}', which is not installed")


def _check_names(report: PluginReport) -> None:
    """Names the core owns are errors; names another installed plugin registers are warnings."""
    from xt.plugins import CORE_DIST, get_registry

    registry = get_registry()
    for kind, specs in report.specs.items():
        for spec in specs:
            for name in dict.fromkeys((spec.name, *spec.aliases)):
                owners = {s.plugin for s in registry.all(kind) if name in (s.name, *s.aliases)}
                owners.discard(report.distribution)
                if CORE_DIST in owners:
                    report.problems.append(f"{kind[:-1]} '{spec.name}' re-registers the core's {kind[:-1]} name "
                                           f"'{name}'; xt skips it, give it another name")
                elif owners:
                    report.warnings.append(f"{kind[:-1]} name '{name}' is also registered by "
                                           f"{' and '.join(sorted(owners))}; users with both installed cannot use it")


def _check_import_is_light(report: PluginReport, module: str) -> None:
    code = f"import sys, importlib; importlib.import_module({module!r}); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        report.problems.append(f"importing {module} failed: {out.stderr.strip().splitlines()[-1:]}")
    elif out.stdout.strip() == "True":
        report.problems.append(f"importing {module} imports torch; import heavy code inside the loader "
                               f"functions so 'xt --help' stays instant")


def check_plugin(plugin: str, *, max_rows: int = 5, check_import: bool = True, raise_on_problems: bool = True) -> PluginReport:
    """Check one installed plugin (entry-point name, distribution or package) and report all problems.

    Raises :class:`PluginCheckError` listing every problem unless ``raise_on_problems`` is False.
    """
    ep = _find_entry_point(plugin)
    if ep is None:
        known = sorted(e.name for e in metadata.entry_points(group="xt"))
        raise PluginCheckError(f"No entry point in group 'xt' matches '{plugin}'; is the plugin installed "
                               f"(pip install -e .)? Installed: {', '.join(known) or 'none'}.")
    try:
        obj = ep.load()
    except Exception as exc:
        raise PluginCheckError(f"Plugin '{ep.name}' failed to import: {type(exc).__name__}: {exc}") from exc
    return check_plugin_object(obj, ep.name, distribution=ep.dist.name if ep.dist else "?",
                               module=ep.value.split(":")[0] if check_import else None,
                               max_rows=max_rows, raise_on_problems=raise_on_problems)


def check_plugin_object(obj: Any, name: str, *, distribution: str = "?", module: str | None = None,
                        max_rows: int = 5, raise_on_problems: bool = True) -> PluginReport:
    """Check a plugin object (module or class with ``@hookimpl`` functions) without an entry point.

    ``module``, when given, is imported in a fresh interpreter to check it does not import torch.
    """
    from xt.plugins import call_registration_hook, unknown_hook_problem

    report = PluginReport(plugin=name, distribution=distribution)
    unknown = unknown_hook_problem(obj)
    if unknown:
        report.problems.append(unknown)
    pm = pluggy.PluginManager("xt")
    pm.add_hookspecs(hookspecs)
    try:
        pm.register(obj, name=name)
        pm.check_pending()
    except Exception as exc:
        report.problems.append(f"registering the plugin failed: {type(exc).__name__}: {exc}")

    for kind, hook in HOOK_OF_KIND.items():
        collected: list[Spec] = []
        impls = getattr(pm.hook, hook).get_hookimpls() if pm.is_registered(obj) else []
        for impl in impls:
            try:
                specs, problems = call_registration_hook(impl.function, kind)
            except Exception as exc:
                report.problems.append(f"hook {hook} raised {type(exc).__name__}: {exc}")
                continue
            report.problems.extend(problems)
            collected.extend(specs)
        seen: set[str] = set()
        for spec in collected:
            for n in (spec.name, *spec.aliases):
                if n in seen:
                    report.problems.append(f"{kind[:-1]} name '{n}' is registered twice by this plugin")
                seen.add(n)
        report.specs[kind] = collected

    _check_datasets(report, report.specs["datasets"], max_rows)
    _check_templates(report, report.specs["templates"])
    _check_names(report)
    _check_files(report)
    configs = _check_configs(report, report.specs["models"])
    tokenizers = _check_tokenizers(report, report.specs["models"], configs)
    _check_presets(report, report.specs["models"], configs)
    _check_collators(report, tokenizers)
    _check_exporters(report, configs, tokenizers)
    _check_objectives(report)

    from xt.plugins import get_registry

    registry = get_registry()
    own_templates = set()
    for t in report.specs["templates"]:
        own_templates.update((t.name, *t.aliases))
    for spec in report.specs["models"] + report.specs["datasets"]:
        tmpl = spec.default_template
        if tmpl and tmpl not in own_templates and tmpl not in registry.names("templates"):
            report.problems.append(f"{type(spec).__name__} '{spec.name}' names default_template '{tmpl}', "
                                   f"which no loaded plugin registers")

    if pm.is_registered(obj) and pm.hook.register_commands.get_hookimpls():
        import click

        group = click.Group("xt")
        try:
            pm.hook.register_commands(cli=group)
        except Exception as exc:
            report.problems.append(f"register_commands raised {type(exc).__name__}: {exc}")
        for name in group.commands:
            from click.testing import CliRunner

            result = CliRunner().invoke(group, [name, "--help"])
            if result.exit_code != 0:
                report.problems.append(f"command '{name} --help' exited {result.exit_code}: {result.output.strip()}")

    if module:
        _check_import_is_light(report, module)

    for message in report.warnings:
        warnings.warn(f"plugin '{name}': {message}", stacklevel=2)
    if report.problems and raise_on_problems:
        lines = "\n".join(f"  - {p}" for p in report.problems)
        raise PluginCheckError(f"Plugin '{name}' ({report.distribution}) has {len(report.problems)} "
                               f"problem(s):\n{lines}")
    return report
